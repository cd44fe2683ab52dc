"""Model configurations: GPTConfig (decoder-only) as a typed dataclass, validated in __post_init__.

Stdlib only, so configs import without torch (litgpt keeps config.py light the same way). Field names follow
nanoGPT/litgpt: n_layer, n_head, n_embd, block_size, vocab_size. Derived fields are computed, never set in YAML.
Types are the ones OmegaConf accepts (no PEP 604 unions, no Literal), because these classes are Hydra schemas too.
"""

from __future__ import annotations

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

    # Derived values are properties, not fields, so they never appear in YAML or in model.json.
    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return find_multiple(self.vocab_size, self.padding_multiple)

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

__all__ = ["GPTConfig", "GPT_PRESETS", "find_multiple"]
