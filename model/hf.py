"""Hugging Face GPT-2, T5 and BART checkpoints in nanoloom: config and state-dict conversion, and loading from a
folder or the hub (`load_model("hf:gpt2")`, `load_hf_model("./t5-small")`). No transformers import: plain dicts of
tensors.

GPT-2's checkpoints store attention and MLP weights as Conv1D (in_features, out_features); ours are nn.Linear
(out_features, in_features), so those four matrices are transposed. T5 names map one to one by renaming
(layer.0.SelfAttention -> attn, layer.1.EncDecAttention -> cross_attn, DenseReluDense -> mlp, ...). BART's names
are Hugging Face's without their "model." prefix.
Weights are read from safetensors, or from pytorch_model.bin with torch.load(weights_only=True): never unpickled.
huggingface_hub (hub names) and data.tokenizer (which reads the tokenizer that comes with a model) are imported lazily.
"""

from __future__ import annotations

import functools
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from model.config import BartConfig, GPTConfig, T5Config
from model.registry import build_model
from nanoloom.net import resolves

SUPPORTED_MODEL_TYPES = ("gpt2", "t5", "bart")
PREFIX = "hf:"  # load_model("hf:<hub name or folder>") routes here

# ----------------------------------------------------------------------------------------------------------------
# GPT-2

# HF GPT2LMHeadModel keys use these Conv1D weights (transposed relative to nn.Linear)
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt_config_from_hf(hf_config: dict[str, Any], **overrides: Any) -> GPTConfig:
    """A GPTConfig equal to a Hugging Face GPT-2 config.json (as a dict)."""
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"expected a GPT-2 config, got model_type={hf_config.get('model_type')!r}")
    act = hf_config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 activation {act!r} has no nanoloom equivalent (only the tanh GELU)")
    for key, plain in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if hf_config.get(key, plain) != plain:
            raise ValueError(f"GPT-2 config has {key}={hf_config[key]}; nanoloom's GPT supports only {key}={plain}")
    n_embd = hf_config["n_embd"]
    kwargs = dict(
        block_size=hf_config["n_positions"],
        vocab_size=hf_config["vocab_size"],
        padding_multiple=1,  # keep HF's exact vocabulary so the weights load unchanged
        n_layer=hf_config["n_layer"],
        n_head=hf_config["n_head"],
        n_embd=n_embd,
        intermediate_size=hf_config.get("n_inner") or 4 * n_embd,
        norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf_config.get("tie_word_embeddings", True),
    )
    return GPTConfig(**{**kwargs, **overrides})


def gpt_state_dict_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename/transpose a GPT2LMHeadModel (or GPT2Model) state dict into ours."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):
            continue  # old HF checkpoints store the causal mask as a buffer
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        out[name] = value.t().contiguous() if name.endswith(_CONV1D) else value
    if "lm_head.weight" not in out and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# T5 (v1.0, v1.1 and Flan-T5 layouts)


def t5_config_from_hf(hf_config: dict[str, Any], **overrides: Any) -> T5Config:
    """A T5Config equal to a Hugging Face T5 config.json (v1.0 or v1.1), as a dict."""
    if hf_config.get("model_type", "t5") != "t5":
        raise ValueError(f"expected a T5 config, got model_type={hf_config.get('model_type')!r}")
    proj = hf_config.get("feed_forward_proj", "relu")
    if proj not in ("relu", "gated-gelu"):
        raise ValueError(f"T5 feed_forward_proj={proj!r} has no nanoloom equivalent (relu or gated-gelu)")
    pad_id = hf_config.get("pad_token_id")
    pad_id = 0 if pad_id is None else pad_id
    start_id = hf_config.get("decoder_start_token_id")  # absent or null in newer configs: T5 starts from pad
    kwargs = dict(
        block_size=hf_config.get("n_positions") or 512,  # T5 was trained on 512 tokens; relative positions go further
        vocab_size=hf_config["vocab_size"],
        padding_multiple=1,  # keep the checkpoint's exact vocabulary
        n_encoder_layer=hf_config["num_layers"],
        n_decoder_layer=hf_config.get("num_decoder_layers") or hf_config["num_layers"],
        n_head=hf_config["num_heads"],
        n_embd=hf_config["d_model"],
        head_size=hf_config["d_kv"],
        intermediate_size=hf_config["d_ff"],
        mlp=proj,
        # v1.0 ties the head and rescales its input, v1.1 does neither. transformers >= 5 always ties and says
        # which one it is with scale_decoder_outputs; older configs said it with tie_word_embeddings.
        tie_embeddings=hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True)),
        rel_pos_buckets=hf_config.get("relative_attention_num_buckets", 32),
        rel_pos_max_distance=hf_config.get("relative_attention_max_distance", 128),
        dropout=hf_config.get("dropout_rate", 0.1),
        norm_eps=hf_config.get("layer_norm_epsilon", 1e-6),
        init_factor=hf_config.get("initializer_factor", 1.0),
        decoder_start_id=pad_id if start_id is None else start_id,
        pad_id=pad_id,
    )
    return T5Config(**{**kwargs, **overrides})


# One table for both directions (ours, Hugging Face's), {s} = encoder|decoder, {i} = block index. First match wins,
# so the relative bias (stored in block 0's self-attention on the Hugging Face side) comes before that layer.
_T5_NAMES = [
    ("{s}.rel_bias.relative_attention_bias.", "{s}.block.0.layer.0.SelfAttention.relative_attention_bias."),
    ("{s}.block.{i}.attn.", "{s}.block.{i}.layer.0.SelfAttention."),
    ("{s}.block.{i}.ln_1.", "{s}.block.{i}.layer.0.layer_norm."),
    ("decoder.block.{i}.cross_attn.", "decoder.block.{i}.layer.1.EncDecAttention."),
    ("decoder.block.{i}.ln_cross.", "decoder.block.{i}.layer.1.layer_norm."),
    ("encoder.block.{i}.mlp.", "encoder.block.{i}.layer.1.DenseReluDense."),
    ("encoder.block.{i}.ln_2.", "encoder.block.{i}.layer.1.layer_norm."),
    ("decoder.block.{i}.mlp.", "decoder.block.{i}.layer.2.DenseReluDense."),
    ("decoder.block.{i}.ln_2.", "decoder.block.{i}.layer.2.layer_norm."),
    ("{s}.ln_f.", "{s}.final_layer_norm."),
]


def _rule(source: str, target: str) -> tuple[re.Pattern, str]:
    """A (regex, replacement) pair that rewrites the source template's prefix into the target's."""
    pattern = re.escape(source).replace(r"\{s\}", "(?P<s>encoder|decoder)").replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile("^" + pattern), target.replace("{s}", r"\g<s>").replace("{i}", r"\g<i>")


_T5_TO_HF = [_rule(ours, hf) for ours, hf in _T5_NAMES]
_T5_FROM_HF = [_rule(hf, ours) for ours, hf in _T5_NAMES]


def t5_rename(name: str, to_hf: bool) -> str | None:
    """Our T5 parameter name as Hugging Face's (to_hf) or the reverse; None when no rule matches."""
    for pattern, repl in _T5_TO_HF if to_hf else _T5_FROM_HF:
        new, n = pattern.subn(repl, name)
        if n:
            return new
    return None


# The original T5 checkpoints (t5-small ...) carry a relative-position bias for cross-attention that T5 never uses.
_T5_UNUSED = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"


def t5_state_dict_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a T5ForConditionalGeneration state dict into ours (same tensors, no transposes)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue  # both are the shared embedding
        if key == _T5_UNUSED:
            continue
        out[t5_rename(key, to_hf=False) or key] = value  # shared/lm_head keep their names
    if "lm_head.weight" not in out and "shared.weight" in out:
        out["lm_head.weight"] = out["shared.weight"]  # v1.0, and v1.1 as transformers >= 5 saves it
    return out


# ----------------------------------------------------------------------------------------------------------------
# BART (facebook/bart-base, bart-large and their fine-tunes: bart-large-cnn, bart-large-xsum ...)


def bart_config_from_hf(hf_config: dict[str, Any], **overrides: Any) -> BartConfig:
    """A BartConfig equal to a Hugging Face BART config.json, as a dict; other layouts are refused by name."""
    if hf_config.get("model_type", "bart") != "bart":
        raise ValueError(f"expected a BART config, got model_type={hf_config.get('model_type')!r}")
    for key, plain in (("normalize_before", False), ("add_final_layer_norm", False), ("tie_word_embeddings", True)):
        if hf_config.get(key, plain) != plain:
            raise ValueError(f"BART config has {key}={hf_config[key]}; nanoloom's BART supports only {key}={plain}")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf_config[a] != hf_config[b]:
            raise ValueError(f"BART config has {a}={hf_config[a]} but {b}={hf_config[b]}; nanoloom needs them equal")
    act = hf_config.get("activation_function", "gelu")
    if act not in ("gelu", "gelu_new", "relu"):
        raise ValueError(f"BART activation_function={act!r} has no nanoloom equivalent (gelu, gelu_new, relu)")
    kwargs = dict(
        block_size=hf_config["max_position_embeddings"],
        vocab_size=hf_config["vocab_size"],
        n_encoder_layer=hf_config["encoder_layers"],
        n_decoder_layer=hf_config["decoder_layers"],
        n_head=hf_config["encoder_attention_heads"],
        n_embd=hf_config["d_model"],
        intermediate_size=hf_config["encoder_ffn_dim"],
        activation=act,
        scale_embedding=hf_config.get("scale_embedding", False),
        dropout=hf_config.get("dropout", 0.1),
        attention_dropout=hf_config.get("attention_dropout", 0.0),
        activation_dropout=hf_config.get("activation_dropout", 0.0),
        init_std=hf_config.get("init_std", 0.02),
        pad_id=hf_config.get("pad_token_id", 1),
        bos_id=hf_config.get("bos_token_id", 0),
        decoder_start_id=hf_config.get("decoder_start_token_id", 2),
    )
    return BartConfig(**{**kwargs, **overrides})


def bart_state_dict_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BartForConditionalGeneration (or BartModel) state dict in our names: Hugging Face's without "model.";
    the encoder's and decoder's embed_tokens are the shared embedding, the head is tied to it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        name = key.removeprefix("model.")
        if name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue
        out[name] = value
    if "lm_head.weight" not in out and "shared.weight" in out:
        out["lm_head.weight"] = out["shared.weight"]
    if "final_logits_bias" not in out and "shared.weight" in out:  # a BartModel (no head) file: zero, as transformers
        out["final_logits_bias"] = torch.zeros(1, out["shared.weight"].size(0), dtype=out["shared.weight"].dtype)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Where a checkpoint is: a local folder or a hub name

_HUB_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "vocab.json",
    "merges.txt",
]
_SAFETENSORS_FILES = ["model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json"]
_BIN_FILES = ["pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def resolve_hf_source(source: str) -> Path:
    """The local folder of a Hugging Face model: `source` itself, or a hub name downloaded into the hub cache.

    source: a folder with config.json, or a hub name ("gpt2", "google/t5-v1_1-small"); a leading "hf:" is ignored.
    A hub download fetches config, tokenizer files and the weights in one format (safetensors when the hub has them).
    Without a network, the hub cache is used, or a one-line ValueError says how to fetch the model elsewhere.
    """
    source = str(source).removeprefix(PREFIX)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{source!r} has no config.json: pass a folder written by save_pretrained() or downloaded from the "
                "Hugging Face hub"
            )
        return path
    if path.exists() or source.startswith((".", "/", "~")) or not _REPO_ID.fullmatch(source) or ".." in source:
        raise ValueError(
            f"{source!r} is not a folder (nor a Hugging Face hub name); pass hf:<folder with config.json> or a hub "
            "name like hf:gpt2"
        )
    return _download(source)


@functools.lru_cache(maxsize=16)  # one hub look-up per name and process (load_model, then read_model_json)
def _download(repo_id: str) -> Path:
    local = repo_id.split("/")[-1]
    include = " ".join(f"--include '{p}'" for p in ("*.json", "*.safetensors", "*.model", "*.txt"))
    how = (
        f"on a machine with a network run `hf download {repo_id} {include} --local-dir {local}`, copy the folder "
        f"here and pass hf:./{local}"
    )
    try:
        from huggingface_hub import constants, snapshot_download  # lazy: only hub names need it
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise ValueError(f"hub names need huggingface_hub (pip install huggingface_hub); or {how}") from None
    # Without a network the hub client retries for a long time: look in the local cache only, at once.
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    told = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    offline = told or not resolves(host)

    def fetch(patterns: list[str]) -> Path:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline, etag_timeout=10))

    try:
        directory = fetch(_HUB_FILES + _SAFETENSORS_FILES)
        if not any(directory.glob("model*.safetensors")):  # older repos: only a pickle-format checkpoint
            directory = fetch(_HUB_FILES + _BIN_FILES)
    except GatedRepoError:
        raise ValueError(
            f"{repo_id!r} is gated on the Hugging Face hub: accept its terms on its hub page and log in "
            f"(hf auth login); or {how}"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ValueError(
            f"{repo_id!r} is neither a local folder nor a model on the Hugging Face hub (or it is private); "
            "check the name, or pass hf:<folder with config.json>"
        ) from None
    except Exception as e:  # no network, not in the cache, hub errors: all end in the same advice
        if offline:
            why = "HF_HUB_OFFLINE is set and it is not in the hub cache" if told else "no network?"
        else:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ValueError(f"could not download {repo_id!r} from the Hugging Face hub ({why}); {how}") from None
    if not (directory / "config.json").is_file():
        raise ValueError(f"the hub's {repo_id!r} has no config.json (is it a model repository?); {how}")
    return directory


# ----------------------------------------------------------------------------------------------------------------
# Reading weights (never unpickling)


def load_hf_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a Hugging Face model folder, as stored (dtype kept), on the CPU.

    Reads model.safetensors, sharded model-0000x-of-0000y.safetensors (with or without their index), or the same
    for pytorch_model.bin, which is loaded with torch.load(weights_only=True): tensors only, no code runs.
    """
    directory = Path(directory)
    for single, index, shard_glob in (
        ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"),
    ):
        if (directory / single).is_file():
            return _read_weights(directory / single)
        files = _shards(directory, index, shard_glob)
        if files:
            state: dict[str, torch.Tensor] = {}
            for f in files:
                part = _read_weights(f)
                if state.keys() & part.keys():
                    raise ValueError(f"{f} repeats tensors of another shard ({sorted(state.keys() & part.keys())[0]})")
                state.update(part)
            return state
    raise ValueError(
        f"no weights in {directory}: expected model.safetensors or pytorch_model.bin (or their shards); download "
        "them from the model's hub page into the folder"
    )


def _shards(directory: Path, index: str, shard_glob: str) -> list[Path]:
    """The shard files of a sharded checkpoint: those its index names, else those matching the shard pattern."""
    if (directory / index).is_file():
        try:
            weight_map = json.loads((directory / index).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{directory / index} is not a shard index ({e})") from None
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{directory / index} lists shards that are not in the folder: {', '.join(missing)}")
        return files
    return sorted(directory.glob(shard_glob))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise ValueError(
            f"refused to load {path}: torch.load(weights_only=True) found more than tensors ({_unpickler_reason(e)}), "
            "and unpickling it could run code; use the model's model.safetensors instead (or the file is damaged)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"{path} is not a state dict (a flat mapping of names to tensors)")
    return state


def _unpickler_reason(e: Exception) -> str:
    """The one-line reason in torch.load's long weights_only error ("Unsupported global: GLOBAL io.open ...")."""
    text = str(e)
    detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
    line = next((line.strip() for line in detail.splitlines() if line.strip()), type(e).__name__)
    return line.split(" was not an allowed global")[0][:120]


# ----------------------------------------------------------------------------------------------------------------
# Loading a model


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a Hugging Face model folder."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a model config (a JSON object)")
    return config


def config_from_hf(hf_config: dict[str, Any], where: str = "config.json") -> GPTConfig | T5Config | BartConfig:
    """Our config for a Hugging Face config.json of a supported model type (gpt2, t5, bart)."""
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{where} has model_type={model_type!r}; nanoloom imports only {', '.join(SUPPORTED_MODEL_TYPES)} models"
        )
    convert = {"gpt2": gpt_config_from_hf, "t5": t5_config_from_hf, "bart": bart_config_from_hf}[model_type]
    try:
        return convert(hf_config)
    except KeyError as e:
        raise ValueError(f"{where} has no {e.args[0]!r}; it is not a complete {model_type} config") from None


def load_hf_model(
    source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[nn.Module, Any]:
    """Load (model in eval mode, tokenizer) from a Hugging Face GPT-2 or T5 folder or hub name.

    Args:
        source: a folder with config.json and weights, or a hub name ("gpt2", "t5-small"); a leading "hf:" is ignored.
        device: where the model goes.
        dtype: the model's dtype; None keeps the one our models are built in (fp32), whatever the file stores.
    """
    directory = resolve_hf_source(str(source))
    hf_config = read_hf_config(directory)
    config = config_from_hf(hf_config, str(directory / "config.json"))
    from data.tokenizer import load_hf_tokenizer  # the tokenizer package reads the folder's tokenizer files

    tokenizer = load_hf_tokenizer(directory, hf_config)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"the tokenizer in {directory} has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}; "
            "the folder mixes files of different models"
        )
    convert = {"gpt": gpt_state_dict_from_hf, "t5": t5_state_dict_from_hf, "bart": bart_state_dict_from_hf}
    state = convert[config.kind](load_hf_weights(directory))
    model = build_model(config)
    _load_state_dict(model, state, directory, hf_config)
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return model, tokenizer


def _load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], directory: Path, hf_config: dict) -> None:
    """Copy converted weights into the model; every parameter must be matched exactly once, with its shape."""
    embedding = "transformer.wte.weight" if model.config.kind == "gpt" else "shared.weight"  # t5, bart
    head, emb = state.get("lm_head.weight"), state.get(embedding)
    if model.config.tie_embeddings and head is not None and emb is not None and head is not emb:
        if head.shape != emb.shape or not torch.equal(head, emb):
            raise ValueError(
                f"{directory / 'config.json'} ties the output layer to the embedding, but the weights hold a "
                "different lm_head.weight; the config does not belong to these weights"
            )
        state["lm_head.weight"] = emb
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        arch = ", ".join(hf_config.get("architectures") or []) or "unknown"
        raise ValueError(
            f"the weights in {directory} do not fit its config.json (architecture {arch}; missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, shape mismatch (file vs config) {wrong[:2]}); nanoloom imports "
            "GPT2LMHeadModel, T5ForConditionalGeneration and BartForConditionalGeneration checkpoints"
        )
    model.load_state_dict(state)


def hf_model_info(source: str | Path) -> dict[str, Any]:
    """What model.json says for a nanoloom checkpoint, for a Hugging Face model: kind, config, tokenizer, meta."""
    directory = resolve_hf_source(str(source))
    hf_config = read_hf_config(directory)
    config = config_from_hf(hf_config, str(directory / "config.json"))
    meta = {"source": PREFIX + str(source).removeprefix(PREFIX), "directory": str(directory)}
    from data.tokenizer import load_hf_tokenizer  # the tokenizer package reads the folder's tokenizer files

    return {
        "kind": config.kind,
        "config": config.to_dict(),
        "tokenizer": load_hf_tokenizer(directory, hf_config).spec(),
        "meta": meta,
    }
