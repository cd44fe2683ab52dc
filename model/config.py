"""Model configurations: GPTConfig (decoder-only) as a typed dataclass, validated in __post_init__.

Stdlib only, so configs import without torch (litgpt keeps config.py light the same way). Field names follow
nanoGPT/litgpt: n_layer, n_head, n_embd, block_size, vocab_size. Derived fields are computed, never set in YAML.
Types are the ones OmegaConf accepts (no PEP 604 unions, no Literal), because these classes are Hydra schemas too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "swiglu", "relu2")


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of k that is >= n."""
    return n if n % k == 0 else n + k - (n % k)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"model.{name}={value!r} is not one of {', '.join(choices)}; set model.{name} to one of them")


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"model.{name}={value} must be a positive integer; set model.{name}=<n> with n >= 1")


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"model.{name}={value} must be >= 0")


# a field's annotation -> the Python types its value may have, and how to say it (bool is an int, but not a number)
_TYPES = {
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a finite number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
}


def _check_types(config: Any) -> None:
    """Every field holds a value of its annotated type: configs also come from JSON (a checkpoint's model.json)."""
    for f in fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        optional = kind.startswith("Optional[")
        kind = kind.removeprefix("Optional[").removesuffix("]")
        if value is None and optional:
            continue
        types, what = _TYPES[kind]
        ok = isinstance(value, types) and (kind == "bool" or not isinstance(value, bool))
        if not ok or (kind == "float" and not math.isfinite(value)):
            raise ValueError(f"model.{f.name}={value!r} is not {what}{' (or null)' if optional else ''}")


def _check_token_ids(config: Any, *names: str) -> None:
    """Each named field (an id or None) is a token id of config.vocab_size's vocabulary."""
    for name in names:
        value, V = getattr(config, name), config.vocab_size
        if value is not None and not (0 <= value and (V is None or value < V)):
            raise ValueError(
                f"model.{name}={value} is not a token id of the vocabulary (0 to vocab_size - 1 = "
                f"{'?' if V is None else V - 1}); set model.{name}=<id> or null"
            )


@dataclass
class GPTConfig:
    kind: str = "gpt"  # registry key; always "gpt" for this class
    block_size: int = 1024  # maximum context length (tokens)
    vocab_size: Optional[int] = (
        50257  # tokenizer vocabulary (padded to padded_vocab_size); None: training takes it from the tokenizer
    )
    padding_multiple: int = 64  # pad the vocabulary to a multiple of this for faster matmuls (nanoGPT: 50304)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # query heads
    n_kv_head: Optional[int] = None  # key/value heads: None = n_head (MHA), 1 = MQA, in between = GQA
    n_embd: int = 768  # residual stream width C
    intermediate_size: Optional[int] = None  # MLP hidden width; None = 4*C (gelu/relu2) or 8/3*C rounded (swiglu)
    dropout: float = 0.0  # 0.0 for pretraining, try 0.1+ for finetuning on small data
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2; False: a bit better and faster
    norm: str = "layernorm"  # layernorm (GPT-2) | rmsnorm
    norm_eps: float = 1e-5  # epsilon of every norm
    pos: str = "learned"  # learned absolute positions (GPT-2) | rope (rotary, Su et al. 2021)
    rope_base: float = 10000.0  # rotary base frequency (pos=rope only)
    mlp: str = "gelu"  # gelu (GPT-2, tanh approximation) | swiglu (Llama) | relu2 (squared ReLU, Primer)
    qk_norm: bool = False  # normalise q and k per head before attention (OLMo 2, modded-nanogpt)
    tie_embeddings: bool = True  # share wte and lm_head weights, like GPT-2
    init_std: float = 0.02  # std of normal init; residual projections use init_std / sqrt(2 * n_layer)

    def __post_init__(self) -> None:
        _check_types(self)
        if self.kind != "gpt":
            raise ValueError(f"GPTConfig got kind={self.kind!r}; use kind=gpt (T5 models have their own config)")
        _check_positive(
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            padding_multiple=self.padding_multiple,
        )
        if self.vocab_size is not None:
            _check_positive(vocab_size=self.vocab_size)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("pos", self.pos, POSITIONS)
        _check_choice("mlp", self.mlp, MLPS)
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                f"pick n_embd a multiple of n_head (e.g. n_embd={find_multiple(self.n_embd, self.n_head)})"
            )
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        _check_positive(n_kv_head=self.n_kv_head)
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"model.n_head={self.n_head} is not divisible by model.n_kv_head={self.n_kv_head}; "
                "each key/value head must serve a whole group of query heads"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.pos == "rope" and self.head_size % 2 != 0:
            raise ValueError(f"pos=rope needs an even head size, got n_embd/n_head={self.head_size}")
        if self.intermediate_size is None:
            if self.mlp == "swiglu":  # keep parameter count ~ a 4*C MLP: 3 matrices of 8/3*C
                self.intermediate_size = find_multiple(int(8 * self.n_embd / 3), 64)
            else:
                self.intermediate_size = 4 * self.n_embd
        _check_positive(intermediate_size=self.intermediate_size)
        _check_non_negative(norm_eps=self.norm_eps, init_std=self.init_std)
        if self.rope_base <= 0:
            raise ValueError(f"model.rope_base={self.rope_base} must be > 0 (10000.0 is the usual base)")

    # Derived values are properties, not fields, so they never appear in YAML or in model.json.
    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return find_multiple(self.vocab_size, self.padding_multiple)

    def estimated_numel(self) -> int:
        """Elements of the parameters (tied matrices once) and buffers a GPT of this config allocates, by arithmetic
        alone: how a checkpoint's model.json is checked against its weights file before any model is built."""
        C, hs, hidden = self.n_embd, self.head_size, self.intermediate_size
        qkv = (self.n_head + 2 * self.n_kv_head) * hs
        attn = C * qkv + C * C + qkv + C + 2 * hs  # c_attn, c_proj, their biases, q/k norms
        mlp = (3 if self.mlp == "swiglu" else 2) * C * hidden + 2 * hidden + C
        embeddings = self.padded_vocab_size * C * (1 if self.tie_embeddings else 2)
        positions = self.block_size * (C if self.pos == "learned" else hs)  # the learned table, or rotary angles
        return embeddings + positions + self.n_layer * (attn + mlp + 4 * C) + 2 * C

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments (derived fields left out), JSON-serialisable."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Build from a dict, naming any unknown key instead of a bare TypeError."""
        return cls(**_known_keys(cls, d))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPTConfig:
        """A preset by name (gpt-nano, gpt-mini, gpt2, gpt2-medium, gpt2-large, gpt2-xl)."""
        if name not in GPT_PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; choose one of {', '.join(GPT_PRESETS)}")
        return cls(**{**GPT_PRESETS[name], **overrides})


def _known_keys(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    import difflib

    allowed = {f.name for f in fields(cls)}
    for key in d:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            fix = f"did you mean model.{hint[0]}?" if hint else f"valid keys: {', '.join(sorted(allowed))}"
            raise ValueError(f"unknown model key {key!r} for {cls.__name__}; {fix}")
    return dict(d)


# GPT-2 sizes from Radford et al. 2019; nano/mini are CPU-sized (minGPT naming).
GPT_PRESETS: dict[str, dict[str, Any]] = {
    "gpt-nano": dict(n_layer=3, n_head=3, n_embd=48, block_size=256),
    "gpt-mini": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


T5_MLPS = ("relu", "gated-gelu")


@dataclass
class T5Config:
    kind: str = "t5"  # registry key; always "t5" for this class
    block_size: int = 512  # longest encoder input and decoder output (tokens); relative positions need no table
    vocab_size: Optional[int] = 32128  # tokenizer vocabulary incl. sentinels; None: training takes it from the data
    padding_multiple: int = 64  # pad the embedding to a multiple of this (HF T5's 32128 already is one of 128)
    n_encoder_layer: int = 6  # encoder blocks
    n_decoder_layer: int = 6  # decoder blocks
    n_head: int = 8  # attention heads
    n_embd: int = 512  # d_model, the residual stream width C
    head_size: Optional[int] = None  # d_kv; None = n_embd // n_head (v1.1 small: 6 heads x 64 != 512)
    intermediate_size: int = 2048  # d_ff, the MLP hidden width
    mlp: str = "relu"  # relu (T5 v1.0) | gated-gelu (T5 v1.1: gelu-tanh(wi_0 x) * wi_1 x)
    tie_embeddings: bool = True  # v1.0: lm_head = shared embedding, output rescaled by n_embd^-0.5; v1.1: untied
    rel_pos_buckets: int = 32  # relative-position buckets (half per direction in the encoder)
    rel_pos_max_distance: int = 128  # distances beyond this share the last bucket
    dropout: float = 0.1  # T5 pretraining used 0.1; fine-tuning often 0.0-0.1
    norm_eps: float = 1e-6  # epsilon of the RMS norms
    init_factor: float = 1.0  # scales every init std (HF initializer_factor)
    decoder_start_id: Optional[int] = 0  # first decoder input; HF T5 uses the pad id 0; None: from the tokenizer
    pad_id: Optional[int] = 0  # id that pads encoder inputs (masked out); None: from the tokenizer

    def __post_init__(self) -> None:
        _check_types(self)
        if self.kind != "t5":
            raise ValueError(f"T5Config got kind={self.kind!r}; use kind=t5 (GPT models have their own config)")
        _check_positive(
            block_size=self.block_size,
            n_encoder_layer=self.n_encoder_layer,
            n_decoder_layer=self.n_decoder_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            intermediate_size=self.intermediate_size,
            rel_pos_buckets=self.rel_pos_buckets,
            rel_pos_max_distance=self.rel_pos_max_distance,
            padding_multiple=self.padding_multiple,
        )
        if self.vocab_size is not None:
            _check_positive(vocab_size=self.vocab_size)
        _check_choice("mlp", self.mlp, T5_MLPS)
        if self.head_size is None:
            if self.n_embd % self.n_head != 0:
                raise ValueError(
                    f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                    "change one of them or set model.head_size explicitly"
                )
            self.head_size = self.n_embd // self.n_head
        _check_positive(head_size=self.head_size)
        if self.rel_pos_buckets % 2 != 0:
            raise ValueError(f"model.rel_pos_buckets={self.rel_pos_buckets} must be even (half per direction)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
        _check_non_negative(norm_eps=self.norm_eps, init_factor=self.init_factor)
        _check_token_ids(self, "decoder_start_id", "pad_id")

    @property
    def padded_vocab_size(self) -> int:
        return find_multiple(self.vocab_size, self.padding_multiple)

    def estimated_numel(self) -> int:
        """Elements of the parameters (tied matrices once) a T5 of this config allocates, by arithmetic alone (see
        GPTConfig.estimated_numel); relative positions need no table of block_size."""
        C, hidden, inner = self.n_embd, self.intermediate_size, self.n_head * self.head_size
        attn, mlp = 4 * C * inner, (3 if self.mlp == "gated-gelu" else 2) * C * hidden
        encoder = self.n_encoder_layer * (attn + mlp + 2 * C)
        decoder = self.n_decoder_layer * (2 * attn + mlp + 3 * C)
        embeddings = self.padded_vocab_size * C * (1 if self.tie_embeddings else 2)
        return embeddings + encoder + decoder + 2 * (self.rel_pos_buckets * self.n_head + C)

    @property
    def n_layer(self) -> int:
        """Blocks in both stacks (for logs and FLOP estimates)."""
        return self.n_encoder_layer + self.n_decoder_layer

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> T5Config:
        """Build from a dict, naming any unknown key instead of a bare TypeError."""
        return cls(**_known_keys(cls, d))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> T5Config:
        """A preset by name (t5-tiny, t5-small, t5-base, t5-v1_1-small, t5-v1_1-base)."""
        if name not in T5_PRESETS:
            raise ValueError(f"unknown T5 preset {name!r}; choose one of {', '.join(T5_PRESETS)}")
        return cls(**{**T5_PRESETS[name], **overrides})


BART_ACTIVATIONS = ("gelu", "gelu_new", "relu")


@dataclass
class BartConfig:
    """BART (Lewis et al. 2019): post-norm encoder-decoder, learned positions offset by 2, GELU, biases."""

    kind: str = "bart"  # registry key; always "bart" for this class
    block_size: int = 1024  # max_position_embeddings: longest encoder input and decoder output (learned positions)
    vocab_size: Optional[int] = 50265  # BART's byte-level BPE (GPT-2's merges, <s> <pad> </s> <unk> ... <mask>)
    padding_multiple: int = 1  # BART's embedding is exactly its vocabulary
    n_encoder_layer: int = 6  # encoder_layers
    n_decoder_layer: int = 6  # decoder_layers
    n_head: int = 12  # encoder and decoder attention heads
    n_embd: int = 768  # d_model
    intermediate_size: int = 3072  # encoder/decoder ffn_dim
    activation: str = "gelu"  # activation_function: gelu (erf) | gelu_new (tanh) | relu
    scale_embedding: bool = False  # token embeddings times sqrt(n_embd) (mBART-style configs)
    dropout: float = 0.1  # dropout after embeddings, attention outputs and MLPs
    attention_dropout: float = 0.0  # dropout of the attention probabilities
    activation_dropout: float = 0.0  # dropout after the MLP's activation
    norm_eps: float = 1e-5  # LayerNorm epsilon
    init_std: float = 0.02  # normal init of every weight
    pad_id: Optional[int] = 1  # <pad>: pads encoder inputs (masked out) and decoder targets
    bos_id: Optional[int] = 0  # <s>: starts every encoder input
    decoder_start_id: Optional[int] = 2  # </s>: BART's first decoder input

    def __post_init__(self) -> None:
        _check_types(self)
        if self.kind != "bart":
            raise ValueError(f"BartConfig got kind={self.kind!r}; use kind=bart")
        _check_positive(
            block_size=self.block_size,
            n_encoder_layer=self.n_encoder_layer,
            n_decoder_layer=self.n_decoder_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            intermediate_size=self.intermediate_size,
            padding_multiple=self.padding_multiple,
        )
        if self.vocab_size is not None:
            _check_positive(vocab_size=self.vocab_size)
        _check_choice("activation", self.activation, BART_ACTIVATIONS)
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be in [0, 1)")
        _check_non_negative(norm_eps=self.norm_eps, init_std=self.init_std)
        _check_token_ids(self, "pad_id", "bos_id", "decoder_start_id")

    @property
    def padded_vocab_size(self) -> int:
        return find_multiple(self.vocab_size, self.padding_multiple)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def tie_embeddings(self) -> bool:
        """BART always ties the output head to the shared embedding."""
        return True

    @property
    def n_layer(self) -> int:
        return self.n_encoder_layer + self.n_decoder_layer

    def estimated_numel(self) -> int:
        """Elements of the parameters (tied matrices once), by arithmetic alone (see GPTConfig.estimated_numel)."""
        C, F = self.n_embd, self.intermediate_size
        attn, mlp, norm = 4 * C * C + 4 * C, 2 * C * F + F + C, 2 * C
        encoder = self.n_encoder_layer * (attn + mlp + 2 * norm)
        decoder = self.n_decoder_layer * (2 * attn + mlp + 3 * norm)
        positions = 2 * (self.block_size + 2) * C
        return self.padded_vocab_size * C + positions + encoder + decoder + 2 * norm

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BartConfig:
        return cls(**_known_keys(cls, d))


_V1_1 = dict(mlp="gated-gelu", tie_embeddings=False, dropout=0.0)
# Raffel et al. 2020 (v1.0) and the T5 v1.1 checkpoints; t5-tiny is CPU-sized for tests and demos.
T5_PRESETS: dict[str, dict[str, Any]] = {
    "t5-tiny": dict(n_encoder_layer=2, n_decoder_layer=2, n_head=4, n_embd=128, intermediate_size=512, block_size=256),
    "t5-small": dict(n_encoder_layer=6, n_decoder_layer=6, n_head=8, n_embd=512, intermediate_size=2048),
    "t5-base": dict(n_encoder_layer=12, n_decoder_layer=12, n_head=12, n_embd=768, intermediate_size=3072),
    "t5-v1_1-small": dict(n_encoder_layer=8, n_decoder_layer=8, n_head=6, n_embd=512, head_size=64,
                          intermediate_size=1024, **_V1_1),
    "t5-v1_1-base": dict(n_encoder_layer=12, n_decoder_layer=12, n_head=12, n_embd=768, intermediate_size=2048,
                         **_V1_1),
}  # fmt: skip
