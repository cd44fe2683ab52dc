"""Shared pieces of the benchmarks in bench/: interleaved warm-up-then-median timing, machine facts, the JSON line.

Every benchmark prints human-readable lines first and one JSON object as its last stdout line, so
`python bench/<name>.py | tail -n 1` is machine-readable.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def time_interleaved(fns: list[Callable[[], object]], repeats: int, warmup: bool = True) -> list[list[float]]:
    """Seconds of `repeats` calls of every fn, after one untimed warm-up call of each (lazy init, kernel selection,
    compilation) unless warmup=False.

    The timed calls take turns (round r calls every fn once), so a burst of other work on the machine slows all
    of them alike instead of the one that happened to be running.
    """
    for fn in fns if warmup else []:
        fn()
    seconds: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, seconds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return seconds


def median(values: list[float]) -> float:
    """The median: robust to one run slowed down by other work on the machine."""
    return statistics.median(values)


def cpu_name() -> str | None:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_bf16_flags() -> list[str]:
    """The CPU features that make bf16 matmuls fast (avx512_bf16, amx_bf16), when /proc/cpuinfo lists them."""
    try:
        flags = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted({"avx512_bf16", "amx_bf16"} & set(flags))


def machine_info() -> dict[str, Any]:
    """Facts a benchmark number depends on: CPU, cores, torch threads, library versions."""
    return {
        "cpu": cpu_name(),
        "cpu_bf16": cpu_bf16_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def emit_json(result: dict[str, Any], out: str | Path | None = None) -> None:
    """Print result as the last stdout line (one JSON object); also write it, indented, to `out` if given."""
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    sys.stdout.flush()


def in_subprocess(module: str, call: str) -> dict[str, Any]:
    """Evaluate `<module>.<call>` in a fresh Python process (one the caller's settings never touched); its last
    stdout line is the JSON result."""
    root = Path(__file__).resolve().parents[1]
    code = f"import json, sys; sys.path.insert(0, {str(root)!r}); import {module} as b; print(json.dumps(b.{call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    if out.returncode != 0:
        raise SystemExit(f"error: the worker {call} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """This machine's memory read bandwidth in bytes/s: the best of `repeats` sums of a float32 array far larger than
    any cache, with torch's threads (the rate batch-1 decoding can read weights at: its roofline)."""
    a = torch.ones(megabytes * 2**20 // 4)
    a.sum()  # pages touched, threads started
    best = min(_seconds(a.sum) for _ in range(repeats))
    return a.numel() * 4 / best


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
