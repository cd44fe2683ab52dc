"""Prepared token shards -> causal LM batches: random windows as in nanoGPT, deterministic, resumable, rank-aware.

Batch n is drawn with np.random.default_rng([seed, n]) as one global batch of batch_size * world_size windows, of
which rank r takes rows [r * batch_size, (r + 1) * batch_size). The cursor (`position`) therefore counts global
batches: a run resumes exactly from `state_dict()`, even on a different number of ranks. The split's .bin file is
memory-mapped, never read whole.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.prepare import SPLITS, load_meta
from data.tokenizer import Tokenizer, tokenizer_from_spec


class CausalLMLoader:
    """Batches {"idx": (B, T) int64, "targets": (B, T) int64} of one split; targets are idx shifted left by one."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        block_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"batch_size={batch_size} and block_size={block_size} must both be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        self.data_dir = Path(data_dir)
        self.meta = load_meta(self.data_dir)
        self.split = split
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.position = 0  # global batches drawn so far by next_batch()
        self.data = np.memmap(self.data_dir / f"{split}.bin", dtype=np.dtype(self.meta["dtype"]), mode="r")
        if len(self.data) <= block_size:
            raise ValueError(
                f"the {split} split of {self.data_dir.name} has {len(self.data):,} tokens, not more than "
                f"block_size={block_size}: one training window needs block_size + 1; use a smaller "
                "model.block_size or more text"
            )

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer that produced these tokens (built on first use)."""
        return tokenizer_from_spec(self.meta["tokenizer"])

    @property
    def num_tokens(self) -> int:
        return len(self.data)

    def batch_at(self, n: int) -> dict[str, torch.Tensor]:
        """This rank's rows of global batch n; pure: the same n always gives the same batch, position is untouched."""
        B, T = self.batch_size, self.block_size
        rng = np.random.default_rng([self.seed, n])
        starts = rng.integers(0, len(self.data) - T, size=B * self.world_size)[self.rank * B : (self.rank + 1) * B]
        windows = self.data[starts[:, None] + np.arange(T + 1)]  # (B, T+1), read from the memory map
        idx = torch.from_numpy(windows[:, :-1].astype(np.int64))  # (B, T); astype copies into a contiguous array
        targets = torch.from_numpy(windows[:, 1:].astype(np.int64))  # (B, T)
        if self.device.type == "cuda":
            # Pinned host memory lets the copy run asynchronously, overlapping the previous step's compute.
            idx = idx.pin_memory().to(self.device, non_blocking=True)
            targets = targets.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            idx, targets = idx.to(self.device), targets.to(self.device)
        return {"idx": idx, "targets": targets}

    def next_batch(self) -> dict[str, torch.Tensor]:
        """Batch number `position`, then advance the cursor."""
        batch = self.batch_at(self.position)
        self.position += 1
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly here (plain types: safe to save with weights_only loading)."""
        return {
            "position": self.position,
            "seed": self.seed,
            "split": self.split,
            "fingerprint": self.meta["fingerprint"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state_dict(); refused when it comes from another dataset or split. Adopts its seed."""
        if state.get("fingerprint") != self.meta["fingerprint"]:
            saved = str(state.get("fingerprint"))[:12]
            raise ValueError(
                f"the saved data position belongs to another dataset (fingerprint {saved}..., this loader reads "
                f"{self.data_dir.name}); resume with the same data config, or start a new run"
            )
        if state.get("split") != self.split:
            raise ValueError(f"the saved data position is for split {state.get('split')!r}, not {self.split!r}")
        self.seed = int(state["seed"])
        self.position = int(state["position"])

    def __repr__(self) -> str:
        return (
            f"CausalLMLoader({self.data_dir.name}/{self.split}: {self.num_tokens:,} tokens, "
            f"batch_size={self.batch_size}, block_size={self.block_size}, rank {self.rank}/{self.world_size})"
        )
