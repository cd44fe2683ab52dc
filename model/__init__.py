"""nanoloom models: GPT (decoder-only), T5 and BART (encoder-decoders), each built from its config alone."""

from model.bart import Bart
from model.config import BartConfig, GPTConfig, T5Config
from model.gpt import GPT
from model.registry import build_model, is_encoder_decoder
from model.t5 import T5

__all__ = ["GPT", "GPTConfig", "T5", "T5Config", "Bart", "BartConfig", "build_model", "is_encoder_decoder"]
