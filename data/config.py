"""DataConfig: where the text comes from, how it is tokenized and split. Stdlib only; also the Hydra schema.

Types are the ones OmegaConf accepts (no PEP 604 unions); choices are validated in __post_init__.
A dataset is either documents (GPT, T5 span corruption) or input/target pairs (T5 seq2seq), never both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

DOCUMENT_CORPORA = ("shakespeare", "python-code", "python-functions", "python-methods", "text", "tinystories")
PAIR_CORPORA = ("pairs", "python-docstrings", "instructions")
CORPORA = DOCUMENT_CORPORA + PAIR_CORPORA
TOKENIZERS = ("gpt2", "char", "byte", "bpe", "model")  # model: the init_from model's own (python -m train)
TINYSTORIES_SOURCES = ("shipped", "hub")
MIN_BPE_VOCAB = 257  # a bpe vocabulary without a single merge: the 256 byte tokens plus end-of-text
MAX_VOCAB = 1 << 32  # token files are uint16 up to 65,536 ids, else uint32
PAIRS_DIRECTIONS = ("code", "docstring", "both")
# Seeds: numpy's generators take integers >= 0, torch's at most 2**64 - 1, and nanoloom adds a rank or a row index to
# a seed; every seed a config takes is therefore a non-negative signed 64-bit integer.
SEED_LIMIT = 2**63


# objective -> the model kinds it trains (BART fine-tunes on pairs from a Hugging Face checkpoint: init_from=hf:...)
OBJECTIVES = {"causal": ("gpt",), "instruct": ("gpt",), "span_corruption": ("t5",), "seq2seq": ("t5", "bart")}
NOISE_DENSITY = 0.15  # T5's span corruption: the fraction of tokens masked ...
MEAN_SPAN_LENGTH = 3.0  # ... in spans of this mean length


@dataclass
class ObjectiveConfig:
    """What a model trains on (the training half of a task preset, configs/task/*.yaml): causal windows (gpt), T5
    span corruption of documents, or seq2seq input/target pairs (t5)."""

    # causal (gpt) | instruct (gpt on pairs as user turn and reply) | span_corruption (t5) | seq2seq (t5 on pairs)
    objective: str = "causal"
    noise_density: float = NOISE_DENSITY  # span_corruption: fraction of input tokens masked, in (0, 1)
    mean_span_length: float = MEAN_SPAN_LENGTH  # span_corruption: mean length of a masked span in tokens, >= 1
    pack: bool = True  # instruct: several conversations per row, each attending to itself only; false: one, padded

    def check_objective(self) -> None:
        """Raise a ValueError naming the task.* key that is out of range."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"task.objective={self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"task.noise_density={self.noise_density} must be in (0, 1); T5 uses {NOISE_DENSITY}")
        if not (math.isfinite(self.mean_span_length) and self.mean_span_length >= 1.0):
            raise ValueError(
                f"task.mean_span_length={self.mean_span_length} must be >= 1 (tokens); T5 uses {MEAN_SPAN_LENGTH}"
            )


def check_seed(key: str, value: object) -> None:
    """Raise ValueError naming key unless value is a whole number in [0, 2**63) (None is the caller's business)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}={value!r} must be a whole number between 0 and 2**63 - 1")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{key}={value} is out of range; a seed must be between 0 and 2**63 - 1 ({SEED_LIMIT - 1})")


@dataclass
class DataConfig:
    name: str = "shakespeare"  # label of the prepared dataset (part of its cache key)
    # concatenated, in order. documents: shakespeare | python-code | python-functions | python-methods | text |
    # tinystories; input/target pairs: pairs | python-docstrings | instructions (the two kinds do not mix)
    corpora: List[str] = field(default_factory=lambda: ["shakespeare"])
    # gpt2 (tiktoken BPE, offline) | char (vocabulary from the corpus) | byte | bpe (byte-level BPE trained on the
    # train split at preparation, data.vocab_size ids)
    tokenizer: str = "char"
    vocab_size: int = 4096  # bpe: ids of the trained vocabulary, end-of-text included (sentinels, FIM ids come after)
    paths: List[str] = field(default_factory=list)  # corpus=text or pairs: files, directories or globs
    extensions: List[str] = field(default_factory=lambda: [".txt", ".md", ".py", ".jsonl"])  # corpus=text, dirs
    jsonl_field: str = "text"  # field holding the document in .jsonl files
    include_tests: bool = False  # python-code, -functions, -methods: also take the stdlib's test files
    # tinystories: shipped (the subset inside nanoloom, offline) | hub (the whole dataset from the Hugging Face hub)
    source: str = "shipped"
    hub_dataset: str = "roneneldan/TinyStories"  # tinystories, source=hub: Hugging Face dataset name ...
    # ... and its files; a file named *valid* / *val* is the val split
    hub_files: List[str] = field(default_factory=lambda: ["TinyStories-train.txt", "TinyStories-valid.txt"])
    hub_local_dir: Optional[str] = None  # tinystories, source=hub: read these files from here instead of the hub
    input_field: str = "input"  # corpus=pairs: field of each .jsonl line holding the input text ...
    target_field: str = "target"  # ... and the one holding the target text
    prefix: str = ""  # corpus=pairs: prepended to every input, a T5 task prefix such as "question: "
    # python-docstrings: which side the model writes: code (docstring -> code) | docstring (code -> docstring) | both
    pairs_direction: str = "both"
    # documents: one weight per corpus (in data.corpora's order) for the TRAIN split: w > 1 writes each train
    # document of that corpus w times (the fraction: a seeded share once more), w < 1 keeps a seeded share of them;
    # [] = all 1. Val is never weighted. The mixture a run sees, since the loader draws windows uniformly
    weights: List[float] = field(default_factory=list)
    max_documents: Optional[int] = None  # first N documents of each corpus (tinystories: of each file; pairs: pairs)
    val_fraction: float = 0.05  # share held out for validation: of documents, of pairs, of modules (python-docstrings)
    split_seed: int = 1337  # seed of the document shuffle that decides the split (and of fim_rate's choices)
    # fill-in-the-middle (data/fim.py): share of TRAINING documents rearranged to prefix-suffix-middle, in [0, 1];
    # documents only. val is never rearranged, so val/loss stays the plain left-to-right loss, comparable across runs
    fim_rate: float = 0.0
    num_workers: int = 2  # tokenizer threads (gpt2); byte and char are vectorised numpy

    def __post_init__(self) -> None:
        if not self.corpora:
            raise ValueError("data.corpora is empty; name at least one of " + ", ".join(CORPORA))
        for c in self.corpora:
            if c not in CORPORA:
                raise ValueError(f"unknown corpus {c!r} in data.corpora; choose from {', '.join(CORPORA)}")
        pair_corpora = [c for c in self.corpora if c in PAIR_CORPORA]
        if pair_corpora and len(pair_corpora) < len(self.corpora):
            documents = [c for c in self.corpora if c not in PAIR_CORPORA]
            raise ValueError(
                f"data.corpora mixes input/target pairs ({', '.join(pair_corpora)}) with documents "
                f"({', '.join(documents)}); a dataset is one or the other: prepare them as two datasets"
            )
        if self.tokenizer not in TOKENIZERS:
            choices = ", ".join(TOKENIZERS)
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}; set data.tokenizer to one of {choices}")
        if self.tokenizer == "bpe" and not MIN_BPE_VOCAB <= self.vocab_size < MAX_VOCAB:
            raise ValueError(
                f"data.vocab_size={self.vocab_size} cannot hold a bpe vocabulary: it needs the 256 byte tokens plus "
                f"end-of-text ({MIN_BPE_VOCAB}) and must fit uint32 token files (< {MAX_VOCAB:,}); "
                f"set data.vocab_size between {MIN_BPE_VOCAB} and {MAX_VOCAB - 1:,} (4096 suits small models)"
            )
        if self.source not in TINYSTORIES_SOURCES:
            raise ValueError(f"data.source={self.source!r}; choose from {', '.join(TINYSTORIES_SOURCES)}")
        if self.hub_local_dir and self.source != "hub":
            raise ValueError(
                "data.hub_local_dir names hub files, but data.source=shipped reads the TinyStories subset inside "
                "nanoloom: add data.source=hub"
            )
        if "text" in self.corpora and not self.paths:
            raise ValueError("corpus 'text' needs data.paths=[<file, directory or glob>, ...]")
        # corpus=pairs without data.paths is refused when the corpus is read, so configs/data/pairs.yaml composes.
        if not self.input_field or not self.target_field or self.input_field == self.target_field:
            raise ValueError(
                f"data.input_field={self.input_field!r} and data.target_field={self.target_field!r} must be two "
                "different, non-empty field names"
            )
        if self.pairs_direction not in PAIRS_DIRECTIONS:
            raise ValueError(
                f"data.pairs_direction={self.pairs_direction!r}; choose from {', '.join(PAIRS_DIRECTIONS)}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be between 0 and 1 (exclusive)")
        if not 0.0 <= self.fim_rate <= 1.0:
            raise ValueError(f"data.fim_rate={self.fim_rate} must be between 0 and 1 (inclusive)")
        if self.fim_rate > 0 and pair_corpora:
            raise ValueError(
                f"data.fim_rate={self.fim_rate} rearranges documents, but data.corpora ({', '.join(pair_corpora)}) "
                "are input/target pairs: set data.fim_rate=0"
            )
        if self.weights and (len(self.weights) != len(self.corpora) or pair_corpora):
            raise ValueError(
                f"data.weights={list(self.weights)} needs one weight per document corpus of data.corpora="
                f"{list(self.corpora)} ({len(self.corpora)}); pairs take no weights"
            )
        if self.weights and len(set(self.corpora)) < len(self.corpora):
            raise ValueError(f"data.weights needs each corpus once in data.corpora={list(self.corpora)}")
        if any(not 0.0 < w < 1000.0 for w in self.weights):
            raise ValueError(f"data.weights={list(self.weights)}: every weight must be > 0 (and < 1000)")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"data.max_documents={self.max_documents} must be >= 1 (or null for all)")
        if self.num_workers < 1:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 1")
        check_seed("data.split_seed", self.split_seed)

    @property
    def is_pairs(self) -> bool:
        """True when the corpora are input/target pairs (seq2seq), False for documents."""
        return self.corpora[0] in PAIR_CORPORA
