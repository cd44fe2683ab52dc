"""`python -m train ... dry_run=true`: what a run will cost, measured, before it is started.

Builds exactly what the run would (data prepared into the cache as usual, model, optimizer, loader), then prints
the parameters, the training FLOPs per token, a memory estimate (weights, gradients, optimizer state, activations
at the batch), the step time measured over a few real steps (forward, backward, optimizer step) and the ETA of
trainer.max_steps (or how far trainer.max_time gets). Nothing is saved: no run directory, checkpoint or metrics.

The activation estimate is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", eq. 2 with flash attention: no T^2 term): 34 * T * B * C bytes per layer at 16 bits, twice that in fp32,
plus one chunk of the output head's logits; measured peak memory is printed beside it.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from nanoloom.device import autocast
from train import dist
from train.build import (
    apply_update,
    build_parts,
    forward_backward,
    optimizer_state_bytes,
    tokens_per_row,
    unscale_and_clip,
)
from train.config import TrainConfig
from train.optim import set_lr
from train.perf import use_compile

MEASURED_STEPS = 3  # timed steps, after one warm-up step


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB"


def memory_estimate(model: torch.nn.Module, optimizer_bytes: int, dtype: torch.dtype, rows: int, T: int) -> dict:
    """Bytes of weights, gradients, optimizer state (optimizer_bytes: measured, optimizer_state_bytes) and
    activations for one micro-batch of `rows` sequences."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    layers = getattr(cfg, "n_layer", 0) or (cfg.n_encoder_layer + cfg.n_decoder_layer)
    act_bytes = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    activations = 34 * T * rows * cfg.n_embd * layers * act_bytes / 2
    activations += 512 * cfg.vocab_size * 4 * 2  # one chunk of head logits and their gradient (fp32)
    return {
        "weights": weights,
        "gradients": weights,
        "optimizer": optimizer_bytes,
        "activations": activations,
    }


def _peak_memory(device: torch.device) -> float:
    """Peak memory so far: CUDA's allocator peak, else the process's peak resident set (Linux: KiB)."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def training_step(cfg: TrainConfig, device: torch.device) -> tuple[Any, Callable[[], float], bool]:
    """The run's parts (train.build.build_parts, one process), its step as one callable (forward and backward of
    every micro-batch, the loop's clip and update, waiting for the device; returns the step's FLOPs) and whether
    the model is compiled, as the run would. The learning rate is 0: steps taken to measure must not matter."""
    parts = build_parts(cfg, dist.DistInfo(), device)
    tcfg, model = cfg.trainer, parts.raw_model
    rows = tcfg.micro_batch_size or tcfg.batch_size
    compile = use_compile(tcfg.compile, device, tcfg.max_steps)
    compiled = torch.compile(model) if compile else model
    ctx = autocast(device, parts.dtype)
    set_lr(parts.optimizer, 0.0)

    def step() -> float:
        loss, step_flops = forward_backward(compiled, parts.train_loader, tcfg.grad_accum, ctx, parts.scaler, rows)
        unscale_and_clip(model, parts.optimizer, parts.scaler, cfg.optim.grad_clip)  # the loop's update
        apply_update(parts.optimizer, parts.scaler)
        loss.item()  # wait for the device
        return step_flops

    return parts, step, compile


def dry_run(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Build the run, time a few steps, print the estimate; return its numbers (nothing is written)."""
    parts, step, compile = training_step(cfg, device)  # one process: the estimate is per device
    tcfg, model = cfg.trainer, parts.raw_model
    T = parts.model_cfg.block_size
    rows = tcfg.micro_batch_size or tcfg.batch_size
    tokens_per_step = tcfg.batch_size * tcfg.grad_accum * tokens_per_row(parts.train_loader, T)
    times, flops = [], []
    for _ in range(1 + MEASURED_STEPS):
        t0 = time.perf_counter()
        flops.append(step())
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[1:])
    # from the batches' shapes: a seq2seq step's batches are as long as their longest rows
    flops_per_token = statistics.mean(flops[1:]) / tokens_per_step
    memory = memory_estimate(model, optimizer_state_bytes(parts.optimizer), parts.dtype, rows, T)
    budget_steps = tcfg.max_steps if tcfg.max_time is None else min(tcfg.max_steps, int(tcfg.max_time / step))
    result = {
        "params": model.num_params(),
        "flops_per_token": flops_per_token,
        "tokens_per_step": tokens_per_step,
        "step_seconds": step,
        "tokens_per_s": tokens_per_step / step,
        "memory_estimate": memory,
        "peak_memory": _peak_memory(device),
        "steps": budget_steps,
        "eta_seconds": budget_steps * step,
        "first_step_seconds": times[0],
        "dtype": str(parts.dtype).removeprefix("torch."),
    }
    dtype = str(parts.dtype).removeprefix("torch.")
    lines = [
        f"dry run: {cfg.run_name} on {device} {dtype}" + (" compiled" if compile else "") + " (nothing is saved)",
        f"  parameters        {result['params'] / 1e6:.2f}M",
        f"  FLOPs per token   {flops_per_token / 1e6:.1f} MFLOP (training: forward + backward)",
        f"  tokens per step   {tokens_per_step:,} ({tcfg.batch_size} x {tcfg.grad_accum} x "
        f"{tokens_per_step // (tcfg.batch_size * tcfg.grad_accum)}; micro-batch {rows})",
        "  memory estimate   "
        + ", ".join(f"{k} {_gb(v)}" for k, v in memory.items())
        + f"; total {_gb(sum(memory.values()))}",
        f"  measured peak     {_gb(result['peak_memory'])} "
        + ("(CUDA allocator)" if device.type == "cuda" else "(process RSS, Python and libraries included)"),
        f"  step time         {step * 1e3:.0f} ms (median of {MEASURED_STEPS} after a {times[0]:.1f} s first step)"
        f" = {result['tokens_per_s']:,.0f} tokens/s",
        f"  ETA               {budget_steps:,} steps in {_duration(result['eta_seconds'])}"
        + (" (trainer.max_time)" if budget_steps < tcfg.max_steps else " (trainer.max_steps)")
        + ", evaluations and checkpoints not included",
    ]
    print("\n".join(lines), flush=True)
    with contextlib.suppress(AttributeError):
        model.clear_kv_cache()
    return {"val/loss": float("nan"), **result}


def _duration(seconds: float) -> str:
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"
