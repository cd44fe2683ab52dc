"""Building blocks the GPT and T5 models share: norms, MLP variants, rotary position embedding.

References: GPT-2 (LayerNorm, GELU-tanh), Zhang & Sennrich 2019 (RMSNorm), Shazeer 2020 (GLU variants),
So et al. 2021 (squared ReLU), Su et al. 2021 (RoPE).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's nn.LayerNorm cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm: no mean subtraction, no bias (Llama; T5's "layer norm")."""

    def __init__(self, ndim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)  # bf16 q, k (qk_norm): fused


def build_norm(kind: str, ndim: int, bias: bool, eps: float) -> nn.Module:
    """A norm layer by name: layernorm | rmsnorm."""
    return LayerNorm(ndim, bias=bias, eps=eps) if kind == "layernorm" else RMSNorm(ndim, eps=eps)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> hidden -> C with gelu (GPT-2, tanh approx.) or relu2 (squared ReLU)."""

    def __init__(self, n_embd: int, hidden: int, activation: str, bias: bool, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, hidden)
        h = F.gelu(h, approximate="tanh") if self.activation == "gelu" else F.relu(h).square()
        return self.dropout(self.c_proj(h))  # (B, T, C)


class SwiGLU(nn.Module):
    """Gated MLP: c_proj(silu(c_fc(x)) * c_gate(x)) (Shazeer 2020; Llama)."""

    def __init__(self, n_embd: int, hidden: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_gate = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.silu(self.c_fc(x)) * self.c_gate(x)))


def build_mlp(kind: str, n_embd: int, hidden: int, bias: bool, dropout: float) -> nn.Module:
    """An MLP by name: gelu | relu2 | swiglu."""
    if kind == "swiglu":
        return SwiGLU(n_embd, hidden, bias, dropout)
    return MLP(n_embd, hidden, kind, bias, dropout)


def rope_cache(seq_len: int, head_size: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    """Rotary angles as a (seq_len, head_size // 2, 2) tensor of (cos, sin), computed in fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, device=device, dtype=torch.float32) / head_size))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)  # (T, hs/2, 2)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :hs/2], x[..., hs/2:]) of x (B, nh, T, hs) by angles rope (T, hs/2, 2) or, per row,
    (B, 1, T, hs/2, 2)."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs/2) each: the "rotate half" layout of GPT-NeoX/Llama
    cos, sin = rope[..., 0], rope[..., 1]  # (T, hs/2)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (B, nh, T, hs)
    return out.type_as(x)


# Logits per chunk of the fused head + cross-entropy, by device. Each chunk reads and writes the weight
# gradient once (512-row chunks of GPT-2's vocabulary did that 24 times per GPT-2-small micro-step), so a GPU takes
# few large chunks (1 GB of fp32 logits). On a CPU the chunk size barely matters between 128 and 2,048 rows of
# GPT-2's vocabulary (forward + backward of 2,048 rows x 256 wide within run-to-run noise, 64 rows 30% slower):
# 128 MB of logits keeps the memory of the old 512-row chunks.
LOGITS_PER_CHUNK = {"cpu": 1 << 25, "cuda": 1 << 28}  # other devices: the GPU size

# Up to this many chunks LinearCrossEntropy sums the weight's gradient in the matmul dtype even when that is bf16:
# the error grows about as the square root of the chunks, to 1.39x autocast's unfused head's at 8 chunks (2.36x at
# 32). More chunks come with a micro-batch whose activations dwarf an fp32 sum's memory, so they get one.
LOW_PRECISION_SUM_CHUNKS = 8


def ce_chunk_rows(vocab_size: int, device: torch.device, rows: int | None = None) -> int:
    """Rows of h per chunk of linear_cross_entropy for this (padded) vocabulary on this device: a multiple of 64,
    at least 64. Given the number of rows, the chunks are made as equal as multiples of 64 allow (2,048 rows of
    GPT-2's vocabulary on a CPU: 4 x 512, not 3 x 640 + 128): as many chunks, each as fast as the others."""
    budget = LOGITS_PER_CHUNK.get(device.type, LOGITS_PER_CHUNK["cuda"])
    most = max(64, budget // vocab_size // 64 * 64)
    if rows is None or rows <= 0:
        return most
    per = -(-rows // -(-rows // most))  # ceil(rows / number of chunks)
    return min(most, -(-per // 64) * 64)


def _chunk_in_place(
    hc: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of rows hc (n, C) against w (V', C) (both in the matmul dtype), eagerly: (summed loss, d/dhc (n, C),
    d/dlogits (n, V') in hc's dtype; the caller takes the weight's gradient from it). One exp over the chunk, in place
    of its fp32 logits, for both the loss and its gradient (logsumexp and then exp(logits - lse) would take two
    passes)."""
    ok = targets != -1
    tc = targets.clamp(min=0)
    logits = padded_logits(hc, w, vocab_size)  # (n, V') fp32, padded columns -inf
    picked = logits.gather(1, tc[:, None]).squeeze(1)  # (n,)
    top = logits.amax(dim=-1)  # (n,): e = exp(logits - max), lse = max + log(sum e)
    e = torch.exp_(logits.sub_(top[:, None]))
    total = e.sum(dim=-1)  # (n,)
    loss = ((top + torch.log(total) - picked) * ok).sum()
    # softmax - onehot (0 in the padded columns); an ignored row is divided by +inf and its one-hot weight is 0, so
    # its gradient is 0 without another pass over the chunk
    grad = e.div_(torch.where(ok, total, float("inf"))[:, None])
    grad[torch.arange(grad.size(0), device=grad.device), tc] -= ok.to(grad.dtype)
    grad = grad.to(hc.dtype)  # (n, V'): d(sum of losses)/d logits
    del logits, e  # a bf16 grad is a copy: the fp32 chunk is not kept through the matmul
    return loss, grad @ w, grad


def _chunk_fused(
    hc: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """_chunk_in_place's results, written for torch.compile: no in-place op, so inductor makes the max, the sum of
    exps and the gradient two reductions and one pointwise pass over the matmul's (bf16) logits, and never
    materialises them in fp32 (compiled, the in-place version wrote two fp32 copies of every chunk)."""
    col = torch.arange(w.size(0), device=hc.device)
    logits = torch.where(col < vocab_size, (hc @ w.t()).float(), float("-inf"))  # (n, V'), padding -inf
    ok = targets != -1
    tc = targets.clamp(min=0)
    top = logits.amax(dim=-1, keepdim=True)  # (n, 1)
    total = torch.exp(logits - top).sum(dim=-1, keepdim=True)  # (n, 1)
    picked = logits.gather(1, tc[:, None])  # (n, 1)
    loss = ((top + torch.log(total) - picked).squeeze(1) * ok).sum()
    scale = torch.where(ok[:, None], 1.0 / total, 0.0)  # an ignored row: no gradient
    onehot = (col == tc[:, None]) & ok[:, None]
    grad = (torch.exp(logits - top) * scale - onehot.float()).to(hc.dtype)  # (n, V'): softmax - onehot
    return loss, grad @ w, grad


@functools.cache
def _compiled_chunk() -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """_chunk_fused under torch.compile (default backend): compiled for the first chunk shape, then once with
    dynamic shapes (torch's automatic dynamic), so batches of varying length do not recompile it every time."""
    return torch.compile(_chunk_fused)


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits = h @ weight.T over the first vocab_size ids against targets, without the
    (N, V) logits ever existing.

    The rows go through in chunks: each chunk's logits give its loss and, at once, its gradients (softmax - onehot
    for the logits, then for h and for the weight), so only one chunk of logits lives at a time and backward has
    nothing left to compute but a scale. The same three matmuls as the plain head + F.cross_entropy (the
    "fused linear cross-entropy" of Liger-Kernel/Cut Cross-Entropy, in plain PyTorch). The matmuls run on the whole
    padded weight (a vocabulary padded to a multiple of 64 is what makes them fast; 50257 columns is not) and the
    padded columns are masked out of the softmax, so they get no probability and no gradient. Targets -1 are
    ignored. The matmuls run in autocast's dtype when it is on (the weight cast once, not per chunk), else in h's.
    The weight's gradient is accumulated in that dtype by the matmul itself (addmm_ over the chunks: no product per
    chunk and no fp32 copy beside the forward's activations: 77 MB less at the peak of gpt-mini's step), then
    scaled in fp32 and given the weight's dtype in backward. Against fp64 a bf16 sum's error is autocast's unfused
    head's (whose product is rounded to bf16 once) times 1.07, 1.18, 1.39 at 2, 4, 8 chunks (Liger-Kernel's fused
    loss likewise sums in the weights' bf16); past LOW_PRECISION_SUM_CHUNKS chunks, and always in fp16 (largest
    value 65,504: a sum over many rows could overflow it), each chunk's product is added to an fp32 sum instead.
    compiled (the model is under torch.compile): each chunk is one compiled graph of _chunk_fused, else eager.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size: int, chunk_rows: int, compiled: bool):  # h (N, C), weight (V', C)
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        w = weight.to(dtype)
        chunk = _compiled_chunk() if compiled else _chunk_in_place
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h)
        chunks = -(-h.size(0) // chunk_rows)
        low = dtype != torch.float16 and chunks <= LOW_PRECISION_SUM_CHUNKS
        grad_w = torch.zeros_like(w, dtype=dtype if low else torch.float32)
        with torch.autocast(device, enabled=False):  # the dtypes are chosen above
            for start in range(0, h.size(0), chunk_rows):
                rows = slice(start, start + chunk_rows)
                hc = h[rows].to(dtype)
                part, grad_h[rows], grad_logits = chunk(hc, w, targets[rows], vocab_size)
                loss += part
                if grad_w.dtype == dtype:
                    grad_w.addmm_(grad_logits.t(), hc)  # (V', C)
                else:
                    grad_w += grad_logits.t() @ hc
                del grad_logits  # before the next chunk's logits
        count = (targets != -1).sum().clamp(min=1)
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.weight_dtype = weight.dtype
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_loss / count
        # scaled in fp32 (a copy: the saved sum stays as it is for another backward), then the weight's dtype
        grad_weight = grad_w.to(torch.float32, copy=True).mul_(scale).to(ctx.weight_dtype)
        return grad_h * scale.to(grad_h.dtype), grad_weight, None, None, None, None


@torch.compiler.disable
def _chunked(h, weight, targets, vocab_size: int, chunk_rows: int, compiled: bool) -> torch.Tensor:
    """LinearCrossEntropy outside the model's compiled graph (a graph break, so a model compiled with
    fullgraph=True stops here): compiled whole, inductor scheduled every chunk's logits before consuming the first,
    which made the loss the peak of the compiled gpt-mini step's memory; here the chunks run one after another,
    each its own graph compiled with torch.compile's default backend."""
    return LinearCrossEntropy.apply(h, weight, targets, vocab_size, chunk_rows, compiled)


def padded_logits(h: torch.Tensor, weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """h @ weight.T in fp32, with the columns of ids >= vocab_size (the padding) at -inf."""
    logits = (h @ weight.t()).float()
    if weight.size(0) > vocab_size:
        logits[:, vocab_size:] = float("-inf")
    return logits


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int, chunk_rows: int | None = None
) -> torch.Tensor:
    """F.cross_entropy(h @ weight[:vocab_size].T, targets, ignore_index=-1) in chunks of chunk_rows rows of h
    (ce_chunk_rows of the device and the padded vocabulary unless given)."""
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    chunk_rows = chunk_rows or ce_chunk_rows(weight.size(0), h.device, h.size(0))
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _chunked(h, weight, targets, vocab_size, chunk_rows, torch.compiler.is_compiling())
    total = torch.zeros((), dtype=torch.float32, device=h.device)  # evaluation: the losses alone
    for start in range(0, h.size(0), chunk_rows):
        logits = padded_logits(h[start : start + chunk_rows], weight, vocab_size)  # (n, V')
        total += F.cross_entropy(logits, targets[start : start + chunk_rows], ignore_index=-1, reduction="sum")
    return total / (targets != -1).sum().clamp(min=1)


def run_block(block: nn.Module, checkpointed: bool, *args: object) -> torch.Tensor:
    """block(*args), or under activation checkpointing: its activations are recomputed in backward instead of
    kept (less memory, about one more forward pass of compute); the RNG is replayed, so dropout is identical."""
    if checkpointed and block.training and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def matmul_params(module: nn.Module) -> int:
    """The weights of module's linear layers: the parameters a token's forward multiplies (not lookups, norms)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def encoder_decoder_flops(
    encoder: nn.Module,
    decoder: nn.Module,
    cross_kv: int,
    head: int,
    layers: tuple[int, int],
    inner: int,
    S: int,
    L: int,
) -> float:
    """Training FLOPs (forward + backward) of one encoder-decoder row of S encoder and L decoder tokens: 6 x each
    matmul weight x the tokens it multiplies, plus attention's 12 x inner width x queries x keys per layer.

    Encoder tokens pass the encoder and the decoder's cross-attention keys and values (cross_kv weights, computed
    from the encoder output); decoder tokens pass the rest of the decoder and the output head (head weights).
    layers: (encoder layers, decoder layers).
    """
    enc = matmul_params(encoder) + cross_kv
    dec = matmul_params(decoder) - cross_kv + head
    attention = 12 * inner * (layers[0] * S * S + layers[1] * L * (L + S))
    return 6 * (enc * S + dec * L) + attention
