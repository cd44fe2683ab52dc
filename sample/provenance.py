"""Sample provenance: every sample as one JSONL record that says exactly how to make it again, and replay.

A record holds the checkpoint (its directory, training step, and sha256 of its config and of its weights), the
tokenizer, the device and dtype, the prompt (or infill prefix and suffix), every decoding control, the sample's own
seed, and the result (text, token ids, why it ended, whether code parses). `python -m sample replay=<file>`
regenerates each record alone with that seed (a batch row samples exactly as it would alone) and checks text and ids.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from data.jsonl import append_jsonl, parse_jsonl
from model.checkpoint import WEIGHTS, is_hf_source, read_model_json, resolve_checkpoint
from sample.generate import Completion
from sample.sampling import GenerationConfig

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
        # logprobs=k: per token its log-probability, and the k likeliest [id, log-probability] pairs
        **(
            {
                "logprobs": completion.logprobs,
                "top_logprobs": [[list(p) for p in t.items()] for t in completion.top_logprobs],
            }
            if completion.logprobs is not None
            else {}
        ),
    }


def append_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Append records to a JSONL file, one line each, synced. A failed write (disk full ...) leaves the file as it was
    and raises OSError; a crash loses at most the last line, which the next append cuts and replay skips."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if append_jsonl(path, records):
        warnings.warn(f"{path}: cut its last line, torn by an interrupted write, before appending", stacklevel=2)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file written by append_records; a clear ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"  # a directory, a named pipe ...
        raise FileNotFoundError(f"replay={str(path)!r} {what}; pass a JSONL file written with out=<file>")
    raw = path.read_bytes()
    try:  # all but an unterminated last line, which a write cut off may have cut inside a character
        raw[: raw.rfind(b"\n") + 1].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start}); replay needs a JSONL file written with out="
        ) from None
    try:
        lines, torn = parse_jsonl(raw.decode("utf-8", errors="replace"), str(path))
    except ValueError as e:
        raise ValueError(f"{e}; replay needs a file written with out=") from None
    if torn is not None:  # the last line of a process killed (or out of space) while writing it
        warnings.warn(f"{path}:{torn}: skipped its last line, torn by an interrupted write", stacklevel=2)
    records = []
    for n, record in lines:
        check_record(record, f"{path}:{n}")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no sample records")
    return records


# what replay reads from a record besides its generation settings: key -> (types, required, how to say it)
_RECORD_KEYS = {
    "checkpoint": (str, True, "a string"),
    "completion": (str, True, "a string"),
    "seed": (int, True, "a whole number"),
    "index": (int, False, "a whole number"),
    "device": ((str, type(None)), False, "a string"),
    "config_sha256": ((str, type(None)), False, "a string"),
    "weights_sha256": ((str, type(None)), False, "a string"),
}


def check_record(record: Any, where: str) -> None:
    """Refuse (ValueError naming where: file:line) a record replay cannot use: every key replay reads, of the type
    sample_record writes, and generation settings GenerationConfig accepts."""
    fix = "replay needs a file written with out="
    if not isinstance(record, dict):
        kind = {list: "list", str: "string", type(None): "null", bool: "true/false"}.get(type(record), "number")
        raise ValueError(f"{where}: not a nanoloom sample record (a JSON {kind}); {fix}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{where}: not a nanoloom sample record (missing {', '.join(missing)})")
    if record["mode"] not in ("complete", "infill"):
        raise ValueError(f"{where}: the record is damaged (mode={record['mode']!r}, not complete or infill); {fix}")
    texts = ("prompt",) if record["mode"] == "complete" else ("prefix", "suffix")
    schema = {**_RECORD_KEYS, **{k: (str, True, "a string") for k in texts}}
    for key, (types, required, what) in schema.items():
        value = record.get(key)
        if required and key not in record:
            raise ValueError(f"{where}: the record is damaged (no {key}); {fix}")
        if key in record and (not isinstance(value, types) or isinstance(value, bool)):
            raise ValueError(f"{where}: the record is damaged ({key}={value!r}, not {what}); {fix}")
    ids = record["token_ids"]
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"{where}: the record is damaged (token_ids is not a list of token ids); {fix}")
    if not 0 <= record["seed"] < 2**63:
        raise ValueError(f"{where}: the record is damaged (seed={record['seed']} is out of range); {fix}")
    if not isinstance(record["generation"], dict):
        raise ValueError(f"{where}: the record is damaged (generation is not an object); {fix}")
    try:
        config = GenerationConfig(**record["generation"])
    except (TypeError, ValueError) as e:  # TypeError: a key GenerationConfig does not have
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{where}: the record's generation settings are damaged ({why}); {fix}") from None
    index = record.get("index", 0)
    if config.num_beams > 1 and not 0 <= index < config.num_return_sequences:
        beams = config.num_return_sequences
        raise ValueError(f"{where}: the record is damaged (index={index} of {beams} returned beams); {fix}")


def check_identity(record: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse to replay against a checkpoint whose config or weights changed since the record was written."""
    for key in ("config_sha256", "weights_sha256"):
        if record.get(key) and identity.get(key) and record[key] != identity[key]:
            what = "weights" if key == "weights_sha256" else "config or tokenizer"
            raise ValueError(
                f"the {what} of {record['checkpoint']} changed since this sample was written ({key} differs); "
                "replay needs the same checkpoint"
            )
