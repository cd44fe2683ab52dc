"""The checkpoint format: a self-describing directory with model.safetensors and model.json.

model.json holds the model kind, its config and the tokenizer spec, so a checkpoint is loadable with nothing else
(sampling never needs the dataset). Weights are safetensors: loading never unpickles. Directories are written
atomically (temp dir + rename), so a crash mid-save leaves the previous checkpoint intact. A run's checkpoints/ holds
pointer files naming a checkpoint in it: `latest` (the newest complete one) and `best` (the lowest val loss); a
name that would lead out of checkpoints/ (`../x`, an absolute path) is refused, never followed.
"hf:<hub name or folder>" loads a Hugging Face GPT-2, T5 or BART checkpoint instead (model/hf.py).
model.json's meta.generation records the decoding defaults of the task a checkpoint was trained for (the role of
transformers' generation_config.json); read_generation_defaults returns them, or a Hugging Face folder's own.
Everything is checked as it is read (read_model_json, _pointer_name, check_weights, check_finite_weights): a damaged
file is one ValueError naming it, and a model.json describing far more parameters than its weights file holds is
refused before anything is allocated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from model.hf import PREFIX as HF_PREFIX
from model.hf import hf_model_info, load_hf_model, read_hf_config, resolve_hf_source
from model.registry import build_model, config_from_dict
from nanoloom.files import atomic_directory

FORMAT = "nanoloom-model"
VERSION = 1
WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
# generation_config.json keys nanoloom reads from a Hugging Face folder (transformers' names, which are ours too)
HF_GENERATION_KEYS = (
    "max_new_tokens", "max_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p",
    "typical_p", "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "eos_token_id",
    "num_beams", "length_penalty", "early_stopping", "forced_bos_token_id", "forced_eos_token_id",
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
    for p in raw.parameters():  # a head laid out for decoding (sample.generate.decoding_layout): safetensors
        if not p.is_contiguous():  # writes row-major tensors (the next generation lays it out again)
            p.data = p.data.contiguous()
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


def save_model(model: nn.Module, directory: str | Path, tokenizer_spec: dict, meta: dict | None = None) -> Path:
    """Write a standalone model checkpoint directory atomically."""
    with atomic_directory(directory) as tmp:
        write_model_files(model, tmp, tokenizer_spec, meta)
    return Path(directory)


def read_pointer(checkpoints_dir: str | Path, pointer: str = LATEST) -> str | None:
    """The checkpoint name a pointer file (latest, best) in checkpoints_dir holds; None if there is no such file.

    Refused (ValueError) unless it is a plain file (not a symbolic link) holding the name of an entry that resolves
    inside checkpoints_dir: a pointer never leads out of checkpoints_dir.
    """
    file = Path(checkpoints_dir) / pointer
    if file.is_symlink():
        raise ValueError(
            f"{file} is a symbolic link; refusing to follow it (a pointer is a file holding a checkpoint name like "
            "step_0001000); replace it with such a file"
        )
    if not file.is_file():
        return None
    name = _pointer_name(file)
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or Path(name).is_absolute()
        or (Path(checkpoints_dir) / name).resolve().parent != Path(checkpoints_dir).resolve()  # a link leading out
    ):
        raise ValueError(
            f"{file} names {name!r}, which is not a checkpoint directory inside {Path(checkpoints_dir)}; refusing "
            "to follow it (the file should hold a name like step_0001000)"
        )
    return name


POINTER_MAX_BYTES = 1024  # a pointer holds one directory name


def _pointer_name(file: Path) -> str:
    """The one name a pointer file holds; a ValueError naming the file when it is empty, binary or anything else."""
    with open(file, "rb") as f:
        raw = f.read(POINTER_MAX_BYTES + 1)
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        why = f"not UTF-8 text: byte {e.start}"
    else:
        why = (
            "empty"
            if not name
            else f"more than {POINTER_MAX_BYTES} bytes"
            if len(raw) > POINTER_MAX_BYTES
            else f"{name[:40]!r} is not one directory name"
            if not name.isprintable() or any(c.isspace() for c in name)
            else None
        )
    if why is not None:
        raise ValueError(f"{file} is damaged ({why}); {_pointer_fix(file.parent)}")
    return name


def _pointer_fix(checkpoints_dir: Path) -> str:
    """What to do about a pointer file that names no complete checkpoint: which one to write into it."""
    complete = sorted(
        p.name
        for p in checkpoints_dir.iterdir()
        if not p.name.startswith(".") and (p / MODEL_JSON).is_file() and (p / WEIGHTS).is_file()
    )
    if not complete:
        return f"no complete checkpoint is left in {checkpoints_dir}: train again or use another run"
    return f"write the name of a checkpoint into it (the newest complete one here: {complete[-1]})"


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
                raise FileNotFoundError(
                    f"{ckpts / pointer} points to {name!r}, which is not a complete checkpoint; {_pointer_fix(ckpts)}"
                )
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
    file = directory / MODEL_JSON
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise _damaged(file, f"not UTF-8 text: byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"corrupt {file} ({e}): the file is truncated or damaged; copy the checkpoint again or use another one"
        ) from None
    config = _check_model_json(file, info)
    check_size(directory / WEIGHTS, config, file)
    return info


def _damaged(file: Path, why: str) -> ValueError:
    return ValueError(f"{file} is damaged ({why}); copy the checkpoint again or use another one")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


# what model.json holds: key -> (required, type, what it is); tokenizer and meta keys nanoloom reads, likewise
_MODEL_JSON_KEYS = {
    "kind": (True, str, "a string"),
    "config": (True, dict, "an object"),
    "tokenizer": (True, dict, "an object"),
    "meta": (False, dict, "an object"),
}
_TOKENIZER_KEYS = {"name": (True, str, "a string"), "vocab_size": (False, int, "a whole number")}
_META_KEYS = {
    "step": (False, int, "a whole number"),
    "tokens_seen": (False, int, "a whole number"),
    "val_loss": (False, (int, float), "a number"),
    "generation": (False, dict, "an object"),
}


# meta.generation, the decoding defaults training records (sample.config.TaskConfig's fields): the type of each value
# nanoloom reads, so that sampling and export meet values of the right type (their ranges are sample.sampling's to
# check); null only where the control may be unset. Keys not listed are ignored by every reader.
_NUMBER = ((int, float), "a finite number")
_GENERATION_KEYS: dict[str, tuple[tuple[Any, str], bool]] = {
    **{k: (_NUMBER, False) for k in ("temperature", "top_p", "typical_p", "repetition_penalty", "presence_penalty",
                                     "frequency_penalty", "length_penalty", "noise_density", "mean_span_length")},
    "min_p": (_NUMBER, True),
    **{k: ((int, "a whole number"), True) for k in ("max_new_tokens", "max_length", "top_k")},
    **{k: ((int, "a whole number"), False)
       for k in ("min_new_tokens", "no_repeat_ngram_size", "num_beams", "num_return_sequences")},
    **{k: ((bool, "true or false"), False)
       for k in ("do_sample", "early_stopping", "stop_at_top_level", "check_syntax")},
    **{k: ((str, "a string"), False) for k in ("name", "objective")},
}  # fmt: skip


def _is(value: Any, types: Any) -> bool:
    """isinstance, where true/false is no number and a number is finite (JSON has NaN and Infinity)."""
    if isinstance(value, bool):
        return types is bool
    return isinstance(value, types) and (not isinstance(value, float) or math.isfinite(value))


def _check_generation(file: Path, generation: dict[str, Any]) -> None:
    """meta.generation's values of the types sampling and export read (see _GENERATION_KEYS)."""

    def ids(value: Any) -> bool:
        return isinstance(value, list) and all(_is(i, int) for i in value)

    for key, value in generation.items():
        if key in _GENERATION_KEYS:
            (types, what), nullable = _GENERATION_KEYS[key]
            ok = (value is None and nullable) or _is(value, types)
        elif key in ("stop_strings", "bad_words"):
            ok, what = isinstance(value, list) and all(isinstance(w, str) for w in value), "a list of strings"
        elif key == "suppress_tokens":
            ok, what = value is None or ids(value), "a list of token ids"
        elif key == "bad_words_ids":
            ok, what = value is None or (isinstance(value, list) and all(map(ids, value))), "a list of lists of ids"
        elif key == "eos_token_id":
            ok, what = value is None or ids(value) or ids([value]), "a token id or a list of them"
        else:
            continue
        if not ok:
            raise _damaged(file, f"meta.generation.{key}={value!r} is not {what}")


def _check_keys(file: Path, where: str, node: dict, schema: dict[str, tuple[bool, Any, str]]) -> None:
    for key, (required, types, what) in schema.items():
        if key not in node:
            if required:
                raise _damaged(file, f"no {where}{key}")
        elif node[key] is not None or required:
            value = node[key]
            if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
                raise _damaged(file, f"{where}{key} is {_json_type(value)}, not {what}")


def _check_model_json(file: Path, info: Any) -> Any:
    """The typed model config of a parsed model.json, after checking everything nanoloom reads from it."""
    if not isinstance(info, dict):
        raise _damaged(file, f"it holds {_json_type(info)}, not an object")
    if info.get("format") != FORMAT:
        raise ValueError(
            f"{file} is not a nanoloom model file (format={info.get('format')!r}); pass a nanoloom checkpoint "
            "directory, or hf:<folder> for a Hugging Face one"
        )
    if "version" not in info:
        raise _damaged(file, "no version")
    version = info["version"]
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise ValueError(f"{file} was written by a newer nanoloom (format version {version}); upgrade nanoloom")
    if version != VERSION:
        raise _damaged(file, f"version={version!r}, not {VERSION}")
    _check_keys(file, "", info, _MODEL_JSON_KEYS)
    _check_keys(file, "tokenizer.", info["tokenizer"], _TOKENIZER_KEYS)
    _check_keys(file, "meta.", info.get("meta") or {}, _META_KEYS)
    _check_generation(file, (info.get("meta") or {}).get("generation") or {})
    if info["config"].get("kind", info["kind"]) != info["kind"]:
        raise _damaged(file, f"kind={info['kind']!r} but config.kind={info['config']['kind']!r}")
    try:
        config = config_from_dict({"kind": info["kind"], **info["config"]})
    except ValueError as e:
        raise _damaged(file, str(e).split("; ")[0]) from None
    if config.vocab_size is None:
        raise _damaged(file, "config.vocab_size is null")
    tokens = info["tokenizer"].get("vocab_size")
    if tokens is not None and tokens > config.vocab_size:
        raise _damaged(file, _too_many_ids(tokens, config.vocab_size))
    return config


def _too_many_ids(tokens: int, vocab_size: int) -> str:
    return f"its tokenizer has {tokens} ids but its model only {vocab_size}"


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # safetensors' names of the dtypes weights may be stored in
SIZE_SLACK = 1 << 26  # elements a model may allocate beyond twice what its weights file holds (rotary tables ...)


def weights_header(file: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) of every tensor of a safetensors file, from its header alone (no tensor is read).

    safetensors checks on opening that the header is whole and that its tensors exactly cover the rest of the file.
    """
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except SafetensorError as e:
        raise damaged_weights(file, e) from None


def check_size(weights: Path, config: Any, model_json: Path) -> None:
    """Refuse a config that describes a model far larger than its weights file holds, before anything is built: a
    damaged n_layer or n_embd in the billions would otherwise allocate until memory runs out."""
    stored = sum(math.prod(shape) for _, shape in weights_header(weights).values())
    wanted = config.estimated_numel()
    if wanted > 2 * stored + SIZE_SLACK:
        raise ValueError(
            f"{model_json} describes a model of about {wanted:.3g} parameters but {weights} holds {stored:,}; "
            "model.json is damaged or belongs to other weights: copy the checkpoint again or use another one"
        )


def check_weights(file: Path, model: nn.Module) -> None:
    """Refuse (ValueError) a weights file whose tensors are not the model's: names, shapes and floating-point dtypes,
    read from the header before any tensor is loaded (a tied matrix is stored once, under either name)."""
    header = weights_header(file)
    expected = model.state_dict(keep_vars=True)  # tied names map to one tensor object
    present = {id(expected[k]) for k in header.keys() & expected.keys()}
    missing = sorted(k for k, t in expected.items() if id(t) not in present)
    unexpected = sorted(header.keys() - expected.keys())
    wrong = [
        f"{k} {tuple(header[k][1])} where model.json needs {tuple(expected[k].shape)}"
        for k in sorted(header.keys() & expected.keys())
        if header[k][1] != list(expected[k].shape)
    ]
    not_float = sorted(f"{k} ({dtype})" for k, (dtype, _) in header.items() if dtype not in FLOAT_DTYPES)
    problems = [
        f"{what} {names[:3]}"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("not floating point", not_float))
        if names
    ]
    problems += [f"wrong shape: {'; '.join(wrong[:3])}"] if wrong else []
    if problems:
        raise ValueError(
            f"weights in {file} do not match model.json ({', '.join(problems)}); the checkpoint is damaged or from "
            "another version: copy it again or use another one"
        )


def check_finite_file(file: Path) -> None:
    """check_finite_weights on the tensors of a weights file, read one at a time."""
    try:
        with safe_open(str(file), framework="pt") as f:
            check_finite_weights(((k, f.get_tensor(k)) for k in f.keys()), file)  # noqa: SIM118
    except SafetensorError as e:
        raise damaged_weights(file, e) from None


def check_finite_weights(named_tensors: Iterable[tuple[str, torch.Tensor]], file: Path) -> None:
    """Refuse (ValueError) weights holding NaN or inf: training never saves them, so the file is damaged."""
    bad = [name for name, t in named_tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(
            f"{file} holds non-finite weights (NaN or inf in {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            "the checkpoint is damaged: copy it again or use another one"
        )


def read_generation_defaults(path: str | Path) -> dict[str, Any] | None:
    """The decoding defaults a checkpoint records, or None (checkpoints written before they were recorded).

    A nanoloom checkpoint: model.json's meta.generation, the task preset it was trained with (name, do_sample,
    temperature, top_k, top_p, max_new_tokens, stop_strings ...). "hf:...": the decoding controls its
    generation_config.json sets (HF_GENERATION_KEYS), or, without that file, its config.json (where older
    transformers kept them, and where transformers still reads them from then); an encoder-decoder's min_length
    (which counts the decoder start) becomes min_new_tokens.
    """
    if not is_hf_source(path):
        return read_model_json(path).get("meta", {}).get("generation") or None
    directory = resolve_hf_source(str(path))
    file = directory / "generation_config.json"
    config = read_hf_config(directory)
    try:
        hf = json.loads(file.read_text()) if file.is_file() else config
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt {file}: {e}; delete it or fix it") from None
    record = {k: hf[k] for k in HF_GENERATION_KEYS if hf.get(k) is not None}
    if config.get("is_encoder_decoder") and (hf.get("min_length") or 0) > 1 and "min_new_tokens" not in record:
        record["min_new_tokens"] = hf["min_length"] - 1
    if not isinstance(record.get("early_stopping", False), bool):
        del record["early_stopping"]  # "never": transformers' third setting, which nanoloom does not have
    if record.get("max_length") == HF_DEFAULT_MAX_LENGTH:
        del record["max_length"]
    return record or None


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[nn.Module, Any]:
    """Load (model in eval mode, tokenizer) from a checkpoint, a run directory or "hf:<hub name or folder>".

    Never unpickles. "hf:" loads a Hugging Face GPT-2, T5 or BART checkpoint with its tokenizer (model/hf.py). A damaged
    checkpoint (model.json, its tokenizer, weights that do not fit it or are not finite, a pointer file) is a ValueError
    naming the file; a missing one a FileNotFoundError.
    """
    if is_hf_source(path):
        return load_hf_model(path[len(HF_PREFIX) :], device=device, dtype=dtype)
    directory = resolve_checkpoint(path)
    info = read_model_json(directory)  # checked, and its size against the weights file's
    config = config_from_dict({"kind": info["kind"], **info["config"]})
    tokenizer = _rebuild_tokenizer(directory / MODEL_JSON, info["tokenizer"], config.vocab_size)
    model = build_model(config)
    check_weights(directory / WEIGHTS, model)
    try:
        load_safetensors_model(model, str(directory / WEIGHTS), strict=False)  # names and shapes checked above
    except SafetensorError as e:
        raise damaged_weights(directory / WEIGHTS, e) from None
    check_finite_weights(model.named_parameters(), directory / WEIGHTS)
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return model, tokenizer


def read_tokenizer(path: str | Path) -> Any:
    """The tokenizer a checkpoint's model.json specifies, rebuilt; a spec that cannot be rebuilt, or with more ids
    than the model has, is a ValueError naming the file."""
    directory = resolve_checkpoint(path)
    info = read_model_json(directory)
    config = config_from_dict({"kind": info["kind"], **info["config"]})
    return _rebuild_tokenizer(directory / MODEL_JSON, info["tokenizer"], config.vocab_size)


def _rebuild_tokenizer(file: Path, spec: dict[str, Any], vocab_size: int) -> Any:
    # The tokenizer is data's; this import is the allowed model -> data.tokenizer edge (see DESIGN.md).
    from data.tokenizer import tokenizer_from_spec

    try:
        tokenizer = tokenizer_from_spec(spec)
    except Exception as e:  # whatever a damaged spec makes the tokenizer package raise
        raise _damaged(file, f"its tokenizer cannot be rebuilt: {_first_line(e)}") from e
    if tokenizer.vocab_size > vocab_size:  # a spec without vocab_size: known only now
        raise _damaged(file, _too_many_ids(tokenizer.vocab_size, vocab_size))
    return tokenizer


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
