"""Sample provenance: every sample as one JSONL record that says exactly how to make it again, and replay.

A record holds the checkpoint (its directory, training step, and sha256 of its config and of its weights), the
tokenizer, the device and dtype, the prompt (or infill prefix and suffix), every decoding control, the sample's own
seed, and the result (text, token ids, why it ended, whether code parses). `python -m sample replay=<file>`
regenerates each record alone with that seed (a batch row samples exactly as it would alone) and checks text and ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import WEIGHTS, is_hf_source, read_model_json, resolve_checkpoint
from sample.generate import Completion

RECORD_VERSION = 1
REQUIRED = ("checkpoint", "mode", "generation", "seed", "completion", "token_ids")  # what replay reads


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_identity(checkpoint: str) -> dict[str, Any]:
    """Where the weights come from: the resolved checkpoint directory (a run dir's latest is pinned), its step, and
    sha256 of its config + tokenizer and of its weights file ("hf:" sources: the source and its config)."""
    directory = None if is_hf_source(checkpoint) else resolve_checkpoint(checkpoint).resolve()
    info = read_model_json(directory or checkpoint)
    identity: dict[str, Any] = {
        "checkpoint": str(directory or checkpoint),
        "step": info.get("meta", {}).get("step"),
        "config_sha256": _sha256_json({"kind": info["kind"], "config": info["config"], "tokenizer": info["tokenizer"]}),
        "weights_sha256": _sha256_file(directory / WEIGHTS) if directory is not None else None,
    }
    spec = info["tokenizer"]
    identity["tokenizer"] = {
        "name": spec.get("name"),
        "vocab_size": spec.get("vocab_size"),
        "sha256": _sha256_json(spec),
    }
    return identity


def sample_record(
    identity: dict[str, Any],
    *,
    task: str,
    mode: str,
    text_input: dict[str, str],
    completion: Completion,
    generation: dict[str, Any],
    index: int,
    device: torch.device,
    dtype: torch.dtype,
    parses: bool | None = None,
) -> dict[str, Any]:
    """One JSONL record. mode: complete | infill; text_input: {"prompt": ...} or {"prefix": ..., "suffix": ...};
    index: the sample's place among its prompt's num_return_sequences (beam search: its rank)."""
    return {
        "record_version": RECORD_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **identity,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "task": task,
        "mode": mode,
        **text_input,
        "generation": generation,
        "seed": completion.seed,
        "index": index,
        "completion": completion.text,
        "token_ids": completion.token_ids,
        "finish_reason": completion.finish_reason,
        "score": completion.score,
        "parses": parses,
    }


def append_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Append records to a JSONL file, one line each, flushed and synced (a crash loses at most the last line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file written by append_records; a clear ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"replay={str(path)!r} does not exist; pass a JSONL file written with out=<file>")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start}); replay needs a JSONL file written with out="
        ) from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e.msg}); replay needs a file written with out=") from None
        missing = [k for k in REQUIRED if k not in record]
        if missing:
            raise ValueError(f"{path}:{n}: not a nanoloom sample record (missing {', '.join(missing)})")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no sample records")
    return records


def check_identity(record: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse to replay against a checkpoint whose config or weights changed since the record was written."""
    for key in ("config_sha256", "weights_sha256"):
        if record.get(key) and identity.get(key) and record[key] != identity[key]:
            what = "weights" if key == "weights_sha256" else "config or tokenizer"
            raise ValueError(
                f"the {what} of {record['checkpoint']} changed since this sample was written ({key} differs); "
                "replay needs the same checkpoint"
            )
