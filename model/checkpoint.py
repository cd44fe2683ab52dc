"""The checkpoint format: a self-describing directory with model.safetensors and model.json.

model.json holds the model kind, its config and the tokenizer spec, so a checkpoint is loadable with nothing else
(sampling never needs the dataset). Weights are safetensors: loading never unpickles. Directories are written
atomically (temp dir + rename), so a crash mid-save leaves the previous checkpoint intact.
"hf:<hub name or folder>" loads a Hugging Face GPT-2 or T5 checkpoint instead (model/hf.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from model.hf import PREFIX as HF_PREFIX
from model.hf import hf_model_info, load_hf_model
from model.registry import build_model, config_from_dict

FORMAT = "nanoloom-model"
VERSION = 1
WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
LATEST = "latest"  # a file in checkpoints/ holding the name of the newest complete checkpoint


def write_model_files(model: nn.Module, directory: str | Path, tokenizer_spec: dict, meta: dict | None = None) -> None:
    """Write model.safetensors and model.json into an existing directory (not atomic on its own)."""
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
    try:
        yield tmp
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # replacing a directory: move the old one aside first, delete it after
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint dir, a run's checkpoints/ dir, or a run dir (its latest)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist; pass a run or checkpoint directory")
    if (path / MODEL_JSON).exists() or (path / WEIGHTS).exists():
        return path
    for ckpts in (path / "checkpoints", path):
        latest = ckpts / LATEST
        if latest.is_file():
            target = ckpts / latest.read_text().strip()
            if not (target / MODEL_JSON).exists():
                raise FileNotFoundError(f"{latest} points to {target.name!r}, which is not a complete checkpoint")
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
            raise FileNotFoundError(f"incomplete checkpoint {str(directory)!r}: {name} is missing")
    try:
        info = json.loads((directory / MODEL_JSON).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt {directory / MODEL_JSON}: {e}; the checkpoint cannot be used") from None
    if info.get("format") != FORMAT:
        raise ValueError(f"{directory / MODEL_JSON} is not a nanoloom model file (format={info.get('format')!r})")
    return info


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
    missing, unexpected = load_safetensors_model(model, str(directory / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights in {directory / WEIGHTS} do not match model.json (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); the checkpoint is damaged or from another version"
        )
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return model, tokenizer_from_spec(info["tokenizer"])
