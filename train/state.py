"""Training state: what a checkpoint holds beyond the weights, and how it is saved and restored.

A training checkpoint is a model checkpoint directory (model.safetensors + model.json, see model/checkpoint.py)
plus train_state.pt (optimizer, step, RNG states, data position, the run's settings; plain tensors and containers,
so it loads with weights_only=True) and the resolved config.yaml. Directories are written atomically; `latest`
(then `best`) is updated only after the rename, so it always names a complete checkpoint, and pruning keeps both.
One process trains in a run directory at a time: it holds an OS lock on run_dir/.lock (lock_run_dir).

Crash tests: NANOLOOM_FAULT=<point>:<step> makes the process SIGKILL itself at a named point of that step
(maybe_fault: kill_in_step, kill_during_save, kill_before_latest). Unset, as in every real run, it does nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from model.checkpoint import (
    BEST,
    LATEST,
    MODEL_JSON,
    atomic_directory,
    read_model_json,
    read_pointer,
    resolve_checkpoint,
    restore_replaced,
    write_model_files,
    write_text_atomic,
)

try:
    import fcntl  # POSIX; without it (Windows) the run directory is not locked
except ImportError:  # pragma: no cover
    fcntl = None

TRAIN_STATE = "train_state.pt"
LOCK = ".lock"  # in the run directory: holds the training process's pid while it runs
FAULT_ENV = "NANOLOOM_FAULT"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    tokens_seen: int = 0  # training tokens consumed, all ranks
    best_val_loss: float = math.inf
    train_time: float = 0.0  # seconds spent training before this process started (time budgets span resumes)
    skipped_steps: int = 0  # steps dropped for a non-finite loss or gradient
    micro_batch: int = 0  # rows per forward/backward (halved after an out-of-memory error); 0: not set yet
    step_time: float = 0.0  # seconds spent in training steps, evaluation and saving excluded (logged as train/time)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, permissions); the previous one is intact."""


def maybe_fault(point: str, step: int) -> None:
    """SIGKILL this process when NANOLOOM_FAULT=<point>:<step> (crash tests of resume); inert when unset.

    NANOLOOM_FAULT=<point>:<step>:<rank> strikes only that torchrun rank, and with the point `error` (at
    kill_in_step's place) it raises an ordinary error instead: how tests make one rank of a job fail.
    """
    fault = os.environ.get(FAULT_ENV)
    if not fault:
        return
    rank = os.environ.get("RANK", "0")
    if fault in (f"{point}:{step}", f"{point}:{step}:{rank}"):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    if point == "kill_in_step" and fault == f"error:{step}:{rank}":
        raise RuntimeError(f"injected failure on rank {rank} at step {step} ({FAULT_ENV}={fault})")


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on run_dir/.lock while the body runs; refuse (ValueError) if another process holds it.

    An flock belongs to the open file, so the OS releases it when the process ends, however it ends: a run killed
    with SIGKILL leaves no stale lock. The file is removed on a normal exit.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = run_dir / LOCK
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise ValueError(
                f"{run_dir} is in use by another training process (pid {pid}); wait for it to finish or stop it, "
                "or train under another run_name"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break  # locked the file that is there (not one its previous holder removed meanwhile)
        f.close()
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a process that opened the old file sees it gone and retries
        f.close()


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
    optimizer: torch.optim.Optimizer | dict[str, Any],
    state: TrainState,
    loader_state: dict[str, Any],
    tokenizer_spec: dict,
    config_yaml: str,
    keep_last: int,
    scaler: torch.amp.GradScaler | None = None,
    val_loss: float | None = None,
    settings: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoints/step_XXXXXXX atomically, point `latest` (and `best`, for a new lowest val_loss) at it, prune.

    optimizer: the optimizer, or its state_dict() (FSDP: gathered from the shards).
    val_loss: the val loss of these weights, if they were just evaluated. settings: the run's config as plain
    containers, compared on resume (changed_settings). generation: the decoding defaults of the run's task preset,
    recorded in model.json (meta.generation) for sampling and export. A write error (disk full ...) raises
    CheckpointWriteError and leaves no partial directory; the previous checkpoint and `latest` stay as they were.
    """
    name = f"step_{state.step:07d}"
    final = checkpoints_dir / name
    previous = _pointer_or_none(checkpoints_dir, LATEST)
    val_loss = val_loss if val_loss is not None and math.isfinite(val_loss) else None
    meta = {"step": state.step, "tokens_seen": state.tokens_seen, "val_loss": val_loss}
    if generation is not None:
        meta["generation"] = generation
    published = False
    try:
        with atomic_directory(final) as tmp:
            write_model_files(model, tmp, tokenizer_spec, meta=meta)
            maybe_fault("kill_during_save", state.step)  # half the files are written
            with open(tmp / TRAIN_STATE, "wb") as f:  # a Python file: a failed write keeps its OSError (errno)
                torch.save(
                    {
                        "state": asdict(state),
                        "optimizer": optimizer if isinstance(optimizer, dict) else optimizer.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None,
                        "rng": rng_state(),
                        "loader": loader_state,
                        "settings": settings or {},
                    },
                    f,
                )
            (tmp / "config.yaml").write_text(config_yaml)
        maybe_fault("kill_before_latest", state.step)  # the directory is complete, `latest` still names the previous
        write_text_atomic(checkpoints_dir / LATEST, name + "\n")
        published = True
        best = _saved_val_loss(checkpoints_dir, _pointer_or_none(checkpoints_dir, BEST))
        if val_loss is not None and val_loss < best:  # ties keep the earlier checkpoint
            write_text_atomic(checkpoints_dir / BEST, name + "\n")
    except Exception as e:
        cause = _os_error(e)
        if cause is None:
            raise
        if published:
            what, kept = f"cannot update {checkpoints_dir / BEST}", f"checkpoint {name} is saved and named by {LATEST}"
        else:
            what = f"cannot save checkpoint {final}"
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint was saved"
        raise CheckpointWriteError(_write_error_message(what, cause, kept, keep_last)) from e
    prune_checkpoints(checkpoints_dir, keep_last, name)
    return final


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind a failed write: e, the one it was raised from or during (torch.save raises a RuntimeError
    while handling the file's OSError), or one its message names ("... (os error 28)", as safetensors reports it)."""
    while e is not None:
        if isinstance(e, OSError):
            return e
        code = re.search(r"os error (\d+)", str(e))
        if code:
            return OSError(int(code[1]), os.strerror(int(code[1])))
        e = e.__cause__ or e.__context__
    return None


def _write_error_message(what: str, e: OSError, kept: str, keep_last: int) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        problem = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return (
            f"{what}: {problem}; {kept}. Free space or lower trainer.keep_last (now {keep_last}), then continue "
            "with resume=auto"
        )
    return f"{what}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "") + f"; {kept}"


def _pointer_or_none(checkpoints_dir: Path, pointer: str) -> str | None:
    """read_pointer, with an unusable pointer treated as absent (it is rewritten by the next save)."""
    try:
        return read_pointer(checkpoints_dir, pointer)
    except (OSError, ValueError):
        return None


def _saved_val_loss(checkpoints_dir: Path, name: str | None) -> float:
    """The val loss stored in a checkpoint's model.json (inf when unknown)."""
    if name is None:
        return math.inf
    try:
        loss = json.loads((checkpoints_dir / name / MODEL_JSON).read_text())["meta"].get("val_loss")
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf
    return math.inf if loss is None else float(loss)


def prune_checkpoints(checkpoints_dir: Path, keep_last: int, current: str | None = None) -> None:
    """Keep the newest keep_last step_* directories up to `current` (the one just saved) and those `latest` and
    `best` name; delete the others, including any past `current` (left by a run resumed from an earlier step)."""
    steps = sorted(p.name for p in checkpoints_dir.glob("step_*") if p.is_dir())
    keep = set([s for s in steps if current is None or s <= current][-keep_last:])
    keep |= {_pointer_or_none(checkpoints_dir, LATEST), _pointer_or_none(checkpoints_dir, BEST)}
    for name in steps:
        if name not in keep:
            shutil.rmtree(checkpoints_dir / name, ignore_errors=True)
    remove_leftovers(checkpoints_dir)


def remove_leftovers(checkpoints_dir: Path) -> None:
    """Clean up after interrupted saves: a checkpoint moved aside to be replaced goes back (restore_replaced), then
    .step_* temp directories and .latest.* / .best.* temp files are deleted."""
    restore_replaced(checkpoints_dir)
    for leftover in checkpoints_dir.glob(".step_*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in [*checkpoints_dir.glob(f".{LATEST}.*"), *checkpoints_dir.glob(f".{BEST}.*")]:
        with contextlib.suppress(OSError):
            leftover.unlink()


def find_resume_checkpoint(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: none, the run's latest (resume=auto), or an explicit path."""
    if resume is None:
        if (run_dir / "checkpoints" / LATEST).exists():
            raise ValueError(
                f"run directory {str(run_dir)!r} already has checkpoints; pass resume=auto to continue it, "
                "or choose another run_name"
            )
        return None
    if resume == "auto":  # latest names a complete checkpoint; temp directories of interrupted saves are ignored
        return resolve_checkpoint(run_dir) if (run_dir / "checkpoints" / LATEST).exists() else None
    return resolve_checkpoint(resume)


def load_train_state(path: Path) -> dict[str, Any]:
    """train_state.pt, loaded with weights_only=True (tensors and plain containers only: never arbitrary code)."""
    file = path / TRAIN_STATE
    if not file.is_file():
        raise FileNotFoundError(
            f"cannot resume from {str(path)!r}: {TRAIN_STATE} is missing (a model-only checkpoint?)"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused an object: loading it could run code
        raise ValueError(
            f"refused to load {file}: it holds objects beyond tensors and plain containers, and unpickling them "
            "could run code; nanoloom never writes such a file, so resume from a checkpoint you trust"
        ) from None
    except (RuntimeError, EOFError) as e:  # truncated or damaged
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"cannot read {file} ({why}); the checkpoint is damaged: resume from another one") from None


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
        raise ValueError(
            f"cannot resume {str(path)!r} with a different model ({'; '.join(diffs)}); use the run's model settings "
            "or start a new run_name"
        )
    if info["tokenizer"] != tokenizer_spec:
        saved_spec = info["tokenizer"]
        diffs = [
            f"{k}: checkpoint {saved_spec.get(k)!r} vs data {tokenizer_spec.get(k)!r}"
            for k in sorted(set(saved_spec) | set(tokenizer_spec))
            if saved_spec.get(k) != tokenizer_spec.get(k)
        ]
        raise ValueError(f"cannot resume {str(path)!r} with a different tokenizer ({'; '.join(diffs)})")


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (checkpoint value, this run's value) for every setting a resumed run changes (not `resume`)."""
    old, new = _flatten(saved), _flatten(current)
    keys = sorted(k for k in set(old) | set(new) if k != "resume" and old.get(k) != new.get(k))
    return {k: (old.get(k), new.get(k)) for k in keys}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
