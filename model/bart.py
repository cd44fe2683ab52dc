"""BART: a denoising encoder-decoder (Lewis et al. 2019, "BART: Denoising Sequence-to-Sequence Pre-training").

BART's choices: post-norm residual blocks (LayerNorm after each residual sum), a LayerNorm on the embeddings, learned
absolute positions stored with an offset of 2 (position p reads row p + 2 of the table), GELU MLPs, biases
everywhere, attention scaled by hs^-0.5, one embedding shared by encoder, decoder and the output head, and a
per-id bias added to the logits (final_logits_bias: zero in bart-base, learned in some fine-tunes). Decoding starts
from </s> and Hugging Face's generation configs force <s> as the first generated token (forced_bos_token_id).
Module names are Hugging Face's (model/hf.py maps `model.` away), so checkpoints load by name.
Legend: B batch, S encoder (source) length, T decoder (target) length, C n_embd, nh heads, hs head size,
V vocabulary, L decoder KV-cache length.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import BartConfig
from model.kv_cache import EncoderDecoder, EncoderDecoderAttention
from model.layers import encoder_decoder_flops, run_block

POSITION_OFFSET = 2  # BART's position table starts 2 rows in (a fairseq legacy kept by every checkpoint)
ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


class Attention(EncoderDecoderAttention):
    """Multi-head attention with biases and hs^-0.5 scaling; self-attention, or cross-attention over enc_out."""

    def __init__(self, config: BartConfig, cross: bool = False) -> None:
        super().__init__(config.n_head, config.head_size, cross)
        C = config.n_embd
        self.q_proj, self.k_proj = nn.Linear(C, C), nn.Linear(C, C)
        self.v_proj, self.out_proj = nn.Linear(C, C), nn.Linear(C, C)
        self.dropout = config.attention_dropout  # of the attention probabilities

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        enc_out: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); mask: boolean (True = attend), broadcastable to (B, nh, T, keys), or None."""
        B, T, C = x.shape
        q = self._heads(self.q_proj(x))  # (B, nh, T, hs)
        k, v = self._keys_values(x, enc_out, input_pos, self.k_proj, self.v_proj)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs), scaled by hs^-0.5
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class Layer(nn.Module):
    """Post-norm block: x = LN(x + attn(x)); (decoder) x = LN(x + cross_attn(x)); x = LN(x + fc2(act(fc1(x))))."""

    def __init__(self, config: BartConfig, decoder: bool) -> None:
        super().__init__()
        C = config.n_embd
        self.self_attn = Attention(config)
        self.self_attn_layer_norm = nn.LayerNorm(C, eps=config.norm_eps)
        if decoder:
            self.encoder_attn = Attention(config, cross=True)
            self.encoder_attn_layer_norm = nn.LayerNorm(C, eps=config.norm_eps)
        self.fc1 = nn.Linear(C, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, C)
        self.final_layer_norm = nn.LayerNorm(C, eps=config.norm_eps)
        self.act = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        enc_out: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, mask, input_pos=input_pos)))
        if enc_out is not None:
            x = self.encoder_attn_layer_norm(x + self.dropout(self.encoder_attn(x, cross_mask, enc_out=enc_out)))
        return self.final_layer_norm(x + self.dropout(self.fc2(self.activation_dropout(self.act(self.fc1(x))))))


class Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention): positions, embedding norm, layers."""

    def __init__(self, config: BartConfig, decoder: bool) -> None:
        super().__init__()
        n_layer = config.n_decoder_layer if decoder else config.n_encoder_layer
        self.embed_positions = nn.Embedding(config.block_size + POSITION_OFFSET, config.n_embd)
        self.layernorm_embedding = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.layers = nn.ModuleList([Layer(config, decoder) for _ in range(n_layer)])
        self.dropout = nn.Dropout(config.dropout)


def padding_mask(enc_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, 1, 1, S) boolean attention mask over the keys of an encoder input (True = a real token), or None."""
    return enc_mask[:, None, None, :] if enc_mask is not None else None


class Bart(EncoderDecoder):
    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set; set it to the tokenizer's vocabulary size")
        self.config = config
        self.shared = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.encoder = Stack(config, decoder=False)
        self.decoder = Stack(config, decoder=True)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.shared.weight  # BART always ties them
        self.register_buffer("final_logits_bias", torch.zeros(1, config.padded_vocab_size))
        self.embed_scale = config.n_embd**0.5 if config.scale_embedding else 1.0
        self.mask_cache: torch.Tensor | None = None  # (L, L) causal mask while a KV cache is set
        self.decoder_positions = config.block_size  # learned positions: the decoder's cache refuses more
        self.activation_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        """BART's init: every weight normal(0, init_std), biases zero, LayerNorms one/zero."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=self.config.init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.config.pad_id is not None:
            with torch.no_grad():
                self.shared.weight[self.config.pad_id].zero_()  # the padding embedding, as nn.Embedding(padding_idx)

    def _embed(self, stack: Stack, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Token embeddings (scaled as configured) plus learned positions pos (T,), normalised: (B, T, C)."""
        x = self.shared(idx) * self.embed_scale + stack.embed_positions(pos + POSITION_OFFSET)
        return stack.dropout(stack.layernorm_embedding(x))

    def _check_length(self, n: int, what: str) -> None:
        if n > self.config.block_size:
            raise ValueError(
                f"{what} of {n} tokens is past BART's {self.config.block_size} learned positions "
                "(max_position_embeddings); shorten it"
            )

    def encode(self, enc_idx: torch.Tensor, enc_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (B, S, C) for enc_idx (B, S); enc_mask (B, S) is True for real tokens, False for padding."""
        self._check_length(enc_idx.size(1), "an encoder input")
        x = self._embed(self.encoder, enc_idx, torch.arange(enc_idx.size(1), device=enc_idx.device))
        mask = padding_mask(enc_mask)
        for layer in self.encoder.layers:
            x = run_block(layer, self.activation_checkpointing, x, mask)
        return x

    def decode(
        self,
        dec_idx: torch.Tensor,
        enc_out: torch.Tensor,
        enc_mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) for decoder inputs dec_idx (B, T) attending to enc_out (B, S, C).

        input_pos (T,): decoder positions, required while a KV cache is set (see set_kv_cache).
        """
        T = dec_idx.size(1)
        if input_pos is None:
            if self.mask_cache is not None:
                raise ValueError("a KV cache is set: pass input_pos, or call clear_kv_cache() first")
            self._check_length(T, "a decoder input")
            pos = torch.arange(T, device=dec_idx.device)
            causal = torch.ones(T, T, dtype=torch.bool, device=dec_idx.device).tril()  # (T, T)
        else:
            pos, causal = input_pos, self.mask_cache.index_select(0, input_pos)  # (T,), (T, L)
        x = self._embed(self.decoder, dec_idx, pos)
        cross_mask = padding_mask(enc_mask)
        for layer in self.decoder.layers:
            x = run_block(layer, self.activation_checkpointing, x, causal, enc_out, cross_mask, input_pos)
        logits = self.lm_head(x) + self.final_logits_bias.to(x.dtype)
        return logits[..., : self.config.vocab_size]  # (B, T, V)

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(layer.self_attn, layer.encoder_attn) for layer in self.decoder.layers]

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (the tied embedding counted once); non_embedding leaves out the position tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.encoder.embed_positions.weight.numel() + self.decoder.embed_positions.weight.numel()
        return n

    def batch_flops(self, batch: dict[str, torch.Tensor]) -> float:
        """Training FLOPs of one forward + backward over `batch`, from its shapes (layers.encoder_decoder_flops)."""
        (B, S), L = batch["enc_idx"].shape, batch["dec_idx"].shape[1]
        c = self.config
        cross_kv = sum(2 * layer.encoder_attn.k_proj.weight.numel() for layer in self.decoder.layers)
        layers, head = (c.n_encoder_layer, c.n_decoder_layer), self.lm_head.weight.numel()
        return B * encoder_decoder_flops(self.encoder, self.decoder, cross_kv, head, layers, c.n_embd, S, L)
