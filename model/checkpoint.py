"""The checkpoint format: a self-describing directory with model.safetensors and model.json.

model.json holds the model kind, its config and the tokenizer spec, so a checkpoint is loadable with nothing else
(sampling never needs the dataset). Weights are safetensors: loading never unpickles. Directories are written
atomically (temp dir + rename), so a crash mid-save leaves the previous checkpoint intact. A run's checkpoints/ holds
pointer files naming a checkpoint in it: `latest` (the newest complete one) and `best` (the lowest val loss); a
name that would lead out of checkpoints/ (`../x`, an absolute path) is refused, never followed.
"hf:<hub name or folder>" loads a Hugging Face GPT-2 or T5 checkpoint instead (model/hf.py).
model.json's meta.generation records the decoding defaults of the task a checkpoint was trained for (the role of
transformers' generation_config.json); read_generation_defaults returns them, or a Hugging Face folder's own.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from model.hf import PREFIX as HF_PREFIX
from model.hf import hf_model_info, load_hf_model, resolve_hf_source
from model.registry import build_model, config_from_dict

FORMAT = "nanoloom-model"
VERSION = 1
WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
# generation_config.json keys nanoloom reads from a Hugging Face folder (transformers' names, which are ours too)
HF_GENERATION_KEYS = (
    "max_new_tokens", "max_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p",
    "typical_p", "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "eos_token_id",
    "num_beams", "length_penalty", "early_stopping",
)  # fmt: skip
HF_DEFAULT_MAX_LENGTH = 20  # transformers' default max_length: in a generation_config.json, not a choice
LATEST = "latest"  # a file in checkpoints/ holding the name of the newest complete checkpoint
BEST = "best"  # a file in checkpoints/ holding the name of the checkpoint with the lowest val loss


def write_model_files(model: nn.Module, directory: str | Path, tokenizer_spec: dict, meta: dict | None = None) -> None:
    """Write model.safetensors and model.json into an existing directory (not atomic on its own).

    meta: free-form facts about the weights (training writes step, tokens_seen, val_loss and generation, the
    decoding defaults of its task preset: every control of sample.sampling.GenerationConfig plus the preset's name).
    """
    directory = Path(directory)
    raw = getattr(model, "_orig_mod", model)  # torch.compile wraps the module; save the original
    save_safetensors_model(raw, str(directory / WEIGHTS))  # tied weights are stored once
    info = {
        "format": FORMAT,
        "version": VERSION,
        "kind": raw.config.kind,
        "config": raw.config.to_dict(),
        "tokenizer": tokenizer_spec,
        "meta": meta or {},
    }
    (directory / MODEL_JSON).write_text(json.dumps(info, indent=2) + "\n")


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to `final`; on success, fsync it and rename it to `final`.

    If the body raises, the temporary directory is removed and `final` (if it existed) is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make checkpoints private to their writer
    try:
        yield tmp
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # replacing a directory: move the old one aside first, delete it after (a crash in between
            old = final.with_name(f".{final.name}.old-{os.getpid()}")  # leaves it there: see restore_replaced)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def restore_replaced(directory: str | Path) -> None:
    """Undo a replacement atomic_directory was killed in: move .<name>.old-<pid> back to a missing <name>."""
    for old in Path(directory).glob(".*.old-*"):
        original = old.with_name(old.name[1:].rsplit(".old-", 1)[0])
        if old.is_dir() and not original.exists():
            os.replace(old, original)


@functools.cache
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace a small file atomically (write a temp file, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private to its writer
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_model(model: nn.Module, directory: str | Path, tokenizer_spec: dict, meta: dict | None = None) -> Path:
    """Write a standalone model checkpoint directory atomically."""
    with atomic_directory(directory) as tmp:
        write_model_files(model, tmp, tokenizer_spec, meta)
    return Path(directory)


def read_pointer(checkpoints_dir: str | Path, pointer: str = LATEST) -> str | None:
    """The checkpoint name a pointer file (latest, best) in checkpoints_dir holds; None if there is no such file.

    Refused (ValueError) unless it is a plain directory name: a pointer never leads out of checkpoints_dir.
    """
    file = Path(checkpoints_dir) / pointer
    if not file.is_file():
        return None
    name = file.read_text().strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
        raise ValueError(
            f"{file} names {name!r}, which is not a checkpoint directory inside {Path(checkpoints_dir)}; refusing "
            "to follow it (the file should hold a name like step_0001000)"
        )
    return name


def damaged_weights(path: Path, error: Exception) -> ValueError:
    """The one-line error for a weights file safetensors cannot read (truncated or damaged)."""
    why = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ValueError(
        f"cannot read {path} ({why}); the file is truncated or damaged; copy the checkpoint again or use another one"
    )


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint dir, a run's checkpoints/ dir, a run dir (its latest), or a pointer
    file (checkpoints/latest, checkpoints/best)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist; pass a run or checkpoint directory")
    if (path / MODEL_JSON).exists() or (path / WEIGHTS).exists():
        return path
    pointers = [(path.parent, path.name)] if path.is_file() and path.name in (LATEST, BEST) else []
    for ckpts, pointer in [*pointers, (path / "checkpoints", LATEST), (path, LATEST)]:
        name = read_pointer(ckpts, pointer)
        if name is not None:
            target = ckpts / name
            if not (target / MODEL_JSON).exists():
                raise FileNotFoundError(f"{ckpts / pointer} points to {name!r}, which is not a complete checkpoint")
            return target
    raise FileNotFoundError(
        f"no checkpoint in {str(path)!r}: expected model.json + model.safetensors, or a run directory with "
        "checkpoints/latest; train first (python -m train) or pass the checkpoint directory"
    )


def is_hf_source(path: str | Path) -> bool:
    """True for "hf:<hub name or folder>": a Hugging Face checkpoint rather than a nanoloom one."""
    return isinstance(path, str) and path.startswith(HF_PREFIX)


def read_model_json(path: str | Path) -> dict[str, Any]:
    """The parsed model.json of a checkpoint (path resolved as in resolve_checkpoint).

    For "hf:..." sources: the same keys (kind, config, tokenizer, meta with the source), from its config.json.
    """
    if is_hf_source(path):
        return hf_model_info(path)
    directory = resolve_checkpoint(path)
    for name in (MODEL_JSON, WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"incomplete checkpoint {str(directory)!r}: {name} is missing; copy the whole checkpoint directory "
                "or pass another checkpoint"
            )
    try:
        info = json.loads((directory / MODEL_JSON).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt {directory / MODEL_JSON}: {e}; the checkpoint cannot be used") from None
    if info.get("format") != FORMAT:
        raise ValueError(f"{directory / MODEL_JSON} is not a nanoloom model file (format={info.get('format')!r})")
    return info


def read_generation_defaults(path: str | Path) -> dict[str, Any] | None:
    """The decoding defaults a checkpoint records, or None (checkpoints written before they were recorded).

    A nanoloom checkpoint: model.json's meta.generation, the task preset it was trained with (name, do_sample,
    temperature, top_k, top_p, max_new_tokens, stop_strings ...). "hf:...": the decoding controls its
    generation_config.json sets (HF_GENERATION_KEYS), None without the file.
    """
    if not is_hf_source(path):
        return read_model_json(path).get("meta", {}).get("generation") or None
    file = resolve_hf_source(str(path)) / "generation_config.json"
    if not file.is_file():
        return None
    try:
        hf = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt {file}: {e}; delete it or fix it") from None
    record = {k: hf[k] for k in HF_GENERATION_KEYS if hf.get(k) is not None}
    if not isinstance(record.get("early_stopping", False), bool):
        del record["early_stopping"]  # "never": transformers' third setting, which nanoloom does not have
    if record.get("max_length") == HF_DEFAULT_MAX_LENGTH:
        del record["max_length"]
    return record or None


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[nn.Module, Any]:
    """Load (model in eval mode, tokenizer) from a checkpoint, a run directory or "hf:<hub name or folder>".

    Never unpickles. "hf:" loads a Hugging Face GPT-2 or T5 checkpoint with its tokenizer (model/hf.py).
    """
    if is_hf_source(path):
        return load_hf_model(path[len(HF_PREFIX) :], device=device, dtype=dtype)
    # The tokenizer is data's; this one import is the allowed model -> data.tokenizer edge (see DESIGN.md).
    from data.tokenizer import tokenizer_from_spec

    directory = resolve_checkpoint(path)
    info = read_model_json(directory)
    model = build_model(config_from_dict({"kind": info["kind"], **info["config"]}))
    try:
        missing, unexpected = load_safetensors_model(model, str(directory / WEIGHTS), strict=False)
    except SafetensorError as e:
        raise damaged_weights(directory / WEIGHTS, e) from None
    if missing or unexpected:
        raise ValueError(
            f"weights in {directory / WEIGHTS} do not match model.json (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); the checkpoint is damaged or from another version"
        )
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return model, tokenizer_from_spec(info["tokenizer"])
