"""Whether a CUDA GPU runs bf16 at full speed: the one test behind trainer.dtype=auto and generation's autocast.

torch.cuda.is_bf16_supported() answers True on pre-Ampere GPUs too (T4, V100: its default counts emulation), where
bf16 has no tensor-core kernels and attention falls back to the slow math kernel. bf16 is chosen on compute
capability 8.0 and newer only; older GPUs train in fp16 with a grad scaler, and generate in fp32.
"""

from __future__ import annotations

import torch

BF16_CAPABILITY = (8, 0)  # Ampere (A100, RTX 30xx) and newer: bf16 tensor cores


def cuda_has_fast_bf16(device: torch.device | int | None = None) -> bool:
    """True when the CUDA device (default: the current one) has native bf16 tensor cores."""
    return tuple(torch.cuda.get_device_capability(device)) >= BF16_CAPABILITY


def inference_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype to load a model in for generation on device: bf16 on a CUDA GPU with native bf16 (the weights
    are cast once, instead of autocast re-casting every weight at every token), else None (as stored: fp32; on a
    CPU torch's bf16 matrix-vector products read weights at about half the fp32 rate)."""
    device = torch.device(device)
    return torch.bfloat16 if device.type == "cuda" and cuda_has_fast_bf16(device) else None
