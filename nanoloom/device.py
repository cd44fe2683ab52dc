"""Devices and dtypes, one rule each: which device "auto" means, which dtype "auto" means there, the autocast context,
and the dtype a model is loaded in for generation.

device=auto picks cuda > mps > cpu. dtype=auto picks bf16 autocast where the hardware has fast bf16 (CUDA compute
capability 8.0+, CPUs with AVX512-BF16 or AMX), fp16 with a grad scaler on older CUDA GPUs, and fp32 elsewhere;
weights and optimizer state stay fp32 (mixed precision). torch.cuda.is_bf16_supported() answers True on pre-Ampere
GPUs too (T4, V100: its default counts emulation), where bf16 has no tensor-core kernels and attention falls back to
the slow math kernel, so the capability is what decides.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """A torch.device from a name; "auto" (or None) picks cuda > mps > cpu."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {str(device)!r} ({e}); use auto, cpu, cuda, cuda:<n> or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device=auto or device=cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r} but MPS is not available here; use device=auto or device=cpu")
    return resolved


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


def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs whose flags include AVX512-BF16 or AMX-BF16 (native bf16 dot products)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for trainer.dtype on this device (float32 = no autocast)."""
    if name != "auto":
        dtype = getattr(torch, name)
        if dtype == torch.float16 and device.type == "cpu":
            raise ValueError("trainer.dtype=float16 is not supported on CPU; use bfloat16 or float32")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_fast_bf16(device) else torch.float16  # pre-Ampere: fp16 + grad scaler
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast for the forward pass, or a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
