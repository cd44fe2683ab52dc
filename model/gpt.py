"""GPT: a decoder-only transformer language model, GPT-2 by default, modern variants by config flag.

GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm blocks, GELU-tanh MLP, tied embeddings, and GPT-2's
parameter names (wte wpe h ln_1 attn.c_attn ...), so GPT-2 weights map one to one. Flags switch to RMSNorm, RoPE,
SwiGLU/ReLU^2, grouped-query attention and QK-norm. Generation state is an explicit per-layer KVCache (litgpt).
Legend: B batch, T sequence length, C n_embd, nh query heads, nkv key/value heads, hs head size, V vocabulary,
L kv-cache length.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import GPTConfig
from model.kv_cache import KVCache
from model.layers import RMSNorm, apply_rope, build_mlp, build_norm, linear_cross_entropy, rope_cache, run_block


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, config.head_size
        # one fused projection for q, k and v (k/v narrower under GQA/MQA)
        qkv_dim = (config.n_head + 2 * config.n_kv_head) * config.head_size
        self.c_attn = nn.Linear(config.n_embd, qkv_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.q_norm = RMSNorm(config.head_size, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_size, config.norm_eps) if config.qk_norm else None
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kv_cache: KVCache | None = None

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor | None, mask: torch.Tensor | None, input_pos: torch.Tensor | None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([self.n_head * self.head_size, *[self.n_kv_head * self.head_size] * 2], dim=2)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache(input_pos, k, v)  # (B, nkv, L, hs): everything cached so far, zeros after
        # Training and uncached calls: SDPA's is_causal path (flash kernel on GPU). Cached calls: an explicit
        # boolean mask (T, L) of the positions each query may see; its rows are selected by input_pos, so a
        # single-token decode attends to [0, pos] and never to the unwritten tail (SDPA's is_causal is top-left
        # aligned and would be wrong for q_len != k_len, pytorch/pytorch#108108).
        # torch's CPU flash-attention backward in bf16 is about 4x slower than in fp32 at head sizes below 64
        # (torch 2.13, AVX-512): there attention runs in fp32, which is faster and at least as precise.
        slow_bf16 = (
            q.device.type == "cpu"
            and self.head_size < 64
            and (
                q.dtype == torch.bfloat16
                or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            )
        )
        with torch.autocast("cpu", enabled=False) if slow_bf16 else contextlib.nullcontext():
            dtype = q.dtype  # the output goes back to it (bf16 weights without autocast need bf16 inputs)
            if slow_bf16:
                q, k, v = q.float(), k.float(), v.float()
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=mask is None,
                enable_gqa=self.n_kv_head != self.n_head,
            )  # (B, nh, T, hs)
            y = y.to(dtype) if slow_bf16 else y
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = build_norm(config.norm, config.n_embd, config.bias, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = build_norm(config.norm, config.n_embd, config.bias, config.norm_eps)
        self.mlp = build_mlp(config.mlp, config.n_embd, config.intermediate_size, config.bias, config.dropout)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor | None, mask: torch.Tensor | None, input_pos: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, mask, input_pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set; set it to the tokenizer's vocabulary size")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None,
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=build_norm(config.norm, config.n_embd, config.bias, config.norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            # weight tying (Press & Wolf 2017), as GPT-2: the output head reuses the token embedding matrix
            self.transformer.wte.weight = self.lm_head.weight
        if config.pos == "rope":
            self.register_buffer("rope", rope_cache(config.block_size, config.head_size, config.rope_base), False)
        else:
            self.rope = None
        self.mask_cache: torch.Tensor | None = None  # (L, L) causal mask, only while a KV cache is set
        self.activation_checkpointing = False  # training: recompute each block's activations in backward
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections that write into the residual stream by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        left_pad: torch.Tensor | None = None,
        return_logits: bool = True,
        logits_to_keep: int = 0,
        doc_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for every position, and the mean cross-entropy when targets are given.

        Args:
            idx: (B, T) token ids.
            targets: (B, T) next-token ids; -1 marks positions to ignore.
            input_pos: (T,) KV-cache slots of idx; required while a KV cache is set (see set_kv_cache). Without
                left_pad they are also the positions.
            left_pad: (B,) cached generation of prompts of different lengths: row b's first left_pad[b] slots are
                padding, never attended to, and its position at slot s is s - left_pad[b], so a padded row computes
                what it would alone.
            return_logits: False (with targets): the loss is computed chunk by chunk without the (B, T, V) logits
                (model.layers.linear_cross_entropy; training does this) and logits is None.
            logits_to_keep: n > 0: logits of the last n positions only (B, n, V), as transformers' argument of that
                name; generation's prefill needs the last one and skips the output head's matmul for the rest.
            doc_ids: (B, T) packed rows (no KV cache): which document each position belongs to, documents
                contiguous. A token attends only to the earlier tokens of its document, and positions restart at 0
                with each document, so a packed document computes what it would alone (document masking).
        Returns:
            (logits (B, T, V) over the real vocabulary or None, loss or None).
        """
        B, T = idx.shape
        if logits_to_keep and targets is not None:
            raise ValueError("logits_to_keep is for inference: the loss needs the logits of every position")
        if input_pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than model.block_size={self.config.block_size}")
            if self.mask_cache is not None:
                raise ValueError("a KV cache is set: pass input_pos, or call clear_kv_cache() first")
            pos = torch.arange(T, device=idx.device)
            mask = None
            if doc_ids is not None:
                pos, mask = _documents(doc_ids)  # (B, T), (B, 1, T, T)
        else:
            pos = input_pos
            mask = self.mask_cache.index_select(0, input_pos) if self.mask_cache is not None else None  # (T, L)
            if left_pad is not None:
                pos, mask = self._padded(input_pos, left_pad, mask)  # (B, T), (B, 1, T, L)
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(pos)  # (T, C) broadcast over B, or (B, T, C)
        rope = None
        if self.rope is not None:  # (T, hs/2, 2), or (B, 1, T, hs/2, 2) for per-row positions
            rope = self.rope.index_select(0, pos) if pos.dim() == 1 else self.rope[pos].unsqueeze(1)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = run_block(block, self.activation_checkpointing, x, rope, mask, input_pos)
        x = self.transformer.ln_f(x)
        if targets is not None and not return_logits and self.lm_head.weight.is_floating_point():  # (not int8)
            return None, linear_cross_entropy(x, self.lm_head.weight, targets, self.config.vocab_size)
        if logits_to_keep > 0:
            x = x[:, -logits_to_keep:]  # (B, n, C)
        logits = self.lm_head(x)  # (B, T or n, padded V)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # (B, T, V): padded ids are never predicted
        loss = None
        if targets is not None:
            # cross_entropy upcasts to fp32 under autocast; mean over the non-ignored tokens
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _padded(
        self, input_pos: torch.Tensor, left_pad: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row positions (B, T) and attention mask (B, 1, T, L) of left-padded rows under a KV cache."""
        if mask is None:
            raise ValueError("left_pad needs a KV cache: call set_kv_cache() first")
        slots = torch.arange(mask.size(-1), device=mask.device)  # (L,)
        real = slots[None, :] >= left_pad[:, None]  # (B, L): keys that are not padding
        # a padding query sees itself only (a softmax over no keys would be NaN); real queries never see padding
        own = slots[None, None, :] == input_pos[None, :, None]  # (1, T, L)
        mask = mask[None] & (real[:, None, :] | own)  # (B, T, L)
        pos = (input_pos[None, :] - left_pad[:, None]).clamp(min=0)  # (B, T)
        return pos, mask[:, None]

    def _apply(self, fn, recurse=True):  # noqa: ANN001 (nn.Module's signature): .to(), .half(), .cuda() ...
        """nn.Module._apply, with the RoPE table kept in fp32 when the weights are cast (a bf16 model for
        inference): its angles are applied in fp32, as under training's autocast (recomputed, not cast back)."""
        super()._apply(fn, recurse)
        if self.rope is not None and self.rope.dtype != torch.float32 and self.rope.device.type != "meta":
            c = self.config
            self.rope = rope_cache(c.block_size, c.head_size, c.rope_base, device=self.rope.device)
        return self

    def set_kv_cache(
        self,
        batch_size: int,
        max_seq_len: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Preallocate a KV cache in every layer for batch_size rows of up to max_seq_len (default block_size)."""
        max_seq_len = max_seq_len or self.config.block_size
        if max_seq_len > self.config.block_size:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds model.block_size={self.config.block_size}")
        weight = self.transformer.wte.weight  # the activations' dtype (an int8 head's weight is not: model.quant)
        device, dtype = device or weight.device, dtype or weight.dtype
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(
                batch_size, self.config.n_kv_head, max_seq_len, self.config.head_size, device, dtype
            )
        self.mask_cache = torch.ones(max_seq_len, max_seq_len, dtype=torch.bool, device=device).tril()  # (L, L)

    def clear_kv_cache(self) -> None:
        """Drop the KV cache of every layer."""
        for block in self.transformer.h:
            block.attn.kv_cache = None
        self.mask_cache = None

    def reorder_cache(self, rows: torch.Tensor) -> None:
        """Keep KV-cache rows `rows` (B',) in that order: beam search follows the surviving hypotheses."""
        for block in self.transformer.h:
            cache = block.attn.kv_cache
            cache.k, cache.v = cache.k.index_select(0, rows), cache.v.index_select(0, rows)  # (B', nkv, L, hs)

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None
    ) -> torch.Tensor:
        """nanoGPT's generate: idx (B, T) followed by max_new_tokens sampled tokens, (B, T + max_new_tokens).

        Samples from softmax(logits / temperature) cropped to the top_k tokens (None: all; temperature 0: greedy)
        with torch's global RNG, never stopping early. For users who copy nanoGPT code; it runs nanoloom's
        generation core (sample.generate.generate_tokens: KV cache, windows sliding past block_size), where every
        other decoding control lives.
        """
        from sample.generate import generate_tokens  # the one generation core; sample imports model, not back

        # no eos_token_id: at this level no id ends a row (the tokenizer's end-of-text is the pipeline's default)
        tokens = generate_tokens(self, idx, max_new_tokens, do_sample=True, temperature=temperature, top_k=top_k)
        return torch.cat([idx, *(t[:, None] for t in tokens)], dim=1)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once); non_embedding leaves out position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.transformer.wpe is not None:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token: 6N + 12 * n_layer * C * T (PaLM appendix B)."""
        T = seq_len or self.config.block_size
        n = self.num_params(non_embedding=True)
        if not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()  # an untied input embedding is a lookup, not a matmul
        return 6 * n + 12 * self.config.n_layer * self.config.n_embd * T

    def batch_flops(self, batch: dict[str, torch.Tensor]) -> float:
        """Training FLOPs of one forward + backward over `batch` (the loader's dict), from its shape (B, T)."""
        B, T = batch["idx"].shape
        return B * T * self.flops_per_token(T)


def _documents(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row positions (B, T), restarting at each document's first token, and the attention mask (B, 1, T, T) of
    packed rows: causal, within a document. doc_ids (B, T): contiguous runs of one id per document."""
    B, T = doc_ids.shape
    steps = torch.arange(T, device=doc_ids.device)
    first = torch.ones_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]  # (B, T): a document starts here
    start = torch.cummax(torch.where(first, steps, 0), dim=1).values  # (B, T): where each position's document starts
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    mask = causal & (doc_ids[:, :, None] == doc_ids[:, None, :])  # (B, T, T)
    return steps - start, mask[:, None]
