"""nanoloom models: GPT (decoder-only) built from its config alone, plus the registry and checkpoint format."""

from model.config import GPTConfig
from model.gpt import GPT
from model.registry import build_model

__all__ = ["GPT", "GPTConfig", "build_model"]
