"""The training loop: run(cfg) sets everything up, then steps in nanoGPT's order.

Order of one step: set lr -> maybe_eval -> micro-steps (autocast forward, loss / grad_accum, backward) ->
clip -> optimizer step -> zero_grad -> maybe_log -> maybe_save. The same loop trains every model kind: a batch
is a dict of the model's forward arguments, so `logits, loss = model(**batch)`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_model as load_weights

from data.loader import CausalLMLoader, Seq2SeqLoader, SpanCorruptionLoader
from data.prepare import load_meta, prepare
from data.tokenizer import tokenizer_from_spec
from model.checkpoint import load_model
from model.registry import build_model
from sample.generate import generate, resolve_device
from train import dist
from train.config import TrainConfig, config_dict, to_yaml
from train.device import autocast, peak_flops, resolve_dtype
from train.evaluate import estimate_loss, seq2seq_scores
from train.log import Meter, Tracker, format_step, warn
from train.optim import build_optimizer, get_lr, set_lr
from train.state import (
    TrainState,
    check_compatible,
    find_resume_checkpoint,
    load_train_state,
    save_checkpoint,
    set_rng_state,
)


@dataclass
class Run:
    """What the periodic helpers need: the built components of one training run."""

    cfg: TrainConfig
    raw_model: nn.Module  # the unwrapped model: checkpoints and sampling use it
    model: nn.Module  # what trains: raw_model, compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    train_loader: CausalLMLoader
    val_loader: CausalLMLoader
    tokenizer: Any
    prompts: list[str]  # sample prompts this tokenizer can encode
    ctx: Any  # autocast context
    tracker: Tracker
    info: dist.DistInfo
    config_yaml: str


def run(cfg: TrainConfig) -> dict[str, float]:
    """Train as cfg says; return the final metrics (val/loss, val/ppl, step)."""
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
    if device.type == "cuda":  # TF32 matmuls for any fp32 work left outside autocast (numerics: ~1e-3 rel.)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    source = load_model(cfg.init_from) if cfg.init_from else None  # (model, tokenizer) to fine-tune, on the CPU
    given = source[1] if source else None  # data.tokenizer=model tokenizes with it

    # data: rank 0 prepares (a no-op when cached), the others wait and then find it
    if info.is_main:
        data_dir = prepare(cfg.data, cache_dir, tokenizer=given)
    dist.barrier(info)
    if not info.is_main:
        data_dir = prepare(cfg.data, cache_dir, progress=False, tokenizer=given)
    meta = load_meta(data_dir)
    kind = source[0].config.kind if source else cfg.model.kind
    tokenizer = tokenizer_from_spec(meta["tokenizer"])
    if source is not None and getattr(source[1], "num_sentinels", 0):  # fine-tuning keeps the source's vocabulary
        tokenizer = tokenizer.with_sentinels(source[1].num_sentinels)
    elif source is None and kind == "t5":  # span corruption needs sentinels; seq2seq keeps the vocabulary alike
        tokenizer = tokenizer.with_sentinels(T5_SENTINELS)
    _check_objective(kind, cfg.task.objective, meta.get("layout", "documents"), cfg.data.name)
    model_cfg = _init_config(cfg, source, tokenizer) if source else _fit_to_tokenizer(cfg.model, tokenizer)
    T = model_cfg.block_size

    # model and optimizer: the same init on every rank, then per-rank dropout streams
    torch.manual_seed(tcfg.seed)
    raw_model = build_model(model_cfg)
    if source is not None:
        _load_source_weights(raw_model, source[0], cfg.init_from)
    raw_model.to(device)
    optimizer = build_optimizer(raw_model, cfg.optim, device.type)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    torch.manual_seed(tcfg.seed + info.rank)
    train_loader = build_loader(cfg, data_dir, "train", tokenizer, model_cfg, info, device)
    state, resume_from = TrainState(), find_resume_checkpoint(cfg.resume, run_dir)
    if resume_from is not None:
        state = _restore(resume_from, raw_model, optimizer, scaler, train_loader, tokenizer.spec(), info)
    model = torch.compile(raw_model) if tcfg.compile else raw_model
    tracker = Tracker(cfg.logger, run_dir, info.is_main, config=config_dict(cfg, model_cfg), run_name=cfg.run_name,
                      resume_step=state.step if resume_from is not None else None)  # fmt: skip
    r = Run(
        cfg, raw_model, dist.wrap(model, info, device), optimizer, scaler, train_loader,
        build_loader(cfg, data_dir, "val", tokenizer, model_cfg, info, device), tokenizer,
        _encodable_prompts(cfg.samples.prompts, tokenizer) if cfg.task.objective != "seq2seq" else [],
        autocast(device, dtype), tracker, info, to_yaml(cfg, model_cfg),
    )  # fmt: skip
    if info.is_main:
        (run_dir / "config.yaml").write_text(r.config_yaml)
    tokens_per_step = tcfg.batch_size * tcfg.grad_accum * _tokens_per_row(train_loader, T) * info.world_size
    peak = peak_flops(device, dtype, cache_dir) if info.is_main else 0.0
    meter = Meter(tokens_per_step, raw_model.flops_per_token(T) * tokens_per_step, peak, device)
    tracker.print(
        f"nanoloom: {raw_model.num_params() / 1e6:.2f}M params | {tokens_per_step:,} tokens/step | device {device} "
        f"{str(dtype).removeprefix('torch.')} | world {info.world_size} | run dir {run_dir}"
        + (f" | resumed at step {state.step}" if resume_from is not None else "")
    )

    start_step, t_start = state.step, time.perf_counter()
    budget_left = tcfg.max_time is None or state.train_time < tcfg.max_time  # a resumed run may have spent it
    while budget_left and state.step < tcfg.max_steps:
        lr = get_lr(state.step, cfg.optim.lr, tcfg.max_steps, cfg.schedule)
        set_lr(optimizer, lr)
        if _due(state.step, tcfg.eval_interval) and not (state.step == start_step and resume_from is not None):
            with meter.paused():  # throughput counts training time only
                maybe_eval(r, state)

        loss = forward_backward(r.model, train_loader, tcfg.grad_accum, r.ctx, scaler)
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), clip)
        # The non-finite guard (one host-device sync per step). With fp16, inf gradients are the grad scaler's
        # business: scaler.step skips the update and scaler.update lowers the scale, so only the loss is checked.
        if not _finite(loss, grad_norm if scaler is None else None, info, device):
            optimizer.zero_grad(set_to_none=True)
            _nonfinite(state, tcfg.nonfinite)
            continue
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += tokens_per_step
        meter.add(loss)  # stays on the device: no sync until logged

        elapsed = state.train_time + time.perf_counter() - t_start
        out_of_time = dist.any_rank(tcfg.max_time is not None and elapsed >= tcfg.max_time, info, device)
        if state.step % tcfg.log_interval == 0 or state.step == tcfg.max_steps or out_of_time:
            maybe_log(r, state, meter, lr, grad_norm)
        if _due(state.step, tcfg.save_interval) and state.step < tcfg.max_steps and not out_of_time:
            with meter.paused():
                maybe_save(r, state, t_start)
        if out_of_time:
            tracker.print(f"time budget of {tcfg.max_time:.0f}s reached at step {state.step}: stopping")
            break

    val = maybe_eval(r, state)
    maybe_save(r, state, t_start)
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


def maybe_eval(r: Run, state: TrainState) -> dict[str, float]:
    """Val loss and perplexity on fixed batches; completions of the sample prompts (rank 0)."""
    val = estimate_loss(r.model, r.val_loader, r.cfg.trainer.eval_batches, r.ctx, reduce=lambda t: dist.mean(t, r.info))
    state.best_val_loss = min(state.best_val_loss, val["loss"])
    r.tracker.log({"val/loss": val["loss"], "val/ppl": val["ppl"], "train/tokens": state.tokens_seen}, state.step)
    r.tracker.print(f"step {state.step:>6}: val loss {val['loss']:.4f} | val ppl {val['ppl']:.2f}")
    if r.info.is_main and r.prompts:
        s = r.cfg.samples
        outputs = generate(
            r.raw_model,
            r.tokenizer,
            r.prompts,
            max_new_tokens=s.max_new_tokens,
            do_sample=s.temperature > 0,
            temperature=s.temperature,
            top_k=s.top_k,
            seed=s.seed,
        )  # one batch; private generators seeded from s.seed: the training RNG is untouched
        r.tracker.log_samples([{"prompt": p, "completion": c[0].text} for p, c in zip(r.prompts, outputs)], state.step)
    if r.info.is_main and r.cfg.task.objective == "seq2seq" and r.cfg.samples.eval_pairs > 0:
        scores, shown = seq2seq_scores(r.raw_model, r.tokenizer, r.val_loader, r.cfg.samples, r.cfg.task)
        val.update(scores)
        r.tracker.log({f"val/{k}": v for k, v in scores.items()}, state.step)
        r.tracker.print(f"step {state.step:>6}: " + " | ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        r.tracker.log_samples(shown, state.step)
    return val


def maybe_log(r: Run, state: TrainState, meter: Meter, lr: float, grad_norm: torch.Tensor) -> None:
    """Log the mean loss since the last log line (averaged over ranks), the lr, throughput and MFU."""
    metrics = meter.read(lambda t: dist.mean(t, r.info))  # .item() inside: a host-device sync per log interval
    metrics.update({"train/lr": lr, "train/grad_norm": grad_norm.item(), "train/tokens": state.tokens_seen})
    r.tracker.log(metrics, state.step)
    r.tracker.print(format_step(metrics, state.step, r.cfg.trainer.max_steps))


def maybe_save(r: Run, state: TrainState, t_start: float) -> None:
    """Checkpoint the unwrapped model and the training state (rank 0 writes; everyone waits)."""
    if r.info.is_main:
        saved = replace(state, train_time=state.train_time + time.perf_counter() - t_start)
        path = save_checkpoint(
            Path(r.cfg.paths.run_dir) / "checkpoints", r.raw_model, r.optimizer, saved, r.train_loader.state_dict(),
            r.tokenizer.spec(), r.config_yaml, r.cfg.trainer.keep_last, r.scaler,
        )  # fmt: skip
        print(f"saved {path}", flush=True)
    dist.barrier(r.info)


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


def _init_config(cfg: TrainConfig, source: tuple[nn.Module, Any], tokenizer: Any) -> Any:
    """The architecture of init_from's model; model.dropout applies, and a smaller model.block_size crops it."""
    model, source_tokenizer = source
    if source_tokenizer.spec() != tokenizer.spec():
        raise ValueError(
            f"init_from={cfg.init_from} uses the {source_tokenizer.name!r} tokenizer but data={cfg.data.name} is "
            f"tokenized with {tokenizer.name!r}; prepare the data with the same tokenizer (data.tokenizer=...)"
        )
    changes: dict[str, Any] = {"dropout": cfg.model.dropout}
    if cfg.model.block_size < model.config.block_size:
        changes["block_size"] = cfg.model.block_size  # fine-tune on shorter windows (learned positions cropped)
    return replace(model.config, **changes)


def _load_source_weights(model: nn.Module, source: nn.Module, name: str) -> None:
    """Copy init_from's weights; learned position embeddings are cropped to a smaller block_size."""
    state = source.state_dict()
    for key, value in model.state_dict().items():
        if key.endswith("wpe.weight") and state[key].shape != value.shape:
            state[key] = state[key][: value.shape[0]]  # (block_size, C): the first positions
    model.load_state_dict(state)
    print(f"init_from={name}: {model.num_params() / 1e6:.2f}M parameters loaded", flush=True)


def _fit_to_tokenizer(model_cfg: Any, tokenizer: Any) -> Any:
    """Fill model.vocab_size (and T5's decoder start / pad ids) from the tokenizer, or refuse a mismatch."""
    vocab_size = tokenizer.vocab_size
    if model_cfg.vocab_size is None:
        model_cfg = replace(model_cfg, vocab_size=vocab_size)
    elif model_cfg.vocab_size != vocab_size:
        raise ValueError(
            f"vocabulary mismatch: model.vocab_size={model_cfg.vocab_size} but the data's {tokenizer.name} tokenizer "
            f"has {vocab_size} tokens; set model.vocab_size=null (taken from the tokenizer) or change data.tokenizer"
        )
    if model_cfg.kind == "t5":  # end-of-text starts every decoder input and pads encoder inputs
        starts = {k: tokenizer.eot_id for k in ("decoder_start_id", "pad_id") if getattr(model_cfg, k) is None}
        model_cfg = replace(model_cfg, **starts)
    return model_cfg


OBJECTIVES = {"gpt": ("causal",), "t5": ("span_corruption", "seq2seq")}
T5_SENTINELS = 100  # <extra_id_0> .. <extra_id_99>, as in T5


def _check_objective(kind: str, objective: str, layout: str, data_name: str) -> None:
    """The task's objective must suit the model kind and the prepared data (documents or pairs)."""
    if objective not in OBJECTIVES[kind]:
        raise ValueError(
            f"task.objective={objective!r} does not train a {kind} model; use "
            + " or ".join(f"task={o}" for o in OBJECTIVES[kind])
        )
    wanted = "pairs" if objective == "seq2seq" else "documents"
    if layout != wanted:
        raise ValueError(
            f"task={objective} needs {wanted} but data={data_name} holds {layout}; "
            + ("use data=pairs or data=python-docstrings" if wanted == "pairs" else "use a text corpus")
        )


def build_loader(
    cfg: TrainConfig,
    data_dir: Path,
    split: str,
    tokenizer: Any,
    model_cfg: Any,
    info: dist.DistInfo,
    device: torch.device,
) -> Any:
    """The batch source of the task's objective: dicts of the model's forward arguments."""
    T = model_cfg.block_size
    start_id = getattr(model_cfg, "decoder_start_id", None)  # T5 trains from the start id it generates from
    common = dict(batch_size=cfg.trainer.batch_size, seed=cfg.trainer.seed, rank=info.rank,
                  world_size=info.world_size, device=device)  # fmt: skip
    objective = cfg.task.objective
    if objective == "span_corruption":
        return SpanCorruptionLoader(
            data_dir, split, input_length=T, tokenizer=tokenizer, noise_density=cfg.task.noise_density,
            mean_span_length=cfg.task.mean_span_length, start_id=start_id, **common,
        )  # fmt: skip
    if objective == "seq2seq":
        return Seq2SeqLoader(
            data_dir, split, input_length=T, target_length=T, tokenizer=tokenizer, start_id=start_id, **common
        )
    return CausalLMLoader(data_dir, split, block_size=T, **common)


def _tokens_per_row(loader: Any, T: int) -> int:
    """Tokens one batch row feeds the model: T (causal), encoder + decoder lengths (T5; at most, for seq2seq)."""
    if isinstance(loader, SpanCorruptionLoader):
        return loader.input_length + loader.target_length
    return 2 * T if isinstance(loader, Seq2SeqLoader) else T


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


def _nonfinite(state: TrainState, policy: str) -> None:
    """Count a dropped step; with policy "stop", end the run (the last checkpoint stays intact)."""
    state.skipped_steps += 1
    if policy == "stop":
        raise FloatingPointError(
            f"non-finite loss or gradient at step {state.step}; the last checkpoint is intact. "
            "Lower optim.lr, enable optim.grad_clip, or set trainer.nonfinite=skip"
        )
    warn(f"non-finite loss or gradient at step {state.step}: step skipped")


def _finite(loss: torch.Tensor, grad_norm: torch.Tensor | None, info: dist.DistInfo, device: torch.device) -> bool:
    ok = bool(torch.isfinite(loss)) and (grad_norm is None or bool(torch.isfinite(grad_norm)))
    return not dist.any_rank(not ok, info, device)


def _due(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0
