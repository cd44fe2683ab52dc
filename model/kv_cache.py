"""KVCache: preallocated key/value buffers written at input_pos (litgpt's pattern).

One cache per attention layer. Buffers are allocated once for (B, n_kv_head, max_seq_len, hs) so decoding never
reallocates; `forward` writes the new keys/values at `input_pos` and returns the buffers.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    def __init__(
        self,
        batch_size: int,
        n_kv_head: int,
        max_seq_len: int,
        head_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        shape = (batch_size, n_kv_head, max_seq_len, head_size)
        # non-persistent: a cache is generation state, never part of a checkpoint
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def forward(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_head, T, hs) at positions input_pos (T,); return the full buffers.

        Returns:
            (k, v) each (B, n_kv_head, max_seq_len, hs); positions not yet written hold zeros and must be masked
            (or sliced away) by the caller.
        """
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v
