"""Weight-only int8 for decoding: every linear layer's weight as int8 with one scale per output channel.

Batch-1 decoding reads every weight once per token, so it runs at the speed memory delivers the weights: int8 reads
a quarter of float32's bytes. quantize_int8(model) replaces each nn.Linear (the output head included) with an
Int8Linear: w ~ scale[o] * q[o, i], q in [-127, 127], scale[o] = max_i |w[o, i]| / 127 (symmetric, per output
channel, as gpt-fast's and torchao's weight-only int8). The product runs in torch's int8 weight-only kernel
(aten._weight_int8pack_mm: bfloat16 activations, int8 weights) where the device has it, else through a bfloat16
copy of the dequantised weight. The rest of the model (embeddings, norms) is cast to bfloat16, the activations'
dtype. Inference only: an int8 model cannot be trained or saved as a checkpoint (quantize the float one again).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = torch.bfloat16


class Int8Linear(nn.Module):
    """y = x @ (scale * q).T + bias, with q (out, in) int8 and scale (out,) bfloat16; x is cast to bfloat16."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float().contiguous()  # (out, in), row-major (the int8 kernel's layout)
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0  # (out,)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(ACTIVATIONS))
        bias = linear.bias.detach().to(ACTIVATIONS) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features).to(ACTIVATIONS)  # (N, in)
        if x.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)  # (N, out)
        else:  # devices without the kernel: a dequantised copy per call (correct, not faster)
            y = F.linear(x, self.weight.to(ACTIVATIONS) * self.scales[:, None])
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_int8(model: nn.Module) -> nn.Module:
    """model (in place, and returned) with every nn.Linear an Int8Linear and everything else bfloat16, in eval mode.
    A tied output head keeps its embedding (a lookup reads one row per token) in bfloat16."""
    model.float()  # quantise from float32 whatever the model was loaded in
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return model.to(ACTIVATIONS).eval()  # embeddings, norms; int8 buffers keep their dtype (only floats are cast)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
