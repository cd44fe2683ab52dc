"""The training loop: run(cfg) sets everything up, then steps in nanoGPT's order.

Order of one step: set lr -> micro-steps (autocast forward, loss / micro-steps, backward) -> clip -> non-finite
guard -> optimizer step -> zero_grad -> log line -> evaluator -> checkpointer, each when due (train/periodic.py;
evaluated first, so a checkpoint knows its val loss). The same loop trains every model kind: a batch is a dict of
the model's forward arguments, so `logits, loss = model(**batch)`. Reliability: one process per run directory (a
lock), checkpoints written atomically and never with non-finite weights, an out-of-memory step retried with half the
micro-batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file
from safetensors.torch import load_model as load_weights

from data.loader import CausalLMLoader
from model.checkpoint import WEIGHTS
from nanoloom.device import autocast, resolve_device
from nanoloom.files import write_text_atomic
from train import dist
from train.build import apply_update, build_loader, build_parts, forward_backward, tokens_per_row, unscale_and_clip
from train.config import TrainConfig, config_dict, to_yaml
from train.log import Meter, Tracker, eta_seconds, format_step, warn
from train.optim import DeviceSkips, UpdateRatio, get_lr, set_lr
from train.perf import maybe_keep_freed_memory, peak_flops, use_compile
from train.periodic import Checkpointer, Evaluator, due
from train.state import (
    TrainState,
    changed_settings,
    check_compatible,
    find_resume_checkpoint,
    load_train_state,
    lock_run_dir,
    maybe_fault,
    plain_model,
    remove_leftovers,
    set_rng_state,
)


@dataclass
class Run:
    """One training run in progress: its built parts and the periodic components the loop calls."""

    cfg: TrainConfig
    raw_model: nn.Module  # the unwrapped model: checkpoints and sampling use it
    model: nn.Module  # what trains: raw_model, compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    train_loader: Any
    ctx: Any  # autocast context
    tracker: Tracker
    info: dist.DistInfo
    settings: dict[str, Any]  # the config as plain containers: saved in checkpoints, compared on resume
    evaluator: Evaluator
    checkpointer: Checkpointer
    meter: Meter  # throughput and MFU of the training steps
    tokens_per_step: int  # every rank's


def run(cfg: TrainConfig, on_start: Callable[[Path], None] | None = None) -> dict[str, float]:
    """Train as cfg says; return the final metrics (val/loss, val/ppl, step).

    on_start(run_dir): called on rank 0 once the run is known to proceed (the lock held, the resume checked, the data
    ready), before it writes anything there; python -m train writes Hydra's record of the launch (.hydra/) in it.
    """
    _check_run_name(cfg.run_name)
    device = resolve_device(cfg.trainer.device)
    maybe_keep_freed_memory(cfg.trainer.keep_freed_memory, device)  # before the model and its buffers exist
    if cfg.dry_run:
        from train.dry_run import dry_run

        return dry_run(cfg, device)
    info, device = dist.setup(device)
    try:
        # one run directory for all ranks: rank 0's (Hydra resolves ${now:...} run names per process)
        cfg.paths.run_dir, cfg.run_name = dist.shared((cfg.paths.run_dir, cfg.run_name), info)
        with _run_dir_locked(Path(cfg.paths.run_dir), info, device):
            return _train(cfg, info, device, on_start)
    finally:
        dist.teardown()


@contextlib.contextmanager
def _run_dir_locked(run_dir: Path, info: dist.DistInfo, device: torch.device) -> Any:
    """Rank 0 holds the run directory's lock for the whole run; every rank stops if it cannot be had."""
    with contextlib.ExitStack() as stack:
        error = None
        if info.is_main:
            try:
                stack.enter_context(lock_run_dir(run_dir))
            except ValueError as e:
                error = e
        if dist.any_rank(error is not None, info, device):
            raise error or ValueError(f"{run_dir} is in use by another training process (see rank 0)")
        if info.is_main:
            remove_leftovers(run_dir / "checkpoints")  # of saves a crash interrupted; nobody else writes here
        yield


def _start(
    cfg: TrainConfig, info: dist.DistInfo, device: torch.device, on_start: Callable[[Path], None] | None
) -> tuple[Run, TrainState, bool]:
    """Build the run's parts, restore a checkpoint to resume from; (the run, its state, whether it resumed)."""
    tcfg = cfg.trainer
    run_dir, cache_dir = Path(cfg.paths.run_dir), Path(cfg.paths.cache_dir)
    parts = build_parts(cfg, info, device)
    data_dir, tokenizer, model_cfg, raw_model = parts.data_dir, parts.tokenizer, parts.model_cfg, parts.raw_model
    optimizer, scaler, train_loader, dtype = parts.optimizer, parts.scaler, parts.train_loader, parts.dtype
    T = model_cfg.block_size
    state, resume_from, saved_settings = TrainState(), find_resume_checkpoint(cfg.resume, run_dir), {}
    if resume_from is not None:
        state, saved_settings = _restore(
            resume_from, raw_model, optimizer, scaler, train_loader, tokenizer.spec(), info
        )
    micro_batch = tcfg.micro_batch_size or tcfg.batch_size
    if not (0 < state.micro_batch <= micro_batch and tcfg.batch_size % state.micro_batch == 0):
        state.micro_batch = micro_batch  # a fresh run, or a checkpoint's micro-batch (halved after OOM) that won't do
    model = torch.compile(raw_model) if use_compile(tcfg.compile, device, tcfg.max_steps) else raw_model
    settings = config_dict(cfg, model_cfg)
    resume_step = state.step if resume_from is not None else None
    tracker = Tracker(
        cfg.logger, run_dir, info.is_main, config=settings, run_name=cfg.run_name, resume_step=resume_step
    )
    val_loader = build_loader(cfg, data_dir, "val", tokenizer, model_cfg, info, device)
    tokens_per_step = tcfg.batch_size * tcfg.grad_accum * tokens_per_row(train_loader, T) * info.world_size
    # MFU: the whole job's FLOPs (tokens_per_step counts every rank's) over the whole job's peak, one device's each
    peak = peak_flops(device, dtype, cache_dir) * info.world_size if info.is_main else 0.0
    remeasure = (lambda: peak_flops(device, dtype, cache_dir, remeasure=True) * info.world_size) if peak else None
    meter = Meter(tokens_per_step, peak, device, remeasure)
    model, ctx, config_yaml = dist.wrap(model, info, device), autocast(device, dtype), to_yaml(cfg, model_cfg)
    r = Run(
        cfg=cfg,
        raw_model=raw_model,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        train_loader=train_loader,
        ctx=ctx,
        tracker=tracker,
        info=info,
        settings=settings,
        evaluator=Evaluator(cfg, model, raw_model, val_loader, tokenizer, ctx, tracker, info),
        meter=meter,
        tokens_per_step=tokens_per_step,
        checkpointer=Checkpointer(
            cfg, raw_model, optimizer, scaler, train_loader, tokenizer, config_yaml, settings, info
        ),
    )
    if info.is_main:
        if on_start is not None:
            on_start(run_dir)
        write_text_atomic(run_dir / "config.yaml", config_yaml)
    tracker.print(
        f"nanoloom: {raw_model.num_params() / 1e6:.2f}M params | {tokens_per_step:,} tokens/step | device {device} "
        f"{str(dtype).removeprefix('torch.')} | world {info.world_size} | run dir {run_dir}"
        + (f" | MFU against a peak of {peak / 1e9:,.0f} GFLOP/s" if peak else "")
        + (f" | resumed at step {state.step}" if resume_from is not None else "")
    )
    if resume_from is not None:
        _report_changes(r, state, saved_settings)
    return r, state, resume_from is not None


def _train(
    cfg: TrainConfig, info: dist.DistInfo, device: torch.device, on_start: Callable[[Path], None] | None = None
) -> dict[str, float]:
    """The loop: steps until trainer.max_steps or trainer.max_time, then a final evaluation and checkpoint."""
    r, state, resumed = _start(cfg, info, device, on_start)
    tcfg, optimizer, scaler, meter = cfg.trainer, r.optimizer, r.scaler, r.meter
    evaluator, checkpointer, tracker = r.evaluator, r.checkpointer, r.tracker
    t_start, step_time_before, first_step = time.perf_counter(), state.step_time, state.step
    skips = DeviceSkips(device) if DeviceSkips.supported(optimizer, scaler) else None
    budget_left = tcfg.max_time is None or state.train_time < tcfg.max_time  # a resumed run may have spent it

    def log_due(step: int) -> bool:  # a log line every trainer.log_interval steps, and at the last one
        return due(step, tcfg.log_interval) or step == tcfg.max_steps

    if not resumed and evaluator.due(0):
        with meter.paused():  # throughput counts training time only
            evaluator(state)
    while budget_left and state.step < tcfg.max_steps:
        lr = get_lr(state.step, cfg.optim.lr, tcfg.max_steps, cfg.schedule)
        set_lr(optimizer, lr)
        loss, flops = forward_backward_safely(r, state)
        maybe_fault("kill_in_step", state.step + 1)  # crash tests: gradients computed, weights not yet updated
        grad_norm = unscale_and_clip(r.raw_model, optimizer, scaler, cfg.optim.grad_clip)
        # The non-finite guard, before the update. A fused AdamW skips the update on the device (DeviceSkips: no
        # host sync, the skips are read at log and save steps); otherwise it is one host-device sync per step.
        # With fp16, inf gradients are the grad scaler's business: scaler.step skips the update and scaler.update
        # lowers the scale, so only the loss is checked.
        ok = _finite(loss, grad_norm if scaler is None else None, info)
        if skips is not None:
            skips.arm(optimizer, ok, state.step)
        elif not bool(ok):
            skip_step(optimizer, scaler)
            _nonfinite(r, state)
            continue
        # the update/weight ratio is measured on the steps that will be logged (log_due of the step this completes)
        health = optimizer_step(r, track=log_due(state.step + 1) and tcfg.log_update_ratio)
        state.step += 1
        state.tokens_seen += r.tokens_per_step
        # the loss stays on the device: no sync until logged; the FLOPs are every rank's (ranks' batches alike)
        meter.add(loss, ok if skips is not None else None, flops * r.info.world_size)
        state.step_time = step_time_before + meter.seconds()

        elapsed = state.train_time + time.perf_counter() - t_start
        # a collective (and a host sync) per step only when there is a time budget to agree on
        out_of_time = tcfg.max_time is not None and dist.any_rank(elapsed >= tcfg.max_time, info, device)
        last = state.step == tcfg.max_steps or out_of_time  # the final eval and save follow the loop
        saves = checkpointer.due(state.step) and not last
        if skips is not None and (log_due(state.step) or saves or last):
            _read_skips(r, state, skips)  # before a checkpoint is written: nonfinite=stop keeps the last good one
        if log_due(state.step) or last:
            here = (state.step - first_step, elapsed - state.train_time)  # steps and seconds of this process
            eta = eta_seconds(state.step, tcfg.max_steps, *here, elapsed, tcfg.max_time)
            log_step(r, state, meter, lr, grad_norm, health, elapsed, eta)
        with meter.paused():
            val = evaluator(state) if evaluator.due(state.step) and not last else None
            if saves:
                checkpointer(state, t_start, val)  # after the eval: the checkpoint records its val loss (`best`)
        if out_of_time:
            tracker.print(f"time budget of {tcfg.max_time:.0f}s reached at step {state.step}: stopping")
            break

    val = evaluator(state)
    checkpointer(state, t_start, val)
    tracker.close()
    return {"val/loss": val["loss"], "val/ppl": val["ppl"], "step": state.step}


def optimizer_step(r: Run, track: bool) -> dict[str, torch.Tensor]:
    """The optimizer step (through the grad scaler with fp16) and zero_grad. track: also this step's update/weight
    ratios (UpdateRatio; its copy of the weights is freed on return), as device tensors; else {}."""
    ratio = _update_ratio(r) if track else None
    apply_update(r.optimizer, r.scaler)
    if ratio is None:
        return {}
    sharded = dist.is_sharded(r.raw_model)  # FSDP: each rank holds a shard of every tensor; sum their squares
    return ratio.read((lambda t: dist.total(t, r.info)) if sharded else None)


def _update_ratio(r: Run) -> UpdateRatio | None:
    """This step's UpdateRatio, or None when its copy of the weights does not fit in memory on some rank: the health
    metric is then turned off for the rest of the run, with a warning (a metric never ends a run)."""
    ratio, failed = None, False
    try:
        ratio = UpdateRatio(list(r.raw_model.parameters()))
    except torch.OutOfMemoryError:
        failed = True
    if dist.any_rank(failed, r.info, next(r.raw_model.parameters()).device):  # ranks agree: FSDP reduces it
        r.cfg.trainer.log_update_ratio = False
        warn("out of memory copying the weights for the update/weight ratio: trainer.log_update_ratio is now off")
        return None
    return ratio


def forward_backward_safely(r: Run, state: TrainState) -> tuple[torch.Tensor, float]:
    """forward_backward (the loss and FLOPs) at state.micro_batch; after an out-of-memory error, the step again
    with half of it.

    The retry draws the step's batches again from the same loader position, splits them into twice the micro-steps
    and rewinds the RNG (dropout): it computes what a run started at that trainer.micro_batch_size computes, with
    the same tokens per optimizer step. One process only: ranks retrying apart would disagree on the step.
    """
    tcfg = r.cfg.trainer
    loader_state, rng = r.train_loader.state_dict(), _rng_snapshot()
    while True:
        try:
            return forward_backward(r.model, r.train_loader, tcfg.grad_accum, r.ctx, r.scaler, state.micro_batch)
        except torch.OutOfMemoryError:
            if r.info.enabled:
                raise
        # Out of the except block: the traceback, and the activations its frames hold, are released.
        r.optimizer.zero_grad(set_to_none=True)  # drop the gradients of the micro-steps that did run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        old, state.micro_batch = state.micro_batch, _smaller_micro_batch(state.micro_batch, tcfg.batch_size, state)
        r.train_loader.load_state_dict(loader_state)
        _set_rng_snapshot(rng)
        micro_steps = tcfg.grad_accum * (tcfg.batch_size // state.micro_batch)
        warn(
            f"out of memory at step {state.step + 1} with a micro-batch of {old} rows: retrying the step with "
            f"{state.micro_batch} rows x {micro_steps} micro-steps (the same tokens per step); "
            f"trainer.micro_batch_size={state.micro_batch} starts a run there"
        )
        r.tracker.event(
            "out_of_memory",
            state.step + 1,
            **{"train/micro_batch": state.micro_batch, "train/micro_steps": micro_steps},
        )


def _smaller_micro_batch(micro_batch: int, batch_size: int, state: TrainState) -> int:
    """The largest divisor of batch_size that is at most half of micro_batch; refused at one row."""
    if micro_batch == 1:
        raise torch.OutOfMemoryError(
            f"out of memory at step {state.step + 1} with a micro-batch of one row: nothing left to split; use a "
            "smaller model.block_size or model, or trainer.dtype=bfloat16"
        )
    return max(d for d in range(1, micro_batch // 2 + 1) if batch_size % d == 0)


def _rng_snapshot() -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def _set_rng_snapshot(snapshot: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(snapshot[0])
    if snapshot[1] is not None:
        torch.cuda.set_rng_state(snapshot[1])


def log_step(
    r: Run,
    state: TrainState,
    meter: Meter,
    lr: float,
    grad_norm: torch.Tensor,
    health: dict[str, torch.Tensor],
    elapsed: float | None = None,
    eta: float | None = None,
) -> None:
    """Log the mean loss since the last log line (averaged over ranks), the lr, throughput and MFU, the gradient
    norm and, in health, this step's update/weight ratios and weight norm (UpdateRatio.read); the console line
    also shows the run's elapsed wall time and the estimated time left."""
    metrics = meter.read(lambda t: dist.mean(t, r.info))  # .item() inside: a host-device sync per log interval
    values = torch.stack([grad_norm.float(), *(v.float() for v in health.values())]).tolist()  # one more sync
    metrics.update({f"train/{k}": v for k, v in zip(health, values[1:])})
    metrics.update(
        {
            "train/lr": lr,
            "train/grad_norm": values[0],
            "train/tokens": state.tokens_seen,
            "train/skipped_steps": state.skipped_steps,
            "train/micro_batch": state.micro_batch,
            "train/time": round(state.step_time, 3),
        }
    )
    r.tracker.log(metrics, state.step)
    r.tracker.print(format_step(metrics, state.step, r.cfg.trainer.max_steps, elapsed, eta))


def _report_changes(r: Run, state: TrainState, saved: dict[str, Any]) -> None:
    """A resumed run may change its settings (lr, step budget ...): allowed, and each change is logged."""
    changes = changed_settings(saved, r.settings) if saved else {}  # checkpoints before settings were saved: none
    if changes:
        r.tracker.print(
            f"resumed at step {state.step} with changed settings: "
            + ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items())
        )
        r.tracker.event("resume_changes", state.step, changes={k: list(v) for k, v in changes.items()})


def _restore(
    path: Path,
    raw_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    loader: CausalLMLoader,
    tokenizer_spec: dict,
    info: dist.DistInfo,
) -> tuple[TrainState, dict[str, Any]]:
    """Load weights, optimizer, scaler, data position and RNG states; return the state and the saved settings."""
    check_compatible(path, raw_model.config.to_dict(), tokenizer_spec)
    device, sharded = next(raw_model.parameters()).device, dist.is_sharded(raw_model)
    # checked: its moments fit this optimizer's parameters. Mapped, not read, on a GPU or under FSDP: the page cache
    # holds it once per machine; under FSDP rank 0 alone reads the weights and moments and broadcasts them
    reads = not sharded or info.is_main
    saved = load_train_state(path, optimizer, mmap=device.type != "cpu" or not reads, moments=reads)
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if sharded:  # each rank keeps its shards of what rank 0 broadcasts
        weights = plain_model(raw_model.config, load_file(path / WEIGHTS)).state_dict() if reads else {}
        dist.load_full_state(raw_model, optimizer, weights, saved["optimizer"] if reads else {})
    else:
        load_weights(raw_model, str(path / WEIGHTS), device=str(device))
        optimizer.load_state_dict(saved["optimizer"])
    for group, values in zip(optimizer.param_groups, hyper):
        group.update(values)  # this run's optim.* values (weight decay, betas ...), not the checkpoint's
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    loader.load_state_dict(saved["loader"])
    if info.world_size == 1:  # per-rank dropout streams are not saved; one process resumes bit-exactly
        set_rng_state(saved["rng"], device)
    return TrainState(**saved["state"]), saved.get("settings", {})


def skip_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Drop this step's gradients. With fp16 the grad scaler has unscaled them already: its update() closes the step
    (so the next step may unscale again) with the scale backed off, as after inf gradients."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


def _nonfinite(r: Run, state: TrainState, count: int = 1, first: int | None = None) -> None:
    """Count dropped steps (count of them, the first at step `first`, default this one); with
    trainer.nonfinite=stop, end the run (the last checkpoint stays intact)."""
    first = state.step if first is None else first
    state.skipped_steps += count
    if r.cfg.trainer.nonfinite == "stop":
        raise FloatingPointError(
            f"non-finite loss or gradient at step {first}; the last checkpoint is intact. "
            "Lower optim.lr, enable optim.grad_clip, or set trainer.nonfinite=skip"
        )
    what = "step skipped" if count == 1 else f"{count} steps skipped since the last log line, the first"
    warn(f"non-finite loss or gradient at step {first}: {what}")
    r.tracker.event("nonfinite_skipped", state.step, **{"train/skipped_steps": state.skipped_steps})


def _read_skips(r: Run, state: TrainState, skips: DeviceSkips) -> None:
    """Report the steps the optimizer skipped on the device since the last read (see DeviceSkips)."""
    count, first = skips.read()
    if count:
        _nonfinite(r, state, count, first)


def _check_run_name(name: str) -> None:
    """run_name names a directory under paths.runs_dir: it may not lead out of it."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(
            f"run_name={name!r} would put the run directory outside paths.runs_dir; use a plain name, e.g. "
            "run_name=myrun (set paths.run_dir to train elsewhere)"
        )


def _finite(loss: torch.Tensor, grad_norm: torch.Tensor | None, info: dist.DistInfo) -> torch.Tensor:
    """Whether the loss (and the gradient norm, if given) are finite on every rank: a device bool, no host sync."""
    ok = torch.isfinite(loss.detach())
    if grad_norm is not None:
        ok = ok & torch.isfinite(grad_norm)
    return dist.every_rank(ok, info)
