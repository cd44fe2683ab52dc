"""Model registry: kind -> (config class, model class). build_model() is where every model is constructed."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from model.bart import Bart
from model.config import BartConfig, GPTConfig, T5Config
from model.gpt import GPT
from model.t5 import T5

MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "gpt": (GPTConfig, GPT),
    "t5": (T5Config, T5),
    "bart": (BartConfig, Bart),
}
ENCODER_DECODERS = ("t5", "bart")  # kinds whose prompt is an encoder input and whose output is decoded from a start id


def is_encoder_decoder(kind: str) -> bool:
    return kind in ENCODER_DECODERS


def config_from_dict(d: dict[str, Any]) -> Any:
    """The typed config for a plain dict with a "kind" key (model.json, a resolved Hydra node)."""
    kind = d.get("kind", "gpt")
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODELS)}")
    return MODELS[kind][0].from_dict(d)


def build_model(config: Any) -> nn.Module:
    """Instantiate the model class that matches a config object (or a dict with a "kind" key)."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    for config_cls, model_cls in MODELS.values():
        if isinstance(config, config_cls):
            return model_cls(config)
    raise TypeError(f"no model registered for {type(config).__name__}")
