"""Hugging Face GPT-2 state-dict conversion (no transformers import: plain dicts of tensors in and out).

GPT-2's checkpoints store attention and MLP weights as Conv1D (in_features, out_features); ours are nn.Linear
(out_features, in_features), so those four matrices are transposed. Every other name maps one to one.
"""

from __future__ import annotations

from typing import Any

import torch

from model.config import GPTConfig

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
