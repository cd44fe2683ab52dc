"""DataConfig: where the text comes from, how it is tokenized and split. Stdlib only; also the Hydra schema.

Types are the ones OmegaConf accepts (no PEP 604 unions); choices are validated in __post_init__.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

CORPORA = ("shakespeare", "python-code", "text", "tinystories")
TOKENIZERS = ("gpt2", "char", "byte")


@dataclass
class DataConfig:
    name: str = "shakespeare"  # label of the prepared dataset (part of its cache key)
    # concatenated, in order: shakespeare | python-code | text | tinystories
    corpora: List[str] = field(default_factory=lambda: ["shakespeare"])
    tokenizer: str = "char"  # gpt2 (tiktoken BPE, offline) | char (vocabulary from the corpus) | byte
    paths: List[str] = field(default_factory=list)  # corpus=text: files, directories or globs
    extensions: List[str] = field(default_factory=lambda: [".txt", ".md", ".py", ".jsonl"])  # corpus=text, dirs
    jsonl_field: str = "text"  # field holding the document in .jsonl files
    include_tests: bool = False  # python-code: also take the stdlib's test files
    hub_dataset: str = "roneneldan/TinyStories"  # tinystories: Hugging Face dataset name ...
    # ... and its files; a file named *valid* / *val* is the val split
    hub_files: List[str] = field(default_factory=lambda: ["TinyStories-train.txt", "TinyStories-valid.txt"])
    hub_local_dir: Optional[str] = None  # tinystories: read these files from here instead of the hub
    max_documents: Optional[int] = None  # first N documents of each corpus (tinystories: of each file)
    val_fraction: float = 0.05  # share of documents held out for validation
    split_seed: int = 1337  # seed of the document shuffle that decides the split
    num_workers: int = 2  # tokenizer threads (gpt2); byte and char are vectorised numpy

    def __post_init__(self) -> None:
        if not self.corpora:
            raise ValueError("data.corpora is empty; name at least one of " + ", ".join(CORPORA))
        for c in self.corpora:
            if c not in CORPORA:
                raise ValueError(f"unknown corpus {c!r} in data.corpora; choose from {', '.join(CORPORA)}")
        if self.tokenizer not in TOKENIZERS:
            choices = ", ".join(TOKENIZERS)
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}; set data.tokenizer to one of {choices}")
        if "text" in self.corpora and not self.paths:
            raise ValueError("corpus 'text' needs data.paths=[<file, directory or glob>, ...]")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be between 0 and 1 (exclusive)")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"data.max_documents={self.max_documents} must be >= 1 (or null for all)")
        if self.num_workers < 1:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 1")
