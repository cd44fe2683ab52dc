"""Export a nanoloom checkpoint to a directory that Hugging Face transformers loads with from_pretrained / pipeline.

GPT-2-style GPTs become GPT2LMHeadModel, rotary + RMSNorm + SwiGLU GPTs LlamaForCausalLM, T5s
T5ForConditionalGeneration: weights are renamed (the reverse of model/hf.py), the rows of the padded vocabulary are cut
off, and config.json, generation_config.json and a README.md model card are written as plain JSON/text, with the
tokenizer files the tokenizer package writes (data.tokenizer.tokenizer_files), so exporting needs no transformers.
CLI: python -m model.export checkpoint=<run or checkpoint dir> out=<dir> [dtype=bfloat16] [overwrite=true]; a user
error is one `error: ...` line (exit status 2), and NANOLOOM_DEBUG=1 shows its traceback instead.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from model.checkpoint import (
    WEIGHTS,
    check_finite_weights,
    check_weights,
    damaged_weights,
    read_model_json,
    read_tokenizer,
    resolve_checkpoint,
)
from model.config import BartConfig, GPTConfig, T5Config
from model.hf import t5_rename
from model.registry import build_model, config_from_dict
from nanoloom.files import atomic_directory, remove_stale_temp_dirs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# What a GPT must be for each transformers architecture to compute exactly what it computes. GPT-2 also needs
# n_kv_head == n_head; Llama takes any n_kv_head, and bias=true maps to attention_bias/mlp_bias.
GPT2_OPTIONS: dict[str, Any] = {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "qk_norm": False}
LLAMA_OPTIONS: dict[str, Any] = {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": False}
_OPTIONS_HINT = (
    "transformers' GPT-2 needs pos=learned norm=layernorm mlp=gelu bias=true n_kv_head=n_head qk_norm=false; "
    "Llama needs pos=rope norm=rmsnorm mlp=swiglu qk_norm=false"
)

# GPT-2 stores these as Conv1D (in_features, out_features); ours are nn.Linear (out_features, in_features)
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# ours -> HF Llama, per block (after "transformer.h.{i}."); c_attn is split into q/k/v_proj separately
_LLAMA_BLOCK = {
    "ln_1": "input_layernorm",
    "ln_2": "post_attention_layernorm",
    "attn.c_proj": "self_attn.o_proj",
    "mlp.c_fc": "mlp.gate_proj",  # SwiGLU: c_proj(silu(c_fc(x)) * c_gate(x)) = down(silu(gate(x)) * up(x))
    "mlp.c_gate": "mlp.up_proj",
    "mlp.c_proj": "mlp.down_proj",
}


# ----------------------------------------------------------------------------------------------------------------
# which architecture


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def hf_architecture(config: GPTConfig | T5Config | BartConfig) -> str:
    """The transformers architecture that computes exactly what this model computes: gpt2 | llama | t5 | bart.

    Raises a one-line ValueError naming the options that have no GPT-2 or Llama equivalent.
    """
    if isinstance(config, T5Config):
        return "t5"
    if isinstance(config, BartConfig):
        return "bart"
    gpt2_bad = [f"{k}={_fmt(getattr(config, k))}" for k, v in GPT2_OPTIONS.items() if getattr(config, k) != v]
    if config.n_kv_head != config.n_head:
        gpt2_bad.append(f"n_kv_head={config.n_kv_head}")
    llama_bad = [f"{k}={_fmt(getattr(config, k))}" for k, v in LLAMA_OPTIONS.items() if getattr(config, k) != v]
    if not gpt2_bad:
        return "gpt2"
    if not llama_bad:
        return "llama"
    # learned positions exist only in GPT-2, rotary ones only in Llama: name what keeps the model from that one
    target, bad = ("GPT-2", gpt2_bad) if config.pos == "learned" else ("Llama", llama_bad)
    options = ", ".join(f"model.{b}" for b in bad)
    raise ValueError(
        f"cannot export this GPT to transformers: {options} {'has' if len(bad) == 1 else 'have'} no {target} "
        f"equivalent ({_OPTIONS_HINT})"
    )


# ----------------------------------------------------------------------------------------------------------------
# weights


def read_state_dict(directory: Path, config: GPTConfig | T5Config | BartConfig) -> dict[str, torch.Tensor]:
    """All of a checkpoint's tensors under our names, tied weights under both names, checked against the config
    (names, shapes and dtypes in the file's header first: model.checkpoint.check_weights) and finite."""
    with torch.device("meta"):  # shapes only: no memory, no init
        check_weights(directory / WEIGHTS, build_model(config))
    try:
        state = load_file(str(directory / WEIGHTS))
    except SafetensorError as e:
        raise damaged_weights(directory / WEIGHTS, e) from e
    check_finite_weights(state.items(), directory / WEIGHTS)  # NaN or inf would be exported as they are
    tied = ("transformer.wte.weight", "lm_head.weight") if config.kind == "gpt" else ("shared.weight", "lm_head.weight")
    if config.tie_embeddings:  # safetensors stores a tied matrix once, under either name
        for a, b in (tied, tied[::-1]):
            if a in state and b not in state:
                state[b] = state[a]
    return state


def gpt2_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our GPT (GPT-2 options) -> GPT2LMHeadModel keys: Conv1D weights transposed, vocabulary unpadded."""
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight" and config.tie_embeddings:
            continue  # transformers ties it to transformer.wte.weight (and saves it the same way)
        if key in ("transformer.wte.weight", "lm_head.weight"):
            value = value[: config.vocab_size]  # padded rows are never predicted nor fed in
        out[key] = value.t() if key.endswith(_CONV1D) else value
    return out


def llama_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our GPT (rope, rmsnorm, swiglu) -> LlamaForCausalLM keys: c_attn split into q/k/v_proj, vocabulary unpadded.

    Our rotary embedding rotates halves (x[:hs/2], x[hs/2:]) like HF Llama, so q and k need no permutation.
    """
    q_rows, kv_rows = config.n_head * config.head_size, config.n_kv_head * config.head_size
    out = {"model.embed_tokens.weight": state["transformer.wte.weight"][: config.vocab_size]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"][: config.vocab_size]
    out["model.norm.weight"] = state["transformer.ln_f.weight"]
    for key, value in state.items():
        m = re.match(r"transformer\.h\.(\d+)\.(.+)$", key)
        if m is None:
            continue
        prefix, name = f"model.layers.{m.group(1)}.", m.group(2)
        if name.startswith("attn.c_attn."):  # rows: q (nh*hs), then k (nkv*hs), then v (nkv*hs)
            param = name.rsplit(".", 1)[1]
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), value.split([q_rows, kv_rows, kv_rows])):
                out[f"{prefix}self_attn.{proj}.{param}"] = part
            continue
        module, param = name.rsplit(".", 1)
        out[f"{prefix}{_LLAMA_BLOCK[module]}.{param}"] = value
    return out


def t5_state_dict(state: dict[str, torch.Tensor], config: T5Config) -> dict[str, torch.Tensor]:
    """Our T5 -> T5ForConditionalGeneration keys (same tensors), vocabulary unpadded."""
    out = {"shared.weight": state["shared.weight"][: config.vocab_size]}
    if not config.tie_embeddings:  # v1.1's separate output head
        out["lm_head.weight"] = state["lm_head.weight"][: config.vocab_size]
    for key, value in state.items():
        if key in ("shared.weight", "lm_head.weight"):
            continue
        name = t5_rename(key, to_hf=True)
        if name is None:
            raise AssertionError(f"no Hugging Face T5 name for {key}")
        out[name] = value
    return out


def bart_state_dict(state: dict[str, torch.Tensor], config: BartConfig) -> dict[str, torch.Tensor]:
    """Our BART -> BartForConditionalGeneration keys: Hugging Face's names are ours under "model."; the head and the
    stacks' embed_tokens are the shared embedding (transformers ties them), final_logits_bias stays at the top."""
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            continue
        out[key if key == "final_logits_bias" else f"model.{key}"] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# config.json and generation_config.json


def gpt2_config(config: GPTConfig, eot_id: int | None, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of a GPT2LMHeadModel equal to our GPT."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.intermediate_size,
        "activation_function": "gelu_new",  # GELU, tanh approximation
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": config.init_std,
        "scale_attn_weights": True,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": eot_id,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def llama_config(config: GPTConfig, eot_id: int | None, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM equal to our GPT."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.block_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,  # read by transformers 4; 5 reads rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": config.bias,  # q, k, v and o projections
        "mlp_bias": config.bias,
        "attention_dropout": config.dropout,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": eot_id,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def t5_config(config: T5Config, eot_id: int | None, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of a T5ForConditionalGeneration equal to our T5."""
    start = config.decoder_start_id if config.decoder_start_id is not None else eot_id
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": config.vocab_size,
        "d_model": config.n_embd,
        "d_kv": config.head_size,
        "d_ff": config.intermediate_size,
        "num_layers": config.n_encoder_layer,
        "num_decoder_layers": config.n_decoder_layer,
        "num_heads": config.n_head,
        "relative_attention_num_buckets": config.rel_pos_buckets,
        "relative_attention_max_distance": config.rel_pos_max_distance,
        "dropout_rate": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_factor": config.init_factor,
        "feed_forward_proj": config.mlp,
        # v1.0 ties the head and rescales its input by d_model^-0.5, v1.1 does neither. transformers 4 reads
        # tie_word_embeddings; 5 always ties the parameters it can and reads the rescaling from this flag.
        "tie_word_embeddings": config.tie_embeddings,
        "scale_decoder_outputs": config.tie_embeddings,
        "decoder_start_token_id": start,
        "pad_token_id": config.pad_id if config.pad_id is not None else eot_id,
        "eos_token_id": eot_id,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def bart_config(config: BartConfig, eot_id: int | None, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of a BartForConditionalGeneration equal to our BART."""
    return {
        "architectures": ["BartForConditionalGeneration"],
        "model_type": "bart",
        "is_encoder_decoder": True,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.block_size,
        "d_model": config.n_embd,
        "encoder_layers": config.n_encoder_layer,
        "decoder_layers": config.n_decoder_layer,
        "encoder_attention_heads": config.n_head,
        "decoder_attention_heads": config.n_head,
        "encoder_ffn_dim": config.intermediate_size,
        "decoder_ffn_dim": config.intermediate_size,
        "activation_function": config.activation,
        "scale_embedding": config.scale_embedding,
        "dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "init_std": config.init_std,
        "normalize_before": False,
        "add_final_layer_norm": False,
        "tie_word_embeddings": True,
        "pad_token_id": config.pad_id,
        "bos_token_id": config.bos_id,
        "eos_token_id": eot_id,
        "decoder_start_token_id": config.decoder_start_id,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def generation_config(hf_config: dict[str, Any], recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """generation_config.json: generate() stops at our end-of-text and starts T5's decoder where we do.

    recorded: the decoding defaults the checkpoint records (model.json meta.generation: its training task's preset),
    written in transformers' names (the same as ours) so generate() and pipelines decode as nanoloom does. Controls
    that are off are left out, and sampling controls appear only when sampling (transformers warns otherwise). Stop
    strings and the code preset's end-of-block rule stay out (transformers' stop_strings need a tokenizer in every
    generate() call); presence/frequency penalties have no transformers equivalent.
    """
    keys = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    out = {k: hf_config[k] for k in keys if hf_config.get(k) is not None}
    r = recorded or {}
    if not r:
        return out
    beams = int(r.get("num_beams") or 1)
    out["do_sample"] = bool(r.get("do_sample")) and float(r.get("temperature", 1.0)) > 0 and beams == 1
    if out["do_sample"]:  # top_k 0 (off) is written: transformers' default would be 50
        out.update(temperature=r.get("temperature", 1.0), top_k=r.get("top_k") or 0)
        out.update({k: r[k] for k in ("top_p", "typical_p") if r.get(k) is not None and r[k] < 1.0})
        out.update({"min_p": r["min_p"]} if r.get("min_p") else {})
    if beams > 1:
        out.update(num_beams=beams, length_penalty=r.get("length_penalty", 1.0))
        out["early_stopping"] = bool(r.get("early_stopping"))
    out.update({k: r[k] for k in ("max_new_tokens", "max_length", "eos_token_id", "forced_bos_token_id",
                                  "forced_eos_token_id") if r.get(k) is not None})  # fmt: skip
    out.update(
        {k: r[k] for k in ("min_new_tokens", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens") if r.get(k)}
    )
    if r.get("repetition_penalty", 1.0) != 1.0:
        out["repetition_penalty"] = r["repetition_penalty"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# model card


def model_card(info: dict[str, Any], hf_config: dict[str, Any], n_params: int, source: str) -> str:
    """README.md: what the directory holds, how to use it, and the nanoloom config it was made from."""
    arch, kind = hf_config["architectures"][0], info["kind"]
    tok = info.get("tokenizer", {})
    task = "text2text-generation" if kind in ("t5", "bart") else "text-generation"
    if kind in ("t5", "bart"):
        usage = (
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n"
            'tokenizer = AutoTokenizer.from_pretrained("<this directory>")\n'
            'model = AutoModelForSeq2SeqLM.from_pretrained("<this directory>")\n'
            'ids = model.generate(**tokenizer("your input", return_tensors="pt"), max_new_tokens=50)\n'
            "print(tokenizer.decode(ids[0], skip_special_tokens=True))"
        )
    else:
        usage = (
            "from transformers import pipeline\n\n"
            'generate = pipeline("text-generation", model="<this directory>")\n'
            'print(generate("Once upon a time", max_new_tokens=50, do_sample=False)[0]["generated_text"])'
        )
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in info["config"].items())
    meta = ", ".join(f"{k}={v}" for k, v in (info.get("meta") or {}).items() if isinstance(v, (int, float, str)))
    notes = [
        f"- Tokenizer: nanoloom's `{tok.get('name')}` tokenizer ({tok.get('vocab_size')} ids, end-of-text id "
        f"{tok.get('eot_id')}{', ' + str(tok['sentinels']) + ' sentinels' if tok.get('sentinels') else ''}).",
        "- As in nanoloom, the text `<|endoftext|>` inside a prompt is ordinary text; only the id is end-of-text.",
    ]
    if kind == "t5":
        notes.append("- Encoder inputs end with end-of-text (the tokenizer appends it), as in training.")
    if kind == "bart":
        notes.append("- Encoder inputs are framed `<s> text </s>` (the tokenizer adds both), as BART's are.")
    if tok.get("name") == "char":
        notes.append(
            "- Characters outside the training vocabulary are dropped by the tokenizer (nanoloom refuses them)."
        )
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            f"pipeline_tag: {task}",
            "tags:",
            "- nanoloom",
            f"- {hf_config['model_type']}",
            "---",
            "",
            f"# {source}",
            "",
            f"A {kind.upper()} language model ({n_params:,} parameters) trained with nanoloom, a from-scratch GPT/T5 "
            f"framework in plain PyTorch, and exported to the transformers `{arch}` format with "
            "`python -m model.export`. The exported model computes the same logits as the nanoloom checkpoint.",
            "",
            "## Use",
            "",
            "```python",
            usage,
            "```",
            "",
            "## Notes",
            "",
            *notes,
            *([f"- Checkpoint: {meta}."] if meta else []),
            "",
            "## nanoloom config",
            "",
            "| key | value |",
            "| --- | --- |",
            rows,
            "",
        ]
    )


# ----------------------------------------------------------------------------------------------------------------
# export


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _owned(t: torch.Tensor) -> torch.Tensor:
    """t, or a contiguous copy when it is a view (q/k/v, unpadded rows): older safetensors refuse shared storage."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _check_out(out: Path, checkpoint: Path, overwrite: bool) -> None:
    if out.resolve() == checkpoint.resolve() or out.resolve() in checkpoint.resolve().parents:
        raise ValueError(f"out={str(out)!r} contains the checkpoint it would replace; choose another directory")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out={str(out)!r} is a file; choose a directory path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out={str(out)!r} is not empty; pass overwrite=true to replace it")


def export_hf(checkpoint: str | Path, out: str | Path, *, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write a transformers directory (config.json, model.safetensors, tokenizer, model card) for a checkpoint.

    Args:
        checkpoint: a checkpoint directory, or a run directory (its latest checkpoint).
        out: the directory to create; written atomically (nothing appears on failure).
        dtype: float32 | bfloat16 | float16 for the weights; None keeps the checkpoint's.
        overwrite: replace a non-empty `out`.
    Returns:
        out, as a Path.
    """
    directory = resolve_checkpoint(checkpoint)
    out = Path(out)
    _check_out(out, directory, overwrite)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    info = read_model_json(directory)
    config = config_from_dict({"kind": info["kind"], **info["config"]})
    if config.vocab_size is None:
        raise ValueError(f"{directory / 'model.json'} has no vocab_size; the checkpoint cannot be exported")
    arch = hf_architecture(config)
    spec = info.get("tokenizer") or {}
    tok_vocab = spec.get("vocab_size")
    if tok_vocab is not None and tok_vocab > config.vocab_size:
        raise ValueError(f"the tokenizer has {tok_vocab} ids but the model only {config.vocab_size}")
    # The tokenizer files are the tokenizer package's; a function-level import, like model/checkpoint.py's load_model.
    from data.tokenizer import tokenizer_files

    read_tokenizer(directory)  # a tokenizer spec that cannot be rebuilt is refused naming model.json
    files = tokenizer_files(spec, config.kind, config.block_size)

    state = read_state_dict(directory, config)
    convert = {"gpt2": gpt2_state_dict, "llama": llama_state_dict, "t5": t5_state_dict, "bart": bart_state_dict}[arch]
    hf_state = convert(state, config)
    target = DTYPES[dtype] if dtype is not None else next(iter(hf_state.values())).dtype
    # a bar on stderr (on a terminal only): casting and copying a large model's tensors takes a while
    tensors = tqdm(hf_state.items(), total=len(hf_state), desc="converting", unit="tensor", leave=False, disable=None)
    hf_state = {k: _owned(v.to(target) if v.is_floating_point() else v) for k, v in tensors}
    eot_id = spec.get("eot_id")
    to_config = {"gpt2": gpt2_config, "llama": llama_config, "t5": t5_config, "bart": bart_config}[arch]
    hf_config = to_config(config, eot_id, target)
    files["config.json"] = _dumps(hf_config)
    files["generation_config.json"] = _dumps(generation_config(hf_config, (info.get("meta") or {}).get("generation")))
    n_params = sum(v.numel() for v in hf_state.values())
    where = directory.resolve()
    title = f"{where.parent.parent.name} ({where.name})" if where.parent.name == "checkpoints" else where.name
    files["README.md"] = model_card(info, hf_config, n_params, title)

    mask = os.umask(0)
    os.umask(mask)
    remove_stale_temp_dirs(out.parent)  # of exports killed before they finished (kill -9): their process is gone
    try:
        with atomic_directory(out) as tmp:
            save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
            # the temporary directory is private (0700); an export is meant to be shared like any other directory
            for f in tmp.iterdir():
                f.chmod(0o666 & ~mask)
            tmp.chmod(0o777 & ~mask)
    except (OSError, SafetensorError) as e:  # no such parent, read-only, disk full: nothing was written
        raise ValueError(_write_error(out, e)) from e
    return out


def _write_error(out: Path, e: OSError | SafetensorError) -> str:
    """One line for a failed export: the system's reason, where, and what to do."""
    if isinstance(e, OSError):
        number, reason = e.errno, e.strerror or str(e)
    else:  # safetensors names the OS error in its message only: "... I/O error: No space left ... (os error 28)"
        code = re.search(r"os error (\d+)", str(e))
        number = int(code[1]) if code else None
        reason = os.strerror(number) if code else str(e).strip().splitlines()[0]
    where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
    kept = f"{out} is as it was" if out.exists() else "nothing was written"
    full = number in (errno.ENOSPC, errno.EDQUOT)
    fix = "free space or choose another disk" if full else "choose a directory you can write to"
    return f"cannot write out={str(out)!r}: {reason}{where}; {kept}: {fix}"


# ----------------------------------------------------------------------------------------------------------------
# CLI

USAGE = """\
usage: nanoloom export checkpoint=<run or checkpoint dir> out=<dir> [dtype=float32|bfloat16|float16] [overwrite=true]
       (python -m model.export ... is the same command)

Writes a folder transformers loads (GPT-2, Llama or T5 architecture as the model's options allow): config.json,
generation_config.json, model.safetensors, the tokenizer files and a model card.
options: --cfg  print the composed config and exit;  -h, --help  this message
a user error is one `error: ...` line (exit status 2); NANOLOOM_DEBUG=1 shows its traceback instead
"""


@dataclass
class ExportConfig:
    """The schema of configs/export.yaml."""

    checkpoint: str = ""  # a checkpoint directory, or a run directory (its latest checkpoint)
    out: str = ""  # the folder to create (written atomically)
    dtype: Optional[str] = None  # float32 | bfloat16 | float16; null: as stored
    overwrite: bool = False  # replace an existing non-empty out


def main(argv: list[str] | None = None) -> None:
    """Entry point of `nanoloom export` / `python -m model.export`; a user error is one line and exit status 2."""
    from nanoloom.cli import run_command  # Hydra: the command line's business, not the export's

    def body(cfg: ExportConfig) -> Path:
        for key in ("checkpoint", "out"):
            if not getattr(cfg, key):
                raise ValueError(f"missing {key}=...; {USAGE.splitlines()[0].removeprefix('usage: ')}")
        out = export_hf(cfg.checkpoint, cfg.out, dtype=cfg.dtype, overwrite=cfg.overwrite)
        arch = json.loads((out / "config.json").read_text())["architectures"][0]
        print(f"exported {cfg.checkpoint} -> {out} ({arch})")
        return out

    run_command("export", ExportConfig, body, sys.argv[1:] if argv is None else list(argv), USAGE)


if __name__ == "__main__":
    main()
