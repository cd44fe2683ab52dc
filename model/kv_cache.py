"""KVCache: preallocated key/value buffers written at input_pos (litgpt's pattern).

One cache per attention layer. Buffers are allocated once for (B, n_kv_head, max_seq_len, hs) so decoding never
reallocates; `forward` writes the new keys/values at `input_pos` and returns the buffers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class EncoderDecoderAttention(nn.Module):
    """What T5's and BART's attention share: the head split and where keys and values come from. Self-attention
    projects x and, while generating, writes them to its `kv_cache`; cross-attention projects the encoder output,
    and while generating (`keep_cross_kv`, set by EncoderDecoder.set_kv_cache) keeps them in `cross_kv` from the
    first decode on."""

    def __init__(self, n_head: int, head_size: int, cross: bool) -> None:
        super().__init__()
        self.n_head, self.head_size, self.cross = n_head, head_size, cross
        self.kv_cache: KVCache | None = None  # decoder self-attention while generating
        self.keep_cross_kv = False  # cross-attention while generating: k/v of enc_out computed once ...
        self.cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # ... and kept here

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, N, hs)

    def _keys_values(
        self,
        x: torch.Tensor,
        enc_out: torch.Tensor | None,
        input_pos: torch.Tensor | None,
        k_proj: nn.Module,
        v_proj: nn.Module,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) each (B, nh, keys, hs): of enc_out (cross-attention) or of x (through the KV cache when set)."""
        if self.cross:
            if self.cross_kv is not None:  # generating: the encoder output's k/v were computed at prefill
                return self.cross_kv
            k, v = self._heads(k_proj(enc_out)), self._heads(v_proj(enc_out))  # (B, nh, S, hs)
            if self.keep_cross_kv:
                self.cross_kv = (k, v)
            return k, v
        k, v = self._heads(k_proj(x)), self._heads(v_proj(x))  # (B, nh, T, hs)
        if self.kv_cache is not None:
            k, v = self.kv_cache(input_pos, k, v)  # (B, nh, L, hs)
        return k, v


class EncoderDecoder(nn.Module):
    """What T5 and BART share around their own encode() and decode(): the training forward and the decoder's caches.

    Each decoder layer of _pairs() is (self-attention with a `kv_cache`, cross-attention that keeps the encoder
    output's keys and values: `keep_cross_kv`, `cross_kv`, computed at the first decode). decoder_positions: the
    longest decoder a model's positions allow (None: relative positions, no limit).
    """

    mask_cache: torch.Tensor | None  # (L, L) causal mask while a KV cache is set
    decoder_positions: int | None = None

    def encode(self, enc_idx: torch.Tensor, enc_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, dec_idx: torch.Tensor, enc_out: torch.Tensor, enc_mask: torch.Tensor | None = None,
               input_pos: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        raise NotImplementedError

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def forward(
        self,
        enc_idx: torch.Tensor,
        dec_idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        enc_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits (B, T, V), mean cross-entropy over targets != -1, or None without targets)."""
        logits = self.decode(dec_idx, self.encode(enc_idx, enc_mask), enc_mask)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def set_kv_cache(
        self,
        batch_size: int,
        max_seq_len: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Preallocate the decoder's self-attention caches (default length block_size); cross-attention k/v are kept
        at the first decode."""
        c = self.config
        max_seq_len = max_seq_len or c.block_size
        if self.decoder_positions is not None and max_seq_len > self.decoder_positions:
            raise ValueError(
                f"a decoder of {max_seq_len} positions is past this {c.kind} model's {self.decoder_positions} "
                "learned positions; lower max_new_tokens"
            )
        weight = self.shared.weight
        device, dtype = device or weight.device, dtype or weight.dtype
        for self_attn, cross_attn in self._pairs():
            self_attn.kv_cache = KVCache(batch_size, c.n_head, max_seq_len, c.head_size, device, dtype)
            cross_attn.keep_cross_kv, cross_attn.cross_kv = True, None
        self.mask_cache = torch.ones(max_seq_len, max_seq_len, dtype=torch.bool, device=device).tril()  # (L, L)

    def clear_kv_cache(self) -> None:
        """Drop the decoder's caches (self-attention k/v and cross-attention k/v)."""
        for self_attn, cross_attn in self._pairs():
            self_attn.kv_cache, cross_attn.cross_kv, cross_attn.keep_cross_kv = None, None, False
        self.mask_cache = None

    def reorder_cache(self, rows: torch.Tensor) -> None:
        """Keep cache rows `rows` (B',) in that order: beam search follows the surviving hypotheses."""
        for self_attn, cross_attn in self._pairs():
            cache = self_attn.kv_cache
            cache.k, cache.v = cache.k.index_select(0, rows), cache.v.index_select(0, rows)
            if cross_attn.cross_kv is not None:
                k, v = cross_attn.cross_kv
                cross_attn.cross_kv = (k.index_select(0, rows), v.index_select(0, rows))
