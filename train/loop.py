"""The training loop: run(cfg) sets everything up, then steps in nanoGPT's order.

Order of one step: set lr -> maybe_eval -> micro-steps (autocast forward, loss / grad_accum, backward) ->
clip -> optimizer step -> zero_grad -> maybe_log -> maybe_save. The same loop trains every model kind: a batch
is a dict of the model's forward arguments, so `logits, loss = model(**batch)`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_model as load_weights

from data.loader import CausalLMLoader
from data.prepare import load_meta, prepare
from data.tokenizer import tokenizer_from_spec
from model.registry import build_model
from sample.generate import complete, resolve_device
from train import dist
from train.config import TrainConfig, config_dict, to_yaml
from train.device import autocast, peak_flops, resolve_dtype
from train.evaluate import estimate_loss
from train.log import Tracker, format_step, warn
from train.optim import build_optimizer, get_lr, set_lr
from train.state import (
    TrainState,
    check_compatible,
    find_resume_checkpoint,
    load_train_state,
    save_checkpoint,
    set_rng_state,
)


def run(cfg: TrainConfig) -> dict[str, float]:
    """Train as cfg says; return the final metrics (val/loss, val/ppl, train/loss)."""
    device = resolve_device(cfg.trainer.device)
    info, device = dist.setup(device)
    try:
        return _train(cfg, info, device)
    finally:
        dist.teardown()


def _train(cfg: TrainConfig, info: dist.DistInfo, device: torch.device) -> dict[str, float]:
    tcfg = cfg.trainer
    run_dir, cache_dir = Path(cfg.paths.run_dir), Path(cfg.paths.cache_dir)
    dtype = resolve_dtype(tcfg.dtype, device)
    ctx = autocast(device, dtype)
    if device.type == "cuda":  # TF32 matmuls for any fp32 work left outside autocast (numerics: ~1e-3 rel.)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # data: rank 0 prepares (a no-op when cached), the others wait and then find it
    if info.is_main:
        data_dir = prepare(cfg.data, cache_dir)
    dist.barrier(info)
    if not info.is_main:
        data_dir = prepare(cfg.data, cache_dir, progress=False)
    tokenizer = tokenizer_from_spec(load_meta(data_dir)["tokenizer"])
    model_cfg = _with_vocab(cfg.model, tokenizer.vocab_size, tokenizer.name)
    T = model_cfg.block_size
    loader_args = dict(
        batch_size=tcfg.batch_size,
        block_size=T,
        seed=tcfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        device=device,
    )
    train_loader = CausalLMLoader(data_dir, "train", **loader_args)
    val_loader = CausalLMLoader(data_dir, "val", **loader_args)

    # model and optimizer: the same init on every rank, then per-rank dropout streams
    torch.manual_seed(tcfg.seed)
    raw_model = build_model(model_cfg).to(device)
    optimizer = build_optimizer(raw_model, cfg.optim, device.type)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    torch.manual_seed(tcfg.seed + info.rank)
    state = TrainState()
    resume_from = find_resume_checkpoint(cfg.resume, run_dir)
    if resume_from is not None:
        state = _restore(resume_from, raw_model, optimizer, scaler, train_loader, tokenizer.spec(), info)
    model = torch.compile(raw_model) if tcfg.compile else raw_model
    model = dist.wrap(model, info, device)

    config_yaml = to_yaml(cfg, model_cfg)
    tracker = Tracker(
        cfg.logger,
        run_dir,
        info.is_main,
        config=config_dict(cfg, model_cfg),
        run_name=cfg.run_name,
        resume_step=state.step if resume_from is not None else None,
    )
    prompts = _encodable_prompts(cfg.samples.prompts, tokenizer)
    if info.is_main:
        (run_dir / "config.yaml").write_text(config_yaml)
    tokens_per_step = tcfg.batch_size * tcfg.grad_accum * T * info.world_size
    flops_per_step = raw_model.flops_per_token(T) * tokens_per_step
    peak = peak_flops(device, dtype, cache_dir) if info.is_main else 0.0
    tracker.print(
        f"nanoloom: {raw_model.num_params() / 1e6:.2f}M params | {tokens_per_step:,} tokens/step | device {device} "
        f"{str(dtype).removeprefix('torch.')} | world {info.world_size} | run dir {run_dir}"
        + (f" | resumed at step {state.step}" if resume_from is not None else "")
    )

    start_step, t_start = state.step, time.perf_counter()
    t_log, loss_log, steps_log, val = t_start, torch.zeros((), device=device), 0, None
    budget_left = tcfg.max_time is None or state.train_time < tcfg.max_time  # a resumed run may have spent it
    while budget_left and state.step < tcfg.max_steps:
        lr = get_lr(state.step, cfg.optim.lr, tcfg.max_steps, cfg.schedule)
        set_lr(optimizer, lr)
        if _due(state.step, tcfg.eval_interval) and not (state.step == start_step and resume_from is not None):
            t_eval = time.perf_counter()
            val = maybe_eval(cfg, raw_model, model, val_loader, ctx, tokenizer, prompts, state, tracker, info)
            t_log += time.perf_counter() - t_eval  # throughput counts training time only

        loss = forward_backward(model, train_loader, tcfg.grad_accum, ctx, scaler)
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), clip)
        # The non-finite guard (one host-device sync per step). With fp16, inf gradients are the grad scaler's
        # business: scaler.step skips the update and scaler.update lowers the scale, so only the loss is checked.
        if not _finite(loss, grad_norm if scaler is None else None, info, device):
            optimizer.zero_grad(set_to_none=True)
            state.skipped_steps += 1
            if tcfg.nonfinite == "stop":
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {state.step}; the last checkpoint is intact. "
                    "Lower optim.lr, enable optim.grad_clip, or set trainer.nonfinite=skip"
                )
            warn(f"non-finite loss or gradient at step {state.step}: step skipped")
            continue
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += tokens_per_step
        loss_log += loss  # stays on device: no sync until logged
        steps_log += 1

        out_of_time = tcfg.max_time is not None and state.train_time + time.perf_counter() - t_start >= tcfg.max_time
        out_of_time = dist.any_rank(out_of_time, info, device)  # every rank stops at the same step
        if state.step % tcfg.log_interval == 0 or state.step == tcfg.max_steps or out_of_time:
            t_log = maybe_log(
                tracker,
                state,
                loss_log,
                steps_log,
                lr,
                grad_norm,
                t_log,
                tokens_per_step,
                flops_per_step,
                peak,
                tcfg.max_steps,
            )
            loss_log, steps_log = torch.zeros((), device=device), 0
        if _due(state.step, tcfg.save_interval) and state.step < tcfg.max_steps and not out_of_time:
            t_save = time.perf_counter()
            maybe_save(cfg, raw_model, optimizer, scaler, state, train_loader, tokenizer, config_yaml, t_start, info)
            t_log += time.perf_counter() - t_save
        if out_of_time:
            tracker.print(f"time budget of {tcfg.max_time:.0f}s reached at step {state.step}: stopping")
            break

    val = maybe_eval(cfg, raw_model, model, val_loader, ctx, tokenizer, prompts, state, tracker, info)
    maybe_save(cfg, raw_model, optimizer, scaler, state, train_loader, tokenizer, config_yaml, t_start, info)
    tracker.close()
    return {"val/loss": val["loss"], "val/ppl": val["ppl"], "step": state.step}


def forward_backward(
    model: nn.Module, loader: CausalLMLoader, grad_accum: int, ctx: Any, scaler: torch.amp.GradScaler | None
) -> torch.Tensor:
    """Run grad_accum micro-batches, accumulating gradients; return the step's mean loss (a device tensor)."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for micro_step in range(grad_accum):
        batch = loader.next_batch()
        # DDP: all-reduce gradients only on the last micro-step (no_sync on the others)
        sync = micro_step == grad_accum - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with ctx:
                _, loss = model(**batch)
            loss = loss / grad_accum  # each micro loss is a token mean; the step loss is their mean
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach()
    return total


def maybe_eval(
    cfg: TrainConfig,
    raw_model: nn.Module,
    model: nn.Module,
    val_loader: CausalLMLoader,
    ctx: Any,
    tokenizer: Any,
    prompts: list[str],
    state: TrainState,
    tracker: Tracker,
    info: dist.DistInfo,
) -> dict[str, float]:
    """Val loss and perplexity on fixed batches; completions of the configured prompts (rank 0)."""
    val = estimate_loss(model, val_loader, cfg.trainer.eval_batches, ctx)
    state.best_val_loss = min(state.best_val_loss, val["loss"])
    tracker.log({"val/loss": val["loss"], "val/ppl": val["ppl"], "train/tokens": state.tokens_seen}, state.step)
    tracker.print(f"step {state.step:>6}: val loss {val['loss']:.4f} | val ppl {val['ppl']:.2f}")
    if info.is_main and prompts:
        s = cfg.samples
        samples = [
            {
                "prompt": p,
                "completion": complete(
                    raw_model,
                    tokenizer,
                    p,
                    max_new_tokens=s.max_new_tokens,
                    temperature=s.temperature,
                    top_k=s.top_k,
                    seed=s.seed,
                )[0],
            }
            for p in prompts
        ]
        raw_model.train()  # complete() switched to eval mode
        tracker.log_samples(samples, state.step)
    return val


def maybe_log(
    tracker: Tracker,
    state: TrainState,
    loss_sum: torch.Tensor,
    steps: int,
    lr: float,
    grad_norm: torch.Tensor,
    t_last: float,
    tokens_per_step: int,
    flops_per_step: float,
    peak: float,
    max_steps: int,
) -> float:
    """Log the mean loss since the last log line, throughput and MFU; return the new reference time."""
    now = time.perf_counter()
    dt = (now - t_last) / max(steps, 1)
    metrics = {
        "train/loss": (loss_sum / max(steps, 1)).item(),  # .item() is a host-device sync, once per log interval
        "train/lr": lr,
        "train/grad_norm": grad_norm.item(),
        "train/tokens": state.tokens_seen,
        "perf/step_time": dt,
        "perf/tokens_per_sec": tokens_per_step / dt,
    }
    if peak > 0:
        metrics["perf/mfu"] = flops_per_step / dt / peak
    tracker.log(metrics, state.step)
    tracker.print(format_step(metrics, state.step, max_steps))
    return now


def maybe_save(
    cfg: TrainConfig,
    raw_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    state: TrainState,
    loader: CausalLMLoader,
    tokenizer: Any,
    config_yaml: str,
    t_start: float,
    info: dist.DistInfo,
) -> None:
    """Checkpoint the unwrapped model and the training state (rank 0 writes; everyone waits)."""
    if info.is_main:
        saved = replace(state, train_time=state.train_time + time.perf_counter() - t_start)
        path = save_checkpoint(
            Path(cfg.paths.run_dir) / "checkpoints",
            raw_model,
            optimizer,
            saved,
            loader.state_dict(),
            tokenizer.spec(),
            config_yaml,
            cfg.trainer.keep_last,
            scaler,
        )
        print(f"saved {path}", flush=True)
    dist.barrier(info)


def _restore(
    path: Path,
    raw_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    loader: CausalLMLoader,
    tokenizer_spec: dict,
    info: dist.DistInfo,
) -> TrainState:
    """Load weights, optimizer, scaler, data position and RNG states from a training checkpoint."""
    check_compatible(path, raw_model.config.to_dict(), tokenizer_spec)
    load_weights(raw_model, str(path / "model.safetensors"), device=str(next(raw_model.parameters()).device))
    saved = load_train_state(path)
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    loader.load_state_dict(saved["loader"])
    if info.world_size == 1:  # per-rank dropout streams are not saved; one process resumes bit-exactly
        set_rng_state(saved["rng"])
    return TrainState(**saved["state"])


def _with_vocab(model_cfg: Any, vocab_size: int, tokenizer_name: str) -> Any:
    """Fill model.vocab_size from the tokenizer, or refuse a mismatch."""
    if model_cfg.vocab_size is None:
        return replace(model_cfg, vocab_size=vocab_size)
    if model_cfg.vocab_size != vocab_size:
        raise ValueError(
            f"vocabulary mismatch: model.vocab_size={model_cfg.vocab_size} but the data's {tokenizer_name} tokenizer "
            f"has {vocab_size} tokens; set model.vocab_size=null (taken from the tokenizer) or change data.tokenizer"
        )
    return model_cfg


def _encodable_prompts(prompts: list[str], tokenizer: Any) -> list[str]:
    """The sample prompts this tokenizer can encode (a char vocabulary may lack their characters)."""
    kept = []
    for prompt in prompts:
        try:
            tokenizer.encode(prompt)
            kept.append(prompt)
        except ValueError as e:
            warn(f"samples.prompts: skipping {prompt!r} ({e})")
    return kept


def _finite(loss: torch.Tensor, grad_norm: torch.Tensor | None, info: dist.DistInfo, device: torch.device) -> bool:
    ok = bool(torch.isfinite(loss)) and (grad_norm is None or bool(torch.isfinite(grad_norm)))
    return not dist.any_rank(not ok, info, device)


def _due(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0
