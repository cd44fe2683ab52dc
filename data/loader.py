"""Prepared shards -> batches for causal LM (GPT), T5 span corruption and T5 seq2seq pairs; deterministic, resumable.

Every loader draws batch n with np.random.default_rng([seed, n]) as one global batch of batch_size * world_size
rows, of which rank r takes rows [r * batch_size, (r + 1) * batch_size). The cursor (`position`) therefore counts
global batches: a run resumes exactly from `state_dict()`, even on a different number of ranks. Token files are
memory-mapped, never read whole.
- CausalLMLoader: random windows of the document shards, as in nanoGPT.
- SpanCorruptionLoader: random windows of the same shards, corrupted T5-style (data/span_corruption.py).
- Seq2SeqLoader: random input/target pairs of a pair dataset, padded to the longest in the batch.
- InstructLoader: random conversations (or pairs, as a user turn and a reply) laid out by the chat template, packed.
Evaluation reads a whole split in order instead: window_batches, pair_batches and span_corruption_batches give
every token, pair or window once, built by the same functions as the training batches (pair_batch, corrupt_batch).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.chat import turn_ids
from data.prepare import (
    CHATS_INDEX_COLUMNS,
    PAIRS_INDEX_COLUMNS,
    SPLITS,
    TURNS_INDEX_COLUMNS,
    layout,
    load_meta,
)
from data.span_corruption import (
    MEAN_SPAN_LENGTH,
    NOISE_DENSITY,
    corrupt,
    noise_counts,
    random_spans_noise_mask,
    span_corruption_lengths,
)
from data.tokenizer import Tokenizer, tokenizer_from_spec
from data.tokenizer.base import CHAT_ROLES

IGNORE_INDEX = -1  # targets the loss skips (T5.forward, GPT.forward)
_MASK_STREAM = 1  # tags the span-corruption mask seeds apart from the batch seed (see SpanCorruptionLoader)


def same_tokenizer(spec: dict[str, Any], prepared: dict[str, Any], fim: bool = True) -> bool:
    """Whether a tokenizer spec reads a dataset prepared with the spec `prepared`: the same tokenizer, its T5
    sentinels and chat ids aside (text never holds them), and (fim=True) with the same fill-in-the-middle ids, or
    (fim=False) with or without them (a model trained with FIM reads text prepared without it)."""
    ignored = ("vocab_size", "sentinels", "chat") if fim else ("vocab_size", "sentinels", "chat", "fim")

    def base(spec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in spec.items() if k not in ignored}

    return base(spec) == base(prepared)


class BatchLoader:
    """What every loader shares: arguments, meta.json, the rank's rows of global batch n, the cursor and its state.

    A subclass sets `layout` (the kind of dataset it reads, or a tuple of kinds) and implements batch_at(n).
    """

    layout: str | tuple[str, ...] = "documents"

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        tokenizer: Tokenizer | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        self.data_dir = Path(data_dir)
        self.meta = load_meta(self.data_dir)
        accepted = self.layouts()
        if layout(self.meta) not in accepted:
            readers = {
                "documents": "CausalLMLoader or SpanCorruptionLoader",
                "pairs": "Seq2SeqLoader or InstructLoader",
                "conversations": "InstructLoader",
            }
            raise ValueError(
                f"{self.data_dir.name} holds {layout(self.meta)}, but {type(self).__name__} reads "
                f"{' or '.join(accepted)}; read it with {readers[layout(self.meta)]}"
            )
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.position = 0  # global batches drawn so far by next_batch()
        if tokenizer is not None:
            self._check_tokenizer(tokenizer)
        self._tokenizer = tokenizer

    @classmethod
    def layouts(cls) -> tuple[str, ...]:
        """The kinds of prepared dataset this loader reads."""
        return (cls.layout,) if isinstance(cls.layout, str) else cls.layout

    @property
    def num_tokens(self) -> int:
        return len(self.data)

    def _split_file(self, key: str, dtype: np.dtype | type) -> np.memmap:
        """The split's file meta.json names under key (its tokens, an index), memory-mapped read-only."""
        return np.memmap(self.data_dir / self.meta["splits"][self.split][key], dtype=dtype, mode="r")

    def _start_id(self) -> int:
        """First decoder input of a T5 batch: the model's decoder start id (HF T5: pad 0), else end-of-text."""
        start = getattr(self, "start_id", None)
        return self.tokenizer.eot_id if start is None else start

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer given (T5: with sentinels), else the one that produced these tokens (built on first use)."""
        if self._tokenizer is None:
            self._tokenizer = tokenizer_from_spec(self.meta["tokenizer"])
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: the prepared tokens' plus the given tokenizer's sentinels."""
        return self._tokenizer.vocab_size if self._tokenizer else self.meta["vocab_size"]  # sentinels included

    def _rank_rows(self, global_rows: np.ndarray) -> np.ndarray:
        """This rank's slice of an array with one entry per row of the global batch."""
        B = self.batch_size
        return global_rows[self.rank * B : (self.rank + 1) * B]

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            # Pinned host memory lets the copy run asynchronously, overlapping the previous step's compute.
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.device.type != "cpu":
            return {k: v.to(self.device) for k, v in batch.items()}
        return batch

    def _check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """tokenizer must be the dataset's own, sentinels aside."""

        if not same_tokenizer(tokenizer.spec(), self.meta["tokenizer"]):
            raise ValueError(
                f"{tokenizer!r} is not the {self.meta['tokenizer']['name']} tokenizer {self.data_dir.name} was "
                "prepared with; build it with tokenizer_from_spec(load_meta(data_dir)['tokenizer']), "
                "then .with_sentinels(n) for T5"
            )
        # Sentinels added after preparation push appended fill-in-the-middle ids up: the prepared ones would then
        # read as sentinels.
        if self.meta["tokenizer"].get("fim"):
            prepared = tokenizer_from_spec(self.meta["tokenizer"]).fim_ids
            if tokenizer.fim_ids != prepared:
                raise ValueError(
                    f"{self.data_dir.name} holds fill-in-the-middle ids {prepared} (data.fim_rate > 0), which "
                    f"{tokenizer!r} gives to its sentinels: fill-in-the-middle data is for GPT models; "
                    "prepare T5 data with data.fim_rate=0"
                )

    def batch_at(self, n: int) -> dict[str, torch.Tensor]:
        """This rank's rows of global batch n; pure: the same n always gives the same batch, position is untouched."""
        raise NotImplementedError

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


class DocumentLoader(BatchLoader):
    """Random windows of a document dataset's memory-mapped <split>.bin."""

    layout = "documents"

    def __init__(self, data_dir: str | Path, split: str, batch_size: int, **kwargs: Any) -> None:
        super().__init__(data_dir, split, batch_size, **kwargs)
        self.data = np.memmap(self.data_dir / f"{split}.bin", dtype=np.dtype(self.meta["dtype"]), mode="r")

    def _windows(self, rng: np.random.Generator, length: int) -> np.ndarray:
        """(B, length) int64: this rank's windows of a global batch drawn from rng (uniform starts)."""
        starts = rng.integers(0, len(self.data) - length + 1, size=self.batch_size * self.world_size)
        starts = self._rank_rows(starts)
        return self.data[starts[:, None] + np.arange(length)].astype(np.int64)  # read from the memory map


class CausalLMLoader(DocumentLoader):
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
        if block_size < 1:
            raise ValueError(f"batch_size={batch_size} and block_size={block_size} must both be >= 1")
        super().__init__(data_dir, split, batch_size, seed=seed, rank=rank, world_size=world_size, device=device)
        self.block_size = block_size
        if len(self.data) <= block_size:
            raise ValueError(
                f"the {split} split of {self.data_dir.name} has {len(self.data):,} tokens, not more than "
                f"block_size={block_size}: one training window needs block_size + 1; use a smaller "
                "model.block_size or more text"
            )

    def batch_at(self, n: int) -> dict[str, torch.Tensor]:
        windows = self._windows(np.random.default_rng([self.seed, n]), self.block_size + 1)  # (B, T+1)
        idx = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))  # (B, T)
        targets = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))  # (B, T)
        return self._to_device({"idx": idx, "targets": targets})

    def __repr__(self) -> str:
        return (
            f"CausalLMLoader({self.data_dir.name}/{self.split}: {self.num_tokens:,} tokens, "
            f"batch_size={self.batch_size}, block_size={self.block_size}, rank {self.rank}/{self.world_size})"
        )


def decoder_inputs(targets: np.ndarray, start_id: int) -> np.ndarray:
    """(B, T) teacher-forcing decoder input: start_id, then targets shifted right; ignored positions become start_id."""
    dec = np.concatenate([np.full((len(targets), 1), start_id, dtype=np.int64), targets[:, :-1]], axis=1)
    return np.where(dec == IGNORE_INDEX, start_id, dec)


def corrupt_batch(
    windows: np.ndarray, masks: np.ndarray, sentinel_ids: np.ndarray, eot_id: int, start_id: int
) -> dict[str, torch.Tensor]:
    """A T5 span-corruption batch {"enc_idx", "dec_idx", "targets"} of (B, raw_length) windows and their noise masks."""
    inputs, targets = corrupt(windows, masks, sentinel_ids, eot_id)  # (B, S), (B, T)
    return {
        "enc_idx": torch.from_numpy(inputs),
        "dec_idx": torch.from_numpy(decoder_inputs(targets, start_id)),
        "targets": torch.from_numpy(targets),
    }


def cut_pair(
    input_ids: Any, target_ids: Any, input_length: int, target_length: int, eot_id: int
) -> tuple[list[int], list[int]]:
    """An (input, target) pair cut as a batch holds it: the input to its first input_length tokens; a target longer
    than target_length to its first target_length - 1 tokens and eot_id (a cut target still ends in eot)."""
    input_ids, target_ids = np.asarray(input_ids[:input_length]).tolist(), np.asarray(target_ids).tolist()
    if len(target_ids) > target_length:
        target_ids = target_ids[: target_length - 1] + [eot_id]
    return input_ids, target_ids


def pair_batch(pairs: list[tuple[list[int], list[int]]], eot_id: int, start_id: int) -> dict[str, torch.Tensor]:
    """A T5 batch {"enc_idx", "enc_mask", "dec_idx", "targets"} of cut pairs (cut_pair), padded to the longest input
    and target: inputs with eot_id where enc_mask (True = real token) is False, targets with IGNORE_INDEX."""
    S, T = max(len(i) for i, _ in pairs), max(len(t) for _, t in pairs)
    enc_idx = np.full((len(pairs), S), eot_id, dtype=np.int64)
    targets = np.full((len(pairs), T), IGNORE_INDEX, dtype=np.int64)
    for r, (input_ids, target_ids) in enumerate(pairs):
        enc_idx[r, : len(input_ids)] = input_ids
        targets[r, : len(target_ids)] = target_ids
    return {
        "enc_idx": torch.from_numpy(enc_idx),
        "enc_mask": torch.from_numpy(np.arange(S) < np.array([len(i) for i, _ in pairs])[:, None]),
        "dec_idx": torch.from_numpy(decoder_inputs(targets, start_id)),
        "targets": torch.from_numpy(targets),
    }


class SpanCorruptionLoader(DocumentLoader):
    """T5 pre-training batches {"enc_idx": (B, S), "dec_idx": (B, T), "targets": (B, T)}, int64, of one split.

    Each row is a window of raw_length tokens of the document shards (documents packed, eot between them) corrupted
    into an input of exactly input_length = S tokens and a target of target_length = T tokens (span_corruption.py);
    dec_idx is [eot_id (the decoder start), targets[:-1]]. Batch n's windows come from default_rng([seed, n]) as in
    CausalLMLoader; global row g's noise mask from default_rng([seed, n, 1, g]), so each rank draws only its rows.
    The tokenizer is the dataset's own with sentinels (tokenizer.with_sentinels(n)), at least one per noise span.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        input_length: int,
        tokenizer: Tokenizer,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        noise_density: float = NOISE_DENSITY,
        mean_span_length: float = MEAN_SPAN_LENGTH,
        start_id: int | None = None,
    ) -> None:
        loader_args = dict(seed=seed, rank=rank, world_size=world_size, device=device, tokenizer=tokenizer)
        super().__init__(data_dir, split, batch_size, **loader_args)
        self.start_id = start_id  # the model's decoder start id; None: the tokenizer's eot
        self.input_length = input_length
        self.noise_density = noise_density
        self.mean_span_length = mean_span_length
        self.raw_length, self.target_length = span_corruption_lengths(input_length, noise_density, mean_span_length)
        self.num_noise_spans = noise_counts(self.raw_length, noise_density, mean_span_length)[1]  # in every window
        num_sentinels = getattr(tokenizer, "num_sentinels", 0)
        if num_sentinels < self.num_noise_spans:
            raise ValueError(
                f"span corruption of input_length={input_length} windows makes {self.num_noise_spans} noise spans, "
                f"one sentinel each, but the tokenizer has {num_sentinels} sentinels; use "
                f"tokenizer.with_sentinels({max(self.num_noise_spans, 100)}) or a shorter input_length"
            )
        self.sentinel_ids = np.array([tokenizer.sentinel_id(i) for i in range(self.num_noise_spans)], dtype=np.int64)
        if len(self.data) < self.raw_length:
            raise ValueError(
                f"the {split} split of {self.data_dir.name} has {len(self.data):,} tokens, fewer than the "
                f"{self.raw_length} of one window (input_length={input_length} after span corruption); use a "
                "smaller input_length (model.block_size) or more text"
            )

    def batch_at(self, n: int) -> dict[str, torch.Tensor]:
        windows = self._windows(np.random.default_rng([self.seed, n]), self.raw_length)  # (B, raw_length)
        global_rows = self._rank_rows(np.arange(self.batch_size * self.world_size))
        # 4 seed words: [seed, n] alone equals [seed, n, 0, 0] to numpy's SeedSequence, so the tag keeps them apart.
        masks = np.stack(
            [
                random_spans_noise_mask(
                    self.raw_length,
                    self.noise_density,
                    self.mean_span_length,
                    np.random.default_rng([self.seed, n, _MASK_STREAM, int(g)]),
                )
                for g in global_rows
            ]
        )  # (B, raw_length)
        batch = corrupt_batch(windows, masks, self.sentinel_ids, self.tokenizer.eot_id, self._start_id())
        return self._to_device(batch)

    def __repr__(self) -> str:
        return (
            f"SpanCorruptionLoader({self.data_dir.name}/{self.split}: {self.num_tokens:,} tokens, "
            f"batch_size={self.batch_size}, input_length={self.input_length}, target_length={self.target_length}, "
            f"rank {self.rank}/{self.world_size})"
        )


class Seq2SeqLoader(BatchLoader):
    """T5 batches of input/target pairs {"enc_idx", "enc_mask", "dec_idx", "targets"} of one split of a pair dataset.

    Shapes (B, S) and (B, T), padded to the longest input and target of the batch but never beyond input_length and
    target_length. enc_idx pads with eot_id where enc_mask (bool, True = real token) is False; targets pad with -1
    (ignored by the loss); dec_idx is [eot_id (the decoder start), targets[:-1]] with eot_id at padding. An input
    longer than input_length keeps its first input_length tokens; a longer target its first target_length - 1 and
    eot. Truncations are counted (truncated_inputs, truncated_targets) and the first one warns, once per loader.
    Batch n is batch_size * world_size pairs drawn uniformly (with replacement) from default_rng([seed, n]).
    """

    layout = "pairs"

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        input_length: int,
        target_length: int,
        tokenizer: Tokenizer,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        start_id: int | None = None,
        bos_id: int | None = None,
    ) -> None:
        if input_length < 1 or target_length < 1:
            raise ValueError(f"input_length={input_length} and target_length={target_length} must both be >= 1")
        loader_args = dict(seed=seed, rank=rank, world_size=world_size, device=device, tokenizer=tokenizer)
        super().__init__(data_dir, split, batch_size, **loader_args)
        self.start_id = start_id  # the model's decoder start id; None: the tokenizer's eot
        self.bos_id = bos_id  # BART: inputs and targets start with <s> (as its tokenizer frames them); None: T5's way
        self.input_length = input_length
        self.target_length = target_length
        self.data = self._split_file("file", np.dtype(self.meta["dtype"]))
        # (N, 4): input start, length, target start, length
        self.index = self._split_file("index", np.uint64).reshape(-1, len(PAIRS_INDEX_COLUMNS))
        self.truncated_inputs = 0  # inputs cut to input_length, over every batch this loader built
        self.truncated_targets = 0  # targets cut to target_length
        self._warned = False

    @property
    def num_pairs(self) -> int:
        return len(self.index)

    def pairs(self, limit: int | None = None) -> Iterator[tuple[list[int], list[int]]]:
        """(input ids, target ids) of the split's pairs in file order, untruncated, each ending in eot_id.

        For evaluation: the input is what the encoder saw in training; compare generations with target[:-1].
        """
        for in_start, in_len, tgt_start, tgt_len in self.index[:limit].astype(np.int64).tolist():
            yield self.data[in_start : in_start + in_len].tolist(), self.data[tgt_start : tgt_start + tgt_len].tolist()

    def batch_at(self, n: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, n])
        ids = self._rank_rows(rng.integers(0, self.num_pairs, size=self.batch_size * self.world_size))
        rows = self.index[ids].astype(np.int64)  # (B, 4)
        framed = int(self.bos_id is not None)  # the <s> each side gains
        cut_inputs, cut_targets = rows[:, 1] + framed > self.input_length, rows[:, 3] + framed > self.target_length
        self._count_truncations(int(cut_inputs.sum()), int(cut_targets.sum()))
        pairs = [self._pair(row) for row in rows]
        return self._to_device(pair_batch(pairs, self.tokenizer.eot_id, self._start_id()))

    def _pair(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (input, target) token arrays of one index row, cut to input_length and target_length (cut_pair)."""
        in_start, in_len, tgt_start, tgt_len = (int(v) for v in row)
        input_ids, target_ids = self.data[in_start : in_start + in_len], self.data[tgt_start : tgt_start + tgt_len]
        return self._cut(input_ids, target_ids)

    def _cut(self, input_ids: Any, target_ids: Any) -> tuple[Any, Any]:
        """One pair as the model trains on it: framed with <s> (BART), then cut to the lengths (cut_pair)."""
        if self.bos_id is not None:
            input_ids, target_ids = [self.bos_id, *input_ids], [self.bos_id, *target_ids]
        return cut_pair(input_ids, target_ids, self.input_length, self.target_length, self.tokenizer.eot_id)

    def cut_pairs(self) -> list[tuple[list[int], list[int]]]:
        """Every pair of the split in file order, cut as the batches cut them (cut_pair): what evaluation scores."""
        return [self._cut(i, t) for i, t in self.pairs()]

    def _count_truncations(self, inputs: int, targets: int) -> None:
        self.truncated_inputs += inputs
        self.truncated_targets += targets
        if (inputs or targets) and not self._warned:
            self._warned = True
            info = self.meta["splits"][self.split]
            warnings.warn(
                f"{self.data_dir.name}/{self.split}: {self.truncated_inputs} input(s) longer than "
                f"input_length={self.input_length} and {self.truncated_targets} target(s) longer than "
                f"target_length={self.target_length} truncated so far (the longest are {info['input_tokens_max']} "
                f"and {info['target_tokens_max']} tokens); raise model.block_size to keep whole pairs",
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return (
            f"Seq2SeqLoader({self.data_dir.name}/{self.split}: {self.num_pairs:,} pairs, "
            f"batch_size={self.batch_size}, input_length={self.input_length}, target_length={self.target_length}, "
            f"rank {self.rank}/{self.world_size})"
        )


class InstructLoader(BatchLoader):
    """GPT instruction-tuning batches {"idx": (B, T), "targets": (B, T)} of conversations, laid out by the chat
    template (data/chat.py). A conversation dataset's conversations are read as they are; a pair dataset's pairs as
    one user turn and the assistant's reply each:

        <|user|> input <|end|> <|assistant|> target <|end|>

    targets are the next ids where they belong to an assistant turn (its tokens and its <|end|>) and IGNORE_INDEX
    elsewhere: the loss learns the replies, the system and user turns are context. pack=True (the default): each
    row of block_size ids holds as many whole conversations as fit, with "doc_ids" (B, T) so that each attends only
    to itself and its positions start at 0 (GPT.forward's document masking). pack=False: one conversation per row,
    padded on the right to the longest of the batch (causal attention never looks at the padding after a row's
    tokens). A conversation longer than block_size + 1 ids keeps its first block_size + 1 (the last reply's end cut
    first); the count is kept and the first cut warns. The tokenizer must have the chat ids (tokenizer.with_chat()).
    Batch n draws conversations uniformly (with replacement) from default_rng([seed, n]), so a run resumes exactly.
    """

    layout = ("pairs", "conversations")

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        block_size: int,
        tokenizer: Tokenizer,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        pack: bool = True,
    ) -> None:
        if getattr(tokenizer, "chat_ids", None) is None:
            raise ValueError(f"{tokenizer!r} has no chat ids; build it with tokenizer.with_chat()")
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be >= 1")
        loader_args = dict(seed=seed, rank=rank, world_size=world_size, device=device, tokenizer=tokenizer)
        super().__init__(data_dir, split, batch_size, **loader_args)
        self.block_size = block_size
        self.pack = pack
        self.truncated = 0  # conversations cut to block_size + 1 ids, over every batch
        self._warned = False
        self.data = self._split_file("file", np.dtype(self.meta["dtype"]))
        index = self._split_file("index", np.uint64)
        if layout(self.meta) == "pairs":  # pair i is turns 2i (user: its input) and 2i + 1 (assistant: its target)
            pairs = index.reshape(-1, len(PAIRS_INDEX_COLUMNS)).astype(np.int64)
            n = len(pairs)
            self.turn_index = np.empty((2 * n, len(TURNS_INDEX_COLUMNS)), dtype=np.int64)
            self.turn_index[0::2] = np.stack([pairs[:, 0], pairs[:, 1], np.full(n, CHAT_ROLES.index("user"))], 1)
            self.turn_index[1::2] = np.stack([pairs[:, 2], pairs[:, 3], np.full(n, CHAT_ROLES.index("assistant"))], 1)
            self.chats = np.stack([np.arange(0, 2 * n, 2), np.full(n, 2)], axis=1)
        else:
            self.turn_index = index.reshape(-1, len(TURNS_INDEX_COLUMNS))  # (M, 3): start, length, role
            # (N, 2): first turn, number of turns
            self.chats = self._split_file("chats", np.uint64).reshape(-1, len(CHATS_INDEX_COLUMNS))

    @property
    def num_conversations(self) -> int:
        return len(self.chats)

    def turns(self, i: int) -> list[tuple[str, list[int]]]:
        """(role, content ids) of conversation i's turns, without the end-of-text id the dataset ends each with."""
        first, count = (int(v) for v in self.chats[i])
        eot = self.tokenizer.eot_id
        out = []
        for start, length, role in self.turn_index[first : first + count].astype(np.int64).tolist():
            ids = self.data[start : start + length].tolist()
            out.append((CHAT_ROLES[role], ids[:-1] if ids[-1:] == [eot] else ids))
        return out

    def conversation(self, i: int) -> tuple[list[int], list[bool]]:
        """(ids, learned) of conversation i, laid out by the chat template (data/chat.py turn_ids)."""
        return turn_ids(self.tokenizer, self.turns(i))

    def exchanges(self, limit: int | None = None) -> Iterator[tuple[list[tuple[str, list[int]]], list[int]]]:
        """(the turns before its last reply, the last reply's ids) of each conversation in file order (the first
        `limit`): what a chat model is asked and what it should answer (every conversation ends with a reply)."""
        for i in range(self.num_conversations if limit is None else min(limit, self.num_conversations)):
            turns = self.turns(i)
            yield turns[:-1], turns[-1][1]

    def batch_at(self, n: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, n])
        if self.pack:
            return self._packed(rng)
        draws = self._rank_rows(rng.integers(0, self.num_conversations, size=self.batch_size * self.world_size))
        rows = [self._cut(self.conversation(int(i))) for i in draws]
        idx, targets = self._shifted(rows, max(len(i) for i, _ in rows) - 1)
        return self._to_device({"idx": torch.from_numpy(idx), "targets": torch.from_numpy(targets)})

    def _shifted(self, rows: list[tuple[list[int], list[bool]]], T: int) -> tuple[np.ndarray, np.ndarray]:
        """idx (R, T) and targets (R, T) of (ids, learned) rows: the inputs are a row's ids but its last, the targets
        the next ids where learned, IGNORE_INDEX elsewhere; the rest of a row is padding (eot in, nothing learned)."""
        idx = np.full((len(rows), T), self.tokenizer.eot_id, dtype=np.int64)
        targets = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)
        for r, (ids, learned) in enumerate(rows):
            length = len(ids) - 1
            idx[r, :length] = ids[:-1]
            targets[r, :length] = np.where(learned[1:], ids[1:], IGNORE_INDEX)
        return idx, targets

    def _packed(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Rows of block_size + 1 ids, each filled with whole conversations drawn from rng until the next one would
        not fit (a first one longer than the row is cut), the rest padding; doc_ids keeps each conversation to itself
        (GPT.forward's document masking) and targets never cross from one conversation to the next. Every rank
        draws the whole global batch's conversations and keeps its rows."""
        L = self.block_size + 1
        rows = []
        pending = None
        for _ in range(self.batch_size * self.world_size):
            ids: list[int] = []
            learned: list[bool] = []
            docs: list[int] = []
            while True:
                conv = pending if pending is not None else self._cut(self.conversation(self._draw(rng)))
                pending = None
                if ids and len(ids) + len(conv[0]) > L:
                    pending = conv  # starts the next row
                    break
                docs += [docs[-1] + 1 if docs else 0] * len(conv[0])  # the row's next document number
                ids += conv[0]
                learned += conv[1]
                if len(ids) >= L:
                    break
            rows.append((ids, learned, docs))
        mine = [rows[g] for g in self._rank_rows(np.arange(len(rows)))]
        # a target belongs to the conversation of its input: the next conversation's first id is never learned
        idx, targets = self._shifted([(ids, learned) for ids, learned, _ in mine], self.block_size)
        doc_ids = np.full(idx.shape, -1, dtype=np.int64)
        for r, (ids, _, docs) in enumerate(mine):
            length = len(ids) - 1
            doc_ids[r, :length] = docs[:-1]
            doc_ids[r, length:] = docs[-1] + 1  # the padding: a document of its own that nothing learns
        batch = {"idx": idx, "targets": targets, "doc_ids": doc_ids}
        return self._to_device({k: torch.from_numpy(v) for k, v in batch.items()})

    def _draw(self, rng: np.random.Generator) -> int:
        """One conversation's number, drawn uniformly (with replacement)."""
        return int(rng.integers(0, self.num_conversations))

    def _cut(self, conv: tuple[list[int], list[bool]]) -> tuple[list[int], list[bool]]:
        """A conversation of at most block_size + 1 ids; a longer one is counted (and the first cut warns)."""
        ids, learned = conv
        if len(ids) > self.block_size + 1:
            self._count_cuts(1)
            return ids[: self.block_size + 1], learned[: self.block_size + 1]
        return conv

    def _count_cuts(self, cut: int) -> None:
        self.truncated += cut
        if cut and not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.data_dir.name}/{self.split}: {self.truncated} conversation(s) longer than block_size + 1 = "
                f"{self.block_size + 1} ids cut so far (their replies' ends are not learned); raise model.block_size "
                "to keep them whole",
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return (
            f"InstructLoader({self.data_dir.name}/{self.split}: {self.num_conversations:,} conversations, "
            f"batch_size={self.batch_size}, block_size={self.block_size}, rank {self.rank}/{self.world_size})"
        )


# ----------------------------------------------------------------------------------------------------------------
# Fixed batches for evaluation: every token, pair or window of a whole split once, in order


def strided_windows(num_tokens: int, length: int, stride: int | None = None) -> list[tuple[int, int]]:
    """(start, first scored position) of the windows that score a stream of num_tokens tokens, each target once.

    A window feeds tokens[start : start + length] and predicts tokens[start + 1 : start + length + 1]; it scores
    the predictions from its first scored position on, the ones no earlier window scored. Windows start every
    `stride` tokens (None: length, so they do not overlap); the last one is moved back to end at the last token, so
    every window has the same length. A smaller stride gives every scored token more context, as in transformers'
    perplexity guide: with stride s < length, each token after the first window sees at least length - s tokens.
    """
    if num_tokens < 2:
        raise ValueError(f"{num_tokens} token(s) hold no prediction to score: at least 2 are needed")
    length = min(length, num_tokens - 1)
    stride = length if stride is None else stride
    if not 0 < stride <= length:
        raise ValueError(f"stride={stride} must be in [1, block_size={length}]")
    windows, scored_to = [], 0  # predictions [0, scored_to) are scored (prediction j is of token j + 1)
    for start in range(0, num_tokens - 1, stride):
        start = min(start, num_tokens - 1 - length)
        windows.append((start, scored_to - start))
        scored_to = start + length
        if scored_to >= num_tokens - 1:
            break
    return windows


def window_batches(
    tokens: Any, length: int, stride: int | None, batch_size: int, rank: int = 0, world_size: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """Causal batches {"idx", "targets"} (B, length) of the strided_windows of a token stream (1-D array or tensor);
    a target an earlier window scored is IGNORE_INDEX, so every prediction is scored once.

    Window i belongs to rank i % world_size. Every rank yields the same number of batches of batch_size rows (the
    last ones padded with windows that score nothing), so DDP-wrapped and compiled models see one batch shape.
    """
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    windows = strided_windows(len(tokens), length, stride)
    length = min(length, len(tokens) - 1)
    per_step = batch_size * world_size
    windows += [(0, length)] * (-len(windows) % per_step)  # padding: nothing scored
    span = torch.arange(length + 1)
    for first in range(0, len(windows), per_step):
        mine = windows[first + rank : first + per_step : world_size]
        rows = tokens[torch.tensor([s for s, _ in mine])[:, None] + span]  # (B, length + 1)
        targets = rows[:, 1:].clone()
        targets[span[:-1][None, :] < torch.tensor([o for _, o in mine])[:, None]] = IGNORE_INDEX  # scored before
        yield {"idx": rows[:, :-1], "targets": targets}


def pair_batches(
    pairs: list[tuple[list[int], list[int]]], batch_size: int, eot_id: int, start_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    """pair_batch of every batch_size cut pairs in their order: every target token once."""
    for first in range(0, len(pairs), batch_size):
        yield pair_batch(pairs[first : first + batch_size], eot_id, start_id)


def span_corruption_windows(num_tokens: int, raw_length: int) -> list[int]:
    """Starts of the consecutive windows of raw_length tokens that cover a stream; the last one is moved back to
    end at the last token."""
    starts = list(range(0, num_tokens - raw_length + 1, raw_length))
    if starts[-1] + raw_length < num_tokens:
        starts.append(num_tokens - raw_length)  # the tail, in a window moved back
    return starts


def span_corruption_batches(
    tokens: Any,
    tokenizer: Tokenizer,
    input_length: int,
    start_id: int,
    batch_size: int,
    seed: int = 0,
    noise_density: float = NOISE_DENSITY,
    mean_span_length: float = MEAN_SPAN_LENGTH,
) -> Iterator[dict[str, torch.Tensor]]:
    """corrupt_batch of the span_corruption_windows of a stream, window i with the noise mask of default_rng([seed,
    i]): the same batches on every call. Checked first: the stream holds a window, the tokenizer enough sentinels."""
    raw_length, _ = span_corruption_lengths(input_length, noise_density, mean_span_length)
    if len(tokens) < raw_length:
        raise ValueError(
            f"the text has {len(tokens)} tokens, fewer than the {raw_length} of one span-corruption window "
            f"(block_size={input_length}); give more text"
        )
    num_spans = noise_counts(raw_length, noise_density, mean_span_length)[1]
    if getattr(tokenizer, "num_sentinels", 0) < num_spans:
        raise ValueError(
            f"span corruption of block_size={input_length} windows needs {num_spans} sentinels, but the checkpoint's "
            f"tokenizer has {getattr(tokenizer, 'num_sentinels', 0)}; score this t5 checkpoint on pairs (data=)"
        )
    sentinel_ids = np.array([tokenizer.sentinel_id(i) for i in range(num_spans)], dtype=np.int64)
    starts = span_corruption_windows(len(tokens), raw_length)
    for first in range(0, len(starts), batch_size):
        index = range(first, min(first + batch_size, len(starts)))
        windows = np.stack([np.asarray(tokens[starts[i] : starts[i] + raw_length], dtype=np.int64) for i in index])
        rngs = [np.random.default_rng([seed, i]) for i in index]
        masks = np.stack([random_spans_noise_mask(raw_length, noise_density, mean_span_length, r) for r in rngs])
        yield corrupt_batch(windows, masks, sentinel_ids, tokenizer.eot_id, start_id)
