"""Hugging Face GPT-2 and T5 state-dict conversion (no transformers import: plain dicts of tensors in and out).

GPT-2's checkpoints store attention and MLP weights as Conv1D (in_features, out_features); ours are nn.Linear
(out_features, in_features), so those four matrices are transposed. T5 names map one to one by renaming
(layer.0.SelfAttention -> attn, layer.1.EncDecAttention -> cross_attn, DenseReluDense -> mlp, ...).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from model.config import GPTConfig, T5Config

# HF GPT2LMHeadModel keys use these Conv1D weights (transposed relative to nn.Linear)
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt_config_from_hf(hf_config: dict[str, Any], **overrides: Any) -> GPTConfig:
    """A GPTConfig equal to a Hugging Face GPT-2 config.json (as a dict)."""
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"expected a GPT-2 config, got model_type={hf_config.get('model_type')!r}")
    act = hf_config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 activation {act!r} has no nanoloom equivalent (only the tanh GELU)")
    n_embd = hf_config["n_embd"]
    return GPTConfig(
        block_size=hf_config["n_positions"],
        vocab_size=hf_config["vocab_size"],
        padding_multiple=1,  # keep HF's exact vocabulary so the weights load unchanged
        n_layer=hf_config["n_layer"],
        n_head=hf_config["n_head"],
        n_embd=n_embd,
        intermediate_size=hf_config.get("n_inner") or 4 * n_embd,
        norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf_config.get("tie_word_embeddings", True),
        **overrides,
    )


def gpt_state_dict_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename/transpose a GPT2LMHeadModel (or GPT2Model) state dict into ours."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):
            continue  # old HF checkpoints store the causal mask as a buffer
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        out[name] = value.t().contiguous() if name.endswith(_CONV1D) else value
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def t5_config_from_hf(hf_config: dict[str, Any], **overrides: Any) -> T5Config:
    """A T5Config equal to a Hugging Face T5 config.json (v1.0 or v1.1), as a dict."""
    if hf_config.get("model_type", "t5") != "t5":
        raise ValueError(f"expected a T5 config, got model_type={hf_config.get('model_type')!r}")
    proj = hf_config.get("feed_forward_proj", "relu")
    if proj not in ("relu", "gated-gelu"):
        raise ValueError(f"T5 feed_forward_proj={proj!r} has no nanoloom equivalent (relu or gated-gelu)")
    return T5Config(
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
        decoder_start_id=hf_config.get("decoder_start_token_id", 0),
        pad_id=hf_config.get("pad_token_id", 0),
        **overrides,
    )


# HF T5 key patterns -> ours (applied in order; \\1 = stack, \\2 = block index)
_T5_RENAMES = [
    (r"^(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.",
     r"\1.rel_bias.relative_attention_bias."),
    (r"^(encoder|decoder)\.block\.(\d+)\.layer\.0\.SelfAttention\.", r"\1.block.\2.attn."),
    (r"^(encoder|decoder)\.block\.(\d+)\.layer\.0\.layer_norm\.", r"\1.block.\2.ln_1."),
    (r"^(decoder)\.block\.(\d+)\.layer\.1\.EncDecAttention\.", r"\1.block.\2.cross_attn."),
    (r"^(decoder)\.block\.(\d+)\.layer\.1\.layer_norm\.", r"\1.block.\2.ln_cross."),
    (r"^(encoder)\.block\.(\d+)\.layer\.1\.DenseReluDense\.", r"\1.block.\2.mlp."),
    (r"^(encoder)\.block\.(\d+)\.layer\.1\.layer_norm\.", r"\1.block.\2.ln_2."),
    (r"^(decoder)\.block\.(\d+)\.layer\.2\.DenseReluDense\.", r"\1.block.\2.mlp."),
    (r"^(decoder)\.block\.(\d+)\.layer\.2\.layer_norm\.", r"\1.block.\2.ln_2."),
    (r"^(encoder|decoder)\.final_layer_norm\.", r"\1.ln_f."),
]  # fmt: skip


def t5_state_dict_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a T5ForConditionalGeneration state dict into ours (same tensors, no transposes)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue  # both are the shared embedding
        name = key
        for pattern, repl in _T5_RENAMES:
            name, n = re.subn(pattern, repl, name)
            if n:
                break
        out[name] = value
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["shared.weight"]
    return out
