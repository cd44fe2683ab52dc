"""Training state: what a checkpoint holds beyond the weights, and how it is saved and restored.

A training checkpoint is a model checkpoint directory (model.safetensors + model.json, see model/checkpoint.py)
plus train_state.pt (optimizer, step, RNG states, data position; plain tensors and containers, so it loads
with weights_only=True) and the resolved config.yaml. Directories are written atomically and `latest` is
updated only after the rename, so it always names a complete checkpoint.
"""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from model.checkpoint import (
    LATEST,
    atomic_directory,
    read_model_json,
    resolve_checkpoint,
    write_model_files,
    write_text_atomic,
)

TRAIN_STATE = "train_state.pt"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    tokens_seen: int = 0  # training tokens consumed, all ranks
    best_val_loss: float = math.inf
    train_time: float = 0.0  # seconds spent training before this process started (time budgets span resumes)
    skipped_steps: int = 0  # steps dropped for a non-finite loss or gradient


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (dropout uses torch's; the data order is a pure function of the step)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    checkpoints_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    loader_state: dict[str, Any],
    tokenizer_spec: dict,
    config_yaml: str,
    keep_last: int,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write checkpoints/step_XXXXXXX atomically, point `latest` at it, prune the older ones."""
    name = f"step_{state.step:07d}"
    with atomic_directory(checkpoints_dir / name) as tmp:
        write_model_files(model, tmp, tokenizer_spec, meta={"step": state.step, "tokens_seen": state.tokens_seen})
        torch.save(
            {
                "state": asdict(state),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(),
                "loader": loader_state,
            },
            tmp / TRAIN_STATE,
        )
        (tmp / "config.yaml").write_text(config_yaml)
    write_text_atomic(checkpoints_dir / LATEST, name + "\n")
    prune_checkpoints(checkpoints_dir, keep_last)
    return checkpoints_dir / name


def prune_checkpoints(checkpoints_dir: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last step_* directories (and leftovers of interrupted saves)."""
    steps = sorted(p for p in checkpoints_dir.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in checkpoints_dir.glob(".step_*"):  # temp dirs of a save that was killed midway
        shutil.rmtree(leftover, ignore_errors=True)


def find_resume_checkpoint(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: none, the run's latest (resume=auto), or an explicit path."""
    if resume is None:
        if (run_dir / "checkpoints" / LATEST).exists():
            raise ValueError(
                f"run directory {str(run_dir)!r} already has checkpoints; pass resume=auto to continue it, "
                "or choose another run_name"
            )
        return None
    if resume == "auto":
        return resolve_checkpoint(run_dir) if (run_dir / "checkpoints" / LATEST).exists() else None
    return resolve_checkpoint(resume)


def load_train_state(path: Path) -> dict[str, Any]:
    """train_state.pt, loaded with weights_only=True (tensors and plain containers only: never arbitrary code)."""
    file = path / TRAIN_STATE
    if not file.is_file():
        raise FileNotFoundError(
            f"cannot resume from {str(path)!r}: {TRAIN_STATE} is missing (a model-only checkpoint?)"
        )
    return torch.load(file, map_location="cpu", weights_only=True)


def check_compatible(path: Path, model_config: dict[str, Any], tokenizer_spec: dict) -> None:
    """Refuse to resume into a different architecture or tokenizer, naming what differs."""
    info = read_model_json(path)
    saved = {**info["config"]}
    ignore = {"dropout"}  # regularisation may change between a pretraining run and its continuation
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs config {model_config.get(k)!r}"
        for k in sorted(set(saved) | set(model_config))
        if k not in ignore and saved.get(k) != model_config.get(k)
    ]
    if diffs:
        raise ValueError(f"cannot resume {str(path)!r} with a different model ({'; '.join(diffs)})")
    if info["tokenizer"] != tokenizer_spec:
        raise ValueError(
            f"cannot resume {str(path)!r}: it was trained with tokenizer {info['tokenizer'].get('name')!r} "
            f"and this run's data uses {tokenizer_spec.get('name')!r} (or a different vocabulary)"
        )
