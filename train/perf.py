"""What training speed depends on and is measured against: trainer.compile=auto, the allocator setting for CPU
training, and the peak FLOP/s that MFU divides by (a GPU's datasheet figure, else a measured matmul peak, cached per
device, dtype and GPU model). Which device and dtype a run uses is nanoloom/device.py's business."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nanoloom.files import write_text_atomic
from train.log import warn

# the matmul cube the CPU peak is measured with: 1024, 2048 and 4096-cube bf16 matmuls measured 433, 417 and 396
# GFLOP/s on a 2-core Zen 4 (fp32: about 190), so the smallest, quickest one
PEAK_MATMUL_SIZE = 1024
STEADY_SPREAD = 0.1  # a measurement is steady when its two best runs are within 10% of each other

# Datasheet dense bf16 peaks (FLOP/s) for MFU on common GPUs, keyed by the words of torch.cuda.get_device_name()
# ("NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 4090"); the entry with most words that all appear
# among the name's words wins, so "L4" never matches an L40S and "H100" is the SXM part only when no variant matches.
# Others are measured like CPUs.
GPU_PEAK_BF16 = {
    ("H100", "PCIE"): 756e12, ("H100", "NVL"): 835e12, ("H100",): 989e12, ("H200",): 989e12, ("A100",): 312e12,
    ("A10",): 125e12, ("A10G",): 70e12, ("L4",): 121e12, ("L40",): 181e12, ("L40S",): 362e12, ("4090",): 165e12,
}  # fmt: skip


def gpu_datasheet_peak(name: str) -> float | None:
    """The datasheet dense bf16 peak of a GPU by its device name, or None for a GPU not in GPU_PEAK_BF16."""
    words = set(re.split(r"[^A-Z0-9]+", name.upper()))
    found = [key for key in GPU_PEAK_BF16 if set(key) <= words]
    return GPU_PEAK_BF16[max(found, key=len)] if found else None


def maybe_keep_freed_memory(enabled: bool, device: torch.device) -> bool:
    """trainer.keep_freed_memory: glibc's setting for CPU training only (a GPU step's buffers live on the GPU, and the
    host would only keep more memory); True if it was set."""
    return enabled and device.type == "cpu" and keep_freed_memory()


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process; True if it was set (glibc), False elsewhere (macOS, musl).

    By default glibc serves allocations above a threshold (128 KiB, growing adaptively) with mmap and returns them
    to the OS on free, and trims the heap top. A training step frees and reallocates the same large activation
    buffers every time, so every step page-faults them back in: on CPU a large share of the step was system time.
    A 1 GiB mmap threshold and no trimming keep those pages mapped and reused (the "keep freed memory" setting of
    jemalloc or tcmalloc, through glibc's own mallopt). Peak RSS grows a little, step time drops (README).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


COMPILE_MIN_STEPS = 200  # compile=auto on CPU: compiling costs ~25 s and makes each step ~1.3x faster (README)


def use_compile(setting: bool | None, device: torch.device, max_steps: int) -> bool:
    """trainer.compile: an explicit true/false, or None (auto): always on CUDA; on CPU when the run is long enough
    for the faster steps to repay the compile time (measured on the demo and GPT-mini: 1.3x per step, ~25 s)."""
    if setting is not None:
        return setting
    if device.type == "cuda":
        return True
    return device.type == "cpu" and max_steps >= COMPILE_MIN_STEPS


def peak_flops(device: torch.device, dtype: torch.dtype, cache_dir: str | Path, remeasure: bool = False) -> float:
    """Peak matmul FLOP/s of this device in this dtype: datasheet for known GPUs, else measured and cached.

    A measurement is cached only when it was steady (measure_peak: the machine looked idle); a disturbed one serves
    this run and is measured again next time. remeasure=True (an MFU above 100% showed the cached value too low):
    measure again and keep the higher of the two, cached when steady."""
    where = device.type
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        flops = gpu_datasheet_peak(name)
        if flops is not None:
            return flops if dtype != torch.float32 else flops / 2  # TF32 runs at about half the bf16 rate
        where = f"cuda:{name}"  # a measured GPU peak belongs to that GPU model
    cache = Path(cache_dir) / "peak_flops.json"
    key = f"{where}:{dtype}:{torch.get_num_threads()}threads"
    table = _read_peak_cache(cache)
    value = table.get(key)
    valid = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    if valid and not remeasure:
        return float(value)
    measured, steady = measure_peak(device, dtype)
    best = max(measured, float(value)) if valid else measured
    if steady and best > (float(value) if valid else 0.0):
        table[key] = best
        try:  # atomic: a crash or a second run writing at the same time never leaves a torn file
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache, json.dumps(table, indent=2))
        except OSError as e:
            warn(f"cannot write the peak FLOP/s cache {cache} ({e.strerror or e}); it is measured again next time")
    return best


def measure_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, bool]:
    """(peak FLOP/s, steady): the best of several timed matmuls, and whether the machine looked idle while they ran
    (the two best runs agree within STEADY_SPREAD and the load average is below the number of cores). A GPU's
    CUDA-event measurement counts as steady."""
    if device.type == "cuda":
        return measure_cuda_flops(device, dtype), True
    speeds = sorted(matmul_speeds(device, dtype))
    best = speeds[-1]
    agree = len(speeds) >= 2 and speeds[-2] >= (1 - STEADY_SPREAD) * best
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return best, agree and load < (os.cpu_count() or 1)


def _read_peak_cache(cache: Path) -> dict[str, object]:
    """The measured peaks cached in cache_dir; {} when there is none, or (one warning) when it is unreadable or torn,
    so that the peak is measured again and the file rewritten whole."""
    if not cache.exists():
        return {}
    try:
        table = json.loads(cache.read_text(encoding="utf-8"))
        if not isinstance(table, dict):
            raise ValueError(f"a JSON {type(table).__name__}, not an object")
    except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 decoding errors
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        warn(f"ignoring the damaged peak FLOP/s cache {cache} ({reason}); measuring the peak again and rewriting it")
        return {}
    return table


def matmul_speeds(
    device: torch.device, dtype: torch.dtype, n: int = PEAK_MATMUL_SIZE, seconds: float = 0.5, min_runs: int = 3
) -> list[float]:
    """FLOP/s of each timed n x n x n matmul in `dtype` over about `seconds` (at least min_runs, after one untimed
    warm-up)."""
    gen = torch.Generator(device=device).manual_seed(0)  # private: measuring must not move the training RNG
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    (a @ b).sum().item()  # warm-up: allocation, kernel selection
    speeds: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(speeds) < min_runs:
        t0 = time.perf_counter()
        (a @ b).sum().item()  # .item() waits for the device
        speeds.append(2 * n**3 / (time.perf_counter() - t0))
    return speeds


def measure_cuda_flops(device: torch.device, dtype: torch.dtype, n: int = 8192, iters: int = 20) -> float:
    """FLOP/s of back-to-back n x n x n matmuls on a GPU, timed with CUDA events (one sync at the end): a small
    matmul with a host sync per call measures launch latency, not the tensor cores."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):  # warm-up: kernel selection, clocks
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    end.synchronize()
    return 2 * n**3 * iters / (start.elapsed_time(end) / 1000)


# Where a step's time goes (time_breakdown): an op's own time by what it is. Ops run inside the optimizer's step
# or zero_grad count as the optimizer's, whatever they are (Muon's matmuls included).
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_weight_int8pack_mm"}


def _kind(event) -> str:  # a torch.profiler FunctionEvent
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer."):  # Optimizer.step#AdamW.step, Optimizer.zero_grad#AdamW.zero_grad
            return "optimizer"
        parent = parent.cpu_parent
    if event.name in MATMUL_OPS:
        return "matmul"
    if "attention" in event.name:  # aten::_scaled_dot_product_flash_attention_for_cpu and its backward
        return "attention"
    if "CompiledFxGraph" in event.name:  # torch.compile's generated kernels, run inside the graph's call
        return "compiled kernels"
    return "other"


def time_breakdown(step: Callable[[], object], steps: int = 3) -> dict[str, float]:
    """Shares of `steps` calls of step's time by kind (matmul, attention, compiled kernels, optimizer, other),
    from the self time of every op torch.profiler records on the host (a GPU's kernels are not in it)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = {}
    for event in prof.events():
        kind = _kind(event)
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total
    total = sum(totals.values()) or 1.0
    return {kind: totals[kind] / total for kind in sorted(totals, key=totals.get, reverse=True)}
