"""Training state: what a checkpoint holds beyond the weights, and how it is saved and restored.

A training checkpoint is a model checkpoint directory (model.safetensors + model.json, see model/checkpoint.py)
plus train_state.pt (optimizer, step, RNG states, data position, the run's settings; plain tensors and containers,
so it loads with weights_only=True) and the resolved config.yaml. Directories are written atomically; `latest`
(then `best`) is updated only after the rename, so it always names a complete checkpoint, and pruning keeps both.
One process trains in a run directory at a time: it holds an OS lock on run_dir/.lock (lock_run_dir). Files of a run
directory are appended to and read with open_no_follow, never through a symbolic or hard link to another file.

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
import stat
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn as nn

from model.checkpoint import (
    BEST,
    LATEST,
    MODEL_JSON,
    WEIGHTS,
    check_finite_file,
    check_weights,
    read_model_json,
    read_pointer,
    read_tokenizer,
    resolve_checkpoint,
    write_model_files,
)
from model.registry import build_model, config_from_dict
from nanoloom.files import atomic_directory, restore_replaced, write_text_atomic

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
    """A checkpoint or a run's log could not be written (disk full, quota, permissions); the previous checkpoint is
    intact and the log as it was."""


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
    with SIGKILL leaves no stale lock. The file is removed on a normal exit. It is opened with open_no_follow: a
    .lock that is a link to another file is refused, never truncated.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = run_dir / LOCK
    while True:
        f = open_no_follow(path, "a+")
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
            if _same_file(os.lstat(path), os.fstat(f.fileno())):
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


def open_no_follow(path: Path, mode: str = "a") -> IO[str]:
    """Open a file of a run directory to append ("a", "a+": created if missing) or to read ("r"), never through a link.

    Training opens every file it appends to or truncates in a run directory here, and those it reads back to continue
    (.lock, metrics.jsonl, samples.jsonl, wandb_id.txt); files it replaces whole (config.yaml, latest, best, .hydra/,
    plots) are written to a new temp file and renamed, which replaces a link instead of following it. A symbolic link,
    anything but a regular file, or (to write) a file with other hard links is refused with a ValueError naming it:
    writing would change whatever file the link leads to.
    """
    flags = {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND}
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # a fifo in the file's place must not hang the open
    flags = flags[mode] | nonblocking | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):  # a symbolic link (O_NOFOLLOW); a fifo nobody reads
            check_plain_file(path)
        raise
    try:
        check_plain_file(path, os.fstat(fd), writing=mode != "r")
        if nonblocking:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, mode)


def check_plain_file(path: Path, st: os.stat_result | None = None, writing: bool = True) -> None:
    """Refuse (ValueError) a path that is a symbolic link, not a regular file, or (writing) has other hard links.

    st: the stat of the open file (else the path's own lstat; a missing file passes).
    """
    if st is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
    fix = "replace it with a regular file of its own (or remove it) and start again"
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"{path} is a symbolic link; nanoloom does not write a run's files through links: {fix}")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file; {fix}")
    if writing and st.st_nlink > 1:
        raise ValueError(f"{path} has {st.st_nlink - 1} other hard link(s), which writing it would change too; {fix}")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG the loop draws from (dropout uses torch's; the data order is a pure function of the step): the
    host's, and on a GPU the training device's own (not every visible GPU's: a run resumed where fewer are visible,
    e.g. CUDA_VISIBLE_DEVICES=0 on the node that trained it, must still restore it)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore rng_state's states. Older checkpoints hold a list, one state per GPU visible when they were saved:
    the training device's index picks from it (none left out of range: that GPU's stream starts from its seed)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if device.type != "cuda" or cuda is None:
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


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
                        "rng": rng_state(next(model.parameters()).device),
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
    latest = run_dir / "checkpoints" / LATEST
    if resume is None:
        if os.path.lexists(latest):  # a link counts (reading it is refused: see read_pointer)
            raise ValueError(
                f"run directory {str(run_dir)!r} already has checkpoints; pass resume=auto to continue it, "
                "or choose another run_name"
            )
        return None
    if resume == "auto":  # latest names a complete checkpoint; temp directories of interrupted saves are ignored
        return resolve_checkpoint(run_dir) if os.path.lexists(latest) else None
    return resolve_checkpoint(resume)


def load_train_state(path: Path, optimizer: Any = None, mmap: bool = False, moments: bool = True) -> dict[str, Any]:
    """train_state.pt, loaded with weights_only=True (tensors and plain containers only: never arbitrary code) and
    checked against everything resuming reads from it (ValueError naming the file: see _check_train_state).

    optimizer: this run's optimizer (or Optimizers), whose parameters the saved moments must fit; None checks the rest.
    mmap: map the file instead of reading it (for a GPU run: the moments go from the page cache, shared by every rank
    on the machine, to the device, never all of them into each process's memory at once).
    moments: False leaves the optimizer's moments unchecked and, mapped, unread (an FSDP rank other than 0: rank 0
    checks them and broadcasts them).
    """
    file = path / TRAIN_STATE
    if not file.is_file():
        raise FileNotFoundError(
            f"cannot resume from {str(path)!r}: {TRAIN_STATE} is missing (a model-only checkpoint?)"
        )
    if not zipfile.is_zipfile(file):  # torch.save writes a zip archive; anything else is not ours or cut short
        raise _damaged_state(file, "truncated, or not the zip archive torch.save writes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the pickle protocol of a file it then refuses
            saved = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError:
        raise
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # weights_only refused an object: loading it could run code
            raise ValueError(
                f"refused to load {file}: it holds objects beyond tensors and plain containers, and unpickling them "
                "could run code; nanoloom never writes such a file, so resume from a checkpoint you trust"
            ) from None
        raise _damaged_state(file, _first_line(e)) from None
    except Exception as e:  # a damaged archive: torch raises RuntimeError, EOFError, KeyError ...
        raise _damaged_state(file, _first_line(e)) from None
    _check_train_state(file, saved, optimizer, moments)
    return saved


def _damaged_state(file: Path, why: str) -> ValueError:
    return ValueError(
        f"{file} is damaged ({why}); it is not a training state nanoloom can resume: resume from another checkpoint "
        "(resume=<its directory>) or start a new run_name"
    )


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _kind(value: Any) -> str:
    """The type of a loaded value, with its article: "a list", "an int"."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


# what resuming reads from train_state.pt besides the optimizer: entry -> its keys -> (types, required)
_LOADER_KEYS = {"position": (int, True), "seed": (int, True), "split": (str, True), "fingerprint": (str, True)}
_SCALER_KEYS = {k: ((int, float), True) for k in ("scale", "growth_factor", "backoff_factor", "growth_interval")}


def _check_train_state(file: Path, saved: Any, optimizer: Any, moments: bool = True) -> None:
    """Refuse (ValueError naming the file) a loaded train_state.pt that is not what save_checkpoint writes: the
    entries, the TrainState fields, the data position, RNG states that torch and random accept, the grad scaler, and
    optimizer moments of the shapes of this run's parameters (finite)."""
    if not isinstance(saved, dict):
        raise _damaged_state(file, f"it holds {_kind(saved)}, not a dict")
    missing = [k for k in ("state", "optimizer", "rng", "loader") if k not in saved]
    if missing:
        raise _damaged_state(file, f"no {', '.join(missing)} entry")
    state = saved["state"]
    if not isinstance(state, dict) or "step" not in state:
        raise _damaged_state(file, "state is not a training state with a step")
    types = {f.name: f.type for f in fields(TrainState)}
    for key, value in state.items():
        if key not in types:
            raise _damaged_state(file, f"state has an unknown field {key!r}")
        number = isinstance(value, (int, float) if types[key] == "float" else int) and not isinstance(value, bool)
        if not number or math.isnan(value) or value < 0 or (math.isinf(value) and key != "best_val_loss"):
            what = "a number" if types[key] == "float" else "a whole number"
            raise _damaged_state(file, f"state.{key}={value!r} is not {what} >= 0")
    _check_entries(file, "loader", saved["loader"], _LOADER_KEYS)
    if saved["loader"]["position"] < 0:
        raise _damaged_state(file, f"loader.position={saved['loader']['position']} is negative")
    if saved.get("scaler"):
        _check_entries(file, "scaler", saved["scaler"], _SCALER_KEYS)
    if not isinstance(saved.get("settings", {}), dict):
        raise _damaged_state(file, f"settings is {_kind(saved['settings'])}, not a dict")
    _check_rng(file, saved["rng"])
    if moments:
        _check_optimizer(file, saved["optimizer"], optimizer)


def _check_entries(file: Path, where: str, node: Any, schema: dict[str, tuple[Any, bool]]) -> None:
    if not isinstance(node, dict):
        raise _damaged_state(file, f"{where} is {_kind(node)}, not a dict")
    for key, (types, required) in schema.items():
        if key not in node and required:
            raise _damaged_state(file, f"{where} has no {key!r}")
        value = node.get(key)
        if key in node and (not isinstance(value, types) or isinstance(value, bool)):
            raise _damaged_state(file, f"{where}.{key} is {_kind(value)}")


def _check_rng(file: Path, rng: Any) -> None:
    """RNG states as set_rng_state sets them, tried on throwaway generators."""
    if not isinstance(rng, dict) or "torch" not in rng or "python" not in rng:
        raise _damaged_state(file, "rng is not a dict of torch and python states")
    try:
        torch.Generator().set_state(rng["torch"])
    except (RuntimeError, TypeError) as e:
        raise _damaged_state(file, f"rng.torch is not a generator state: {_first_line(e)}") from None
    try:
        random.Random().setstate(rng["python"])
    except (TypeError, ValueError) as e:
        raise _damaged_state(file, f"rng.python is not a random module state: {_first_line(e)}") from None
    cuda = rng.get("cuda", [])  # the training GPU's state; a list (one per visible GPU) in older checkpoints
    if not all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8
        for t in (cuda if isinstance(cuda, (list, tuple)) else [cuda])
    ):
        raise _damaged_state(file, "rng.cuda is not a generator state (or a list of them)")


def _check_optimizer(file: Path, saved: Any, optimizer: Any) -> None:
    """The optimizer state: torch's layout ({"state": {index: moments}, "param_groups": [{"params": [index ...]}]}),
    one per optimizer under its name for Optimizers; with this run's optimizer, moments of its parameters' shapes."""
    parts = getattr(optimizer, "optimizers", None)  # Optimizers (muon + adamw): one state per optimizer, by name
    if not isinstance(saved, dict):
        raise _damaged_state(file, f"optimizer is {_kind(saved)}, not a dict")
    if parts is not None:
        if set(saved) != set(parts):
            return  # another optimizer (optim.name changed): Optimizers.load_state_dict says so
        pairs = [(f"optimizer.{name}", saved[name], opt) for name, opt in parts.items()]
    elif saved and all(isinstance(v, dict) and "param_groups" in v for v in saved.values()):  # several, by name
        raise ValueError(
            f"the checkpoint's optimizer state holds {sorted(saved)}, this run uses one optimizer: optim.name "
            "changed; resume with the same optimizer"
        )
    else:
        pairs = [("optimizer", saved, optimizer)]
    for where, state, opt in pairs:
        _check_optimizer_state(file, where, state, opt)


def _check_optimizer_state(file: Path, where: str, saved: Any, optimizer: Any) -> None:
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise _damaged_state(file, f"{where} is not an optimizer state (no state dict)")
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) and all(type(i) is int for i in g["params"])
        for g in groups
    ):
        raise _damaged_state(file, f"{where}.param_groups is not a list of groups of parameter indices")
    params: dict[int, Any] = {}
    if optimizer is not None:
        current = optimizer.param_groups
        sizes, expected = [len(g["params"]) for g in groups], [len(g["params"]) for g in current]
        if sizes != expected:
            raise _damaged_state(file, f"{where} has groups of {sizes} parameters where this model has {expected}")
        for group, now in zip(groups, current):
            params.update(zip(group["params"], now["params"]))
    for index, moments in saved["state"].items():
        if optimizer is not None and index not in params:
            raise _damaged_state(file, f"{where} holds moments of parameter {index!r}, which no group lists")
        if not isinstance(moments, dict):
            raise _damaged_state(file, f"{where}.state[{index!r}] is {_kind(moments)}, not a dict")
        for name, value in moments.items():
            if not isinstance(value, (torch.Tensor, int, float)) or isinstance(value, bool):
                raise _damaged_state(file, f"{where}.state[{index}].{name} is {_kind(value)}")
            if not isinstance(value, torch.Tensor):
                continue
            shape = tuple(params[index].shape) if optimizer is not None else None
            if value.dim() > 0 and shape is not None and tuple(value.shape) != shape:
                raise _damaged_state(
                    file, f"{where}.state[{index}].{name} has shape {tuple(value.shape)}, its parameter {shape}"
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise _damaged_state(file, f"{where}.state[{index}].{name} holds NaN or inf")


def plain_model(config: Any, weights: dict[str, torch.Tensor]) -> nn.Module:
    """An unsharded model of config that holds `weights` (a state dict; tied weights may be in it once, as
    safetensors stores them) without allocating or initialising weights of its own: built on the meta device, the
    tensors assigned, tied parameters tied again. Its non-persistent buffers (the RoPE table) stay on the meta
    device: it is for state dicts and saving, not for running. A missing weight is a ValueError naming it."""
    with torch.device("meta"):
        model = build_model(config)
    tied: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(p), []).append(name)
    model.load_state_dict(weights, strict=False, assign=True)
    for names in tied.values():
        given = [n for n in names if n in weights]
        if not given:
            raise ValueError(f"the weights lack {names[0]}")
        shared = model.get_parameter(given[0])
        for name in names:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, shared)
    return model


def check_compatible(path: Path, model_config: dict[str, Any], tokenizer_spec: dict) -> None:
    """Refuse to resume from a damaged checkpoint (model.json, weights of other shapes than it says or not finite:
    read_model_json, check_weights, check_finite_file), or into a different architecture or tokenizer, naming what
    differs."""
    info = read_model_json(path)  # checked: a damaged model.json is a ValueError naming it
    config = config_from_dict({"kind": info["kind"], **info["config"]})
    with torch.device("meta"):  # shapes only: no memory, no init
        check_weights(path / WEIGHTS, build_model(config))  # a damaged checkpoint first, then a different one
    check_finite_file(path / WEIGHTS)
    saved = config.to_dict()  # keys a model.json written by an earlier version lacks take their defaults
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
        read_tokenizer(path)  # a spec that cannot be rebuilt is a damaged model.json, not another tokenizer
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
