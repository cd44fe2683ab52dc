"""What the training loop does every so many steps, each part deciding its own schedule: the Evaluator (val loss,
bits per byte, sample completions and their quality, seq2seq scores, plots) and the Checkpointer (a checkpoint that
is never written with non-finite weights). The loop asks `evaluator.due(step)` and `checkpointer.due(step)`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from data.chat import render
from sample.generate import generate
from sample.quality import sample_quality
from train import dist
from train.config import TrainConfig
from train.log import Tracker, warn
from train.plots import plot_run
from train.scoring import bytes_per_token, estimate_loss, seq2seq_scores
from train.state import TrainState, plain_model, save_checkpoint


def due(step: int, interval: int) -> bool:
    """Whether an every-`interval`-steps action falls on step (interval 0: never)."""
    return interval > 0 and step % interval == 0


class Evaluator:
    """Training's evaluation: val loss and perplexity on fixed batches (bits per byte when the split is text), and on
    rank 0 (every rank under FSDP, where a forward is a collective) completions of the sample prompts with their
    quality metrics, seq2seq exact match and ROUGE-L, and the run's plots."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        raw_model: nn.Module,
        val_loader: Any,
        tokenizer: Any,
        ctx: Any,
        tracker: Tracker,
        info: dist.DistInfo,
    ) -> None:
        self.cfg, self.model, self.raw_model, self.val_loader = cfg, model, raw_model, val_loader
        self.tokenizer, self.ctx, self.tracker, self.info = tokenizer, ctx, tracker, info
        self.interval = cfg.trainer.eval_interval
        self.prompts = _encodable_prompts(cfg.samples.prompts, tokenizer) if cfg.task.objective != "seq2seq" else []
        self.chat = cfg.task.objective == "instruct"  # samples are replies to the prompts as the user's turn
        self.bytes_per_token = bytes_per_token(tokenizer, val_loader)  # val/bpb = val/loss / ln 2 / bytes_per_token

    def due(self, step: int) -> bool:
        return due(step, self.interval)

    def __call__(self, state: TrainState) -> dict[str, float]:
        """Evaluate at state.step, log it; returns {"loss", "ppl"[, "bpb", seq2seq scores]}."""
        tcfg = self.cfg.trainer
        reduce = lambda t: dist.total(t, self.info)  # noqa: E731
        val = estimate_loss(self.model, self.val_loader, tcfg.eval_batches, self.ctx, reduce, tcfg.eval_stride)
        state.best_val_loss = min(state.best_val_loss, val["loss"])
        scores = {"val/loss": val["loss"], "val/ppl": val["ppl"]}
        if self.bytes_per_token:  # bits per byte: comparable across tokenizers (char vs BPE)
            scores["val/bpb"] = val["bpb"] = val["loss"] / math.log(2) / self.bytes_per_token
        progress = {"train/tokens": state.tokens_seen, "train/time": round(state.step_time, 3)}
        self.tracker.log({**scores, **progress}, state.step)
        bpb = f" | val bpb {val['bpb']:.4f}" if "bpb" in val else ""
        self.tracker.print(f"step {state.step:>6}: val loss {val['loss']:.4f} | val ppl {val['ppl']:.2f}{bpb}")
        everyone = dist.is_sharded(self.raw_model)  # FSDP: a forward is a collective, so every rank generates alike
        if self.info.is_main or everyone:
            if self.prompts:
                self._samples(state.step)
            if self.cfg.task.objective in ("seq2seq", "instruct") and self.cfg.samples.eval_pairs > 0:
                val.update(self._seq2seq(state.step))
        if self.info.is_main:
            plots = plot_run(Path(self.cfg.paths.run_dir))  # loss_vs_tokens.png, loss_vs_time.png in the run dir
            self.tracker.log_images(plots, state.step)
        return val

    def _samples(self, step: int) -> None:
        """Completions of the sample prompts with the task's decoding (one batch, generators seeded from
        samples.seed: the training RNG is untouched), logged with their quality (distinct-n, repetition, parses)."""
        s = self.cfg.samples
        config = self.cfg.task.generation(self.tokenizer, num_return_sequences=1, **s.overrides())
        ids = None
        if self.chat:  # each prompt as the user's turn; the reply ends at <|end|>
            config = config.replace(eos_token_id=[self.tokenizer.chat_ids[-1], self.tokenizer.eot_id])
            ids = [render(self.tokenizer, [{"role": "user", "content": p}], True)[0] for p in self.prompts]
        outputs = generate(self.raw_model, self.tokenizer, self.prompts, config, seed=s.seed, input_ids=ids)
        texts = [c[0].text for c in outputs]
        self.tracker.log_samples([{"prompt": p, "completion": t} for p, t in zip(self.prompts, texts)], step)
        quality = sample_quality(self.prompts, texts)
        self.tracker.log({f"val/{k}": v for k, v in quality.items()}, step)

    def _seq2seq(self, step: int) -> dict[str, float]:
        """Exact match and ROUGE-L of generated targets of the first samples.eval_pairs val pairs."""
        cfg = self.cfg
        scores, shown = seq2seq_scores(self.raw_model, self.tokenizer, self.val_loader, cfg.samples, cfg.task)
        self.tracker.log({f"val/{k}": v for k, v in scores.items()}, step)
        self.tracker.print(f"step {step:>6}: " + " | ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        self.tracker.log_samples(shown, step)
        return scores


class Checkpointer:
    """Checkpoints of the unwrapped model and the training state every trainer.save_interval steps (rank 0 writes;
    everyone waits). Non-finite weights are never written: the run stops and the last checkpoint stays the newest."""

    def __init__(
        self,
        cfg: TrainConfig,
        raw_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        train_loader: Any,
        tokenizer: Any,
        config_yaml: str,
        settings: dict[str, Any],
        info: dist.DistInfo,
    ) -> None:
        self.cfg, self.raw_model, self.optimizer, self.scaler = cfg, raw_model, optimizer, scaler
        self.train_loader, self.tokenizer, self.info = train_loader, tokenizer, info
        self.config_yaml, self.settings = config_yaml, settings
        self.interval = cfg.trainer.save_interval

    def due(self, step: int) -> bool:
        return due(step, self.interval)

    def __call__(self, state: TrainState, t_start: float, val: dict[str, float] | None = None) -> None:
        """Save at state.step; t_start: when this process started training (the saved train_time counts up to now).
        val: this step's evaluation, if there was one (its loss may make the checkpoint the run's `best`)."""
        full = dist.full_state(self.raw_model, self.optimizer) if dist.is_sharded(self.raw_model) else None
        self._check_finite(full, state.step)
        if self.info.is_main:
            model, optimizer = self.raw_model, self.optimizer
            if full:  # FSDP: rank 0 writes the gathered state as one process would, through a model made of it
                model, optimizer = plain_model(self.raw_model.config, full[0]), full[1]
            saved = replace(state, train_time=state.train_time + time.perf_counter() - t_start)
            path = save_checkpoint(
                Path(self.cfg.paths.run_dir) / "checkpoints",
                model,
                optimizer,
                saved,
                self.train_loader.state_dict(),
                self.tokenizer.spec(),
                self.config_yaml,
                self.cfg.trainer.keep_last,
                self.scaler,
                val_loss=val["loss"] if val is not None else None,
                settings=self.settings,
                generation=asdict(self.cfg.task),
            )
            print(f"saved {path}", flush=True)
        dist.barrier(self.info)

    def _check_finite(self, full: Any, step: int) -> None:
        """Refuse non-finite weights (a host-device sync per save); under FSDP rank 0 checks the gathered ones."""
        if full is None:
            finite = bool(torch.stack([torch.isfinite(p.detach()).all() for p in self.raw_model.parameters()]).all())
        else:
            gathered_finite = self.info.is_main and all(bool(torch.isfinite(w).all()) for w in full[0].values())
            finite = dist.shared(gathered_finite, self.info)
        if not finite:
            raise FloatingPointError(
                f"the weights hold non-finite values at step {step}: not saving them; the last checkpoint is "
                "intact. Lower optim.lr or enable optim.grad_clip, then continue with resume=auto"
            )


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
