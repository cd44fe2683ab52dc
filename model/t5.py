"""T5: an encoder-decoder transformer (Raffel et al. 2020, "Exploring the Limits of Transfer Learning").

T5's choices: RMS layer norm without bias or mean subtraction, pre-norm residual blocks, no biases, no 1/sqrt(hs)
attention scaling, and a learned relative-position bias (bucketed; bidirectional in the encoder, causal in the
decoder) computed once per stack and added to every layer's attention scores. v1.0 uses a ReLU MLP and ties the
output head to the input embedding (rescaling by n_embd^-0.5); v1.1 uses a gated-GELU MLP and an untied head.
Names map one to one onto Hugging Face T5 checkpoints (model/hf.py); attention projections are q k v o.
Legend: B batch, S encoder (source) length, T decoder (target) length, C n_embd, nh heads, hs head size,
V vocabulary, L decoder KV-cache length.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import T5Config
from model.kv_cache import EncoderDecoder, EncoderDecoderAttention
from model.layers import RMSNorm, encoder_decoder_flops, run_block


def relative_position_bucket(rel_pos: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int):
    """Bucket of each key-minus-query distance: exact for small distances, log-spaced up to max_distance.

    Bidirectional (encoder): half the buckets for keys after the query. Causal (decoder): only keys at or before
    the query get distinct buckets (later keys are masked anyway).
    """
    buckets = torch.zeros_like(rel_pos)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel_pos > 0).long() * num_buckets
        distance = rel_pos.abs()
    else:
        distance = (-rel_pos).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + log_ratio * (num_buckets - max_exact)).long().clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """One learned scalar per (bucket, head), shared by every layer of a stack."""

    def __init__(self, config: T5Config, bidirectional: bool) -> None:
        super().__init__()
        self.relative_attention_bias = nn.Embedding(config.rel_pos_buckets, config.n_head)
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = config.rel_pos_buckets, config.rel_pos_max_distance

    def forward(self, query_pos: torch.Tensor, key_len: int) -> torch.Tensor:
        """Bias (1, nh, T, key_len) for queries at absolute positions query_pos (T,) (correct under a KV cache)."""
        key_pos = torch.arange(key_len, device=query_pos.device)
        rel = key_pos[None, :] - query_pos[:, None]  # (T, key_len): key minus query
        bucket = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)  # (1, nh, T, key_len)


class Attention(EncoderDecoderAttention):
    """Multi-head attention without biases or scaling; self-attention or cross-attention over enc_out."""

    def __init__(self, config: T5Config, cross: bool = False) -> None:
        super().__init__(config.n_head, config.head_size, cross)
        inner = config.n_head * config.head_size
        self.q = nn.Linear(config.n_embd, inner, bias=False)
        self.k = nn.Linear(config.n_embd, inner, bias=False)
        self.v = nn.Linear(config.n_embd, inner, bias=False)
        self.o = nn.Linear(inner, config.n_embd, bias=False)
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        enc_out: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); bias is the float mask added to the scores, (1 or B, nh or 1, T, keys)."""
        B, T, _ = x.shape
        q = self._heads(self.q(x))  # (B, nh, T, hs)
        k, v = self._keys_values(x, enc_out, input_pos, self.k, self.v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0, scale=1.0
        )  # (B, nh, T, hs); scale=1.0: T5 folds 1/sqrt(hs) into the init of q
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_size))  # (B, T, C)


class MLP(nn.Module):
    """relu: wo(relu(wi x)) (v1.0); gated-gelu: wo(gelu_tanh(wi_0 x) * wi_1 x) (v1.1)."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.gated = config.mlp == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
            self.wi_1 = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        else:
            self.wi = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x) if self.gated else F.relu(self.wi(x))
        return self.wo(self.dropout(h))  # (B, N, C)


class Block(nn.Module):
    """Pre-norm residual block: self-attention, (decoder only) cross-attention, MLP."""

    def __init__(self, config: T5Config, decoder: bool) -> None:
        super().__init__()
        self.ln_1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = Attention(config)
        if decoder:
            self.ln_cross = RMSNorm(config.n_embd, config.norm_eps)
            self.cross_attn = Attention(config, cross=True)
        self.ln_2 = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor,
        enc_out: torch.Tensor | None = None,
        cross_bias: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x), self_bias, input_pos=input_pos))
        if enc_out is not None:
            x = x + self.dropout(self.cross_attn(self.ln_cross(x), cross_bias, enc_out=enc_out))
        return x + self.dropout(self.mlp(self.ln_2(x)))


class Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention)."""

    def __init__(self, config: T5Config, decoder: bool) -> None:
        super().__init__()
        n_layer = config.n_decoder_layer if decoder else config.n_encoder_layer
        self.rel_bias = RelativePositionBias(config, bidirectional=not decoder)
        self.block = nn.ModuleList([Block(config, decoder) for _ in range(n_layer)])
        self.ln_f = RMSNorm(config.n_embd, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)


def key_padding_bias(enc_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | float:
    """(B, 1, 1, S) additive mask: 0 where enc_mask is True (a real token), -inf-ish where it is padding."""
    if enc_mask is None:
        return 0.0
    return torch.zeros(enc_mask.shape, dtype=dtype, device=enc_mask.device).masked_fill(
        ~enc_mask, torch.finfo(dtype).min
    )[:, None, None, :]


class T5(EncoderDecoder):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set; set it to the tokenizer's vocabulary size")
        self.config = config
        self.shared = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.encoder = Stack(config, decoder=False)
        self.decoder = Stack(config, decoder=True)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:  # T5 v1.0: one matrix for input embeddings and the output head
            self.lm_head.weight = self.shared.weight
        self.mask_cache: torch.Tensor | None = None  # (L, L) causal mask while a KV cache is set
        self.activation_checkpointing = False  # training: recompute each block's activations in backward
        self._init_weights()

    def _init_weights(self) -> None:
        """T5's (Mesh TensorFlow's) init: stds that keep activations O(1) without attention scaling."""
        f, c, hs, nh = self.config.init_factor, self.config.n_embd, self.config.head_size, self.config.n_head
        nn.init.normal_(self.shared.weight, std=f * 1.0)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=f * 1.0)
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
            std = {
                "q": (c * hs) ** -0.5,
                "k": c**-0.5,
                "v": c**-0.5,
                "o": (nh * hs) ** -0.5,
                "wi": c**-0.5,
                "wi_0": c**-0.5,
                "wi_1": c**-0.5,
                "wo": self.config.intermediate_size**-0.5,
                "relative_attention_bias": c**-0.5,
            }.get(leaf)
            if std is not None:
                nn.init.normal_(p, std=f * std)

    def encode(self, enc_idx: torch.Tensor, enc_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (B, S, C) for enc_idx (B, S); enc_mask (B, S) is True for real tokens, False for padding."""
        S = enc_idx.size(1)
        x = self.encoder.dropout(self.shared(enc_idx))  # (B, S, C)
        bias = self.encoder.rel_bias(torch.arange(S, device=enc_idx.device), S)  # (1, nh, S, S), both directions
        bias = bias + key_padding_bias(enc_mask, bias.dtype)  # (B, nh, S, S)
        for block in self.encoder.block:
            x = run_block(block, self.activation_checkpointing, x, bias)
        return self.encoder.dropout(self.encoder.ln_f(x))

    def decode(
        self,
        dec_idx: torch.Tensor,
        enc_out: torch.Tensor,
        enc_mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) for decoder inputs dec_idx (B, T) attending to enc_out (B, S, C).

        input_pos (T,): absolute decoder positions, required while a KV cache is set (see set_kv_cache).
        """
        T = dec_idx.size(1)
        if input_pos is None:
            if self.mask_cache is not None:
                raise ValueError("a KV cache is set: pass input_pos, or call clear_kv_cache() first")
            pos, keys = torch.arange(T, device=dec_idx.device), T
            causal = torch.ones(T, T, dtype=torch.bool, device=dec_idx.device).tril()  # (T, T)
        else:
            pos, keys, causal = input_pos, self.mask_cache.size(0), self.mask_cache.index_select(0, input_pos)
        x = self.decoder.dropout(self.shared(dec_idx))  # (B, T, C)
        bias = self.decoder.rel_bias(pos, keys)  # (1, nh, T, keys): from absolute positions, so right when cached
        bias = bias.masked_fill(~causal, torch.finfo(bias.dtype).min)  # (1, nh, T, keys): no looking ahead
        cross_bias = key_padding_bias(enc_mask, x.dtype)
        if not torch.is_tensor(cross_bias):
            cross_bias = torch.zeros(1, 1, 1, enc_out.size(1), dtype=x.dtype, device=x.device)
        for block in self.decoder.block:
            x = run_block(block, self.activation_checkpointing, x, bias, enc_out, cross_bias, input_pos)
        x = self.decoder.dropout(self.decoder.ln_f(x))
        if self.config.tie_embeddings:
            x = x * self.config.n_embd**-0.5  # the tied head sees rescaled states (Mesh TensorFlow)
        return self.lm_head(x)[..., : self.config.vocab_size]  # (B, T, V): padded ids are never predicted

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(block.attn, block.cross_attn) for block in self.decoder.block]

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once); non_embedding leaves out the input embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_embeddings:
            n -= self.shared.weight.numel()
        return n

    def flops_per_row(self, enc_len: int, dec_len: int) -> float:
        """Training FLOPs (forward + backward) of one row of enc_len encoder and dec_len decoder tokens
        (layers.encoder_decoder_flops: each stack with its own tokens)."""
        c = self.config
        cross_kv = sum(b.cross_attn.k.weight.numel() + b.cross_attn.v.weight.numel() for b in self.decoder.block)
        layers, inner = (c.n_encoder_layer, c.n_decoder_layer), c.n_head * c.head_size
        head = self.lm_head.weight.numel()
        return encoder_decoder_flops(self.encoder, self.decoder, cross_kv, head, layers, inner, enc_len, dec_len)

    def batch_flops(self, batch: dict[str, torch.Tensor]) -> float:
        """Training FLOPs of one forward + backward over `batch` (the loader's dict), from its shapes: padding
        included, as the device computes it."""
        (B, S), L = batch["enc_idx"].shape, batch["dec_idx"].shape[1]
        return B * self.flops_per_row(S, L)
