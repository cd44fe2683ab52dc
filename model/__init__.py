"""nanoloom models: GPT (decoder-only) and T5 (encoder-decoder), each built from its config alone."""

from model.config import GPTConfig, T5Config
from model.gpt import GPT
from model.registry import build_model
from model.t5 import T5

__all__ = ["GPT", "GPTConfig", "T5", "T5Config", "build_model"]
