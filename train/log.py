"""Where metrics go: the console, metrics.jsonl in the run directory, and optionally wandb.

Only rank 0 logs. wandb is imported lazily and only with logger=wandb; offline mode needs no network and the
run id is kept in the run directory so a resumed run continues the same wandb run. metrics.jsonl holds metric
records and event records ({"event": "out_of_memory", ...}); a resumed run first drops the records past its
checkpoint (and a fresh run all of them), so the file describes one uninterrupted run. Nothing is written before the
first record (a run refused while it starts leaves the run directory as it was), and never through a link
(train.state.check_plain_file, data.jsonl.append_jsonl without following links). Each record is appended whole or
not at all: a write error (disk full) leaves the file as it was and stops the run with one line naming the file.
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from data.jsonl import append_jsonl
from nanoloom.files import write_text_atomic
from train.config import LoggerConfig
from train.state import CheckpointWriteError, check_plain_file, open_no_follow

WANDB_ID_FILE = "wandb_id.txt"


class Tracker:
    """Writes metric dicts (slash-grouped keys: train/loss, val/loss, perf/tokens_per_sec ...) to every sink."""

    def __init__(
        self,
        cfg: LoggerConfig,
        run_dir: Path,
        enabled: bool,
        config: dict[str, Any],
        run_name: str,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.wandb_run = None
        self.started = False  # the first record (_start) trims the logs and starts wandb
        self._start_args = (cfg, config, run_name, resume_step)
        if not enabled:
            return
        for name in ("metrics.jsonl", "samples.jsonl", WANDB_ID_FILE):
            check_plain_file(run_dir / name, writing=False)  # a link is refused now, before the run starts
            # (hard links are not: _start replaces metrics.jsonl and samples.jsonl whole before appending to them)
        if cfg.name == "wandb" and wandb_mode(cfg.mode) != "disabled":
            _import_wandb()

    def _start(self) -> None:
        """Before the first record: trim the logs to the resumed step, open metrics.jsonl, start wandb."""
        if self.started:
            return
        self.started = True
        cfg, config, run_name, resume_step = self._start_args
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Records logged after the checkpoint are about to be logged again; a fresh run (resume_step None) keeps
        # none of an earlier attempt that died before its first checkpoint.
        for name in ("metrics.jsonl", "samples.jsonl"):
            _truncate_after(self.run_dir / name, resume_step if resume_step is not None else -1)
        if cfg.name == "wandb" and wandb_mode(cfg.mode) != "disabled":
            self.wandb_run = _init_wandb(cfg, self.run_dir, config, run_name)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        self._start()
        self._append("metrics.jsonl", [{"step": step, "time": round(time.time(), 3), **metrics}])
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def event(self, name: str, step: int, **fields: Any) -> None:
        """A one-off record in metrics.jsonl: {"step", "time", "event": name, **fields} (wandb gets the numbers)."""
        if not self.enabled:
            return
        self._start()
        self._append("metrics.jsonl", [{"step": step, "time": round(time.time(), 3), "event": name, **fields}])
        numbers = {k: v for k, v in fields.items() if isinstance(v, (int, float))}
        if self.wandb_run is not None and numbers:
            self.wandb_run.log(numbers, step=step)

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        """Completions shown at an eval: appended to samples.jsonl, printed, and sent to wandb as a table."""
        if not self.enabled:
            return
        self._start()
        self._append("samples.jsonl", [{"step": step, **s} for s in samples])
        for s in samples:
            if "reference" in s:  # text-to-text: input, output and the expected output, each on its own
                print(
                    f"--- pair @ step {step} ---\n[input] {s['prompt']}\n[output] {s['completion']}\n"
                    f"[reference] {s['reference']}",
                    flush=True,
                )
            else:
                print(f"--- sample @ step {step} ---\n{s['prompt']}{s['completion']}", flush=True)
        if self.wandb_run is not None:
            import wandb

            table = wandb.Table(columns=["step", "prompt", "completion"])
            for s in samples:
                table.add_data(step, s["prompt"], s["completion"])
            self.wandb_run.log({"samples": table}, step=step)

    def log_images(self, paths: list[Path], step: int) -> None:
        """The run's plots (PNG files) as wandb media, keyed by file name (loss_vs_tokens ...); wandb only."""
        if self.wandb_run is not None and paths:
            import wandb

            self.wandb_run.log({f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in paths}, step=step)

    def close(self) -> None:
        """End the run's logging (a run that logged nothing still trims the files it continues)."""
        if not self.enabled:
            return
        self._start()
        if self.wandb_run is not None:
            self.wandb_run.finish()

    def _append(self, name: str, records: list[dict[str, Any]]) -> None:
        """Append records to a log of the run directory (a resumed run continues the file), never through a link."""
        path = self.run_dir / name
        check_plain_file(path)  # a link, a hard-linked or special file: refused, naming it
        try:
            append_jsonl(path, records, follow_links=False)
        except OSError as e:
            raise CheckpointWriteError(
                f"cannot append to {path}: {e.strerror or e}; it is as it was before this record. Free some space "
                "(or fix the permissions) and continue the run with resume=auto: it goes on from its last checkpoint"
            ) from e


def _truncate_after(path: Path, step: int) -> None:
    """Drop the records of a .jsonl log whose step is past `step`, and a line torn by a crash (rewritten atomically)."""
    if not os.path.lexists(path):
        return
    with open_no_follow(path, "r") as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a process killed while writing it
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ValueError("logger=wandb needs the wandb package: pip install wandb") from None
    return wandb


def wandb_mode(mode: str | None) -> str:
    """logger.mode as wandb should run: the one set, else WANDB_MODE, else online when this machine is logged in
    (WANDB_API_KEY, or the key `wandb login` stores in ~/.netrc for the WANDB_BASE_URL host) and offline otherwise,
    so a run never stops to ask for a key."""
    if mode is not None:
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _wandb_logged_in() else "offline"


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or one wandb cannot read either
        return False


def _init_wandb(cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], run_name: str) -> Any:
    wandb = _import_wandb()
    id_file = run_dir / WANDB_ID_FILE
    run_id = ""
    if os.path.lexists(id_file):
        with open_no_follow(id_file, "r") as f:
            run_id = f.read().strip()
    run_id = run_id or wandb.util.generate_id()
    write_text_atomic(id_file, run_id)
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        name=run_name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        mode=wandb_mode(cfg.mode),
        config=config,
        tags=list(cfg.tags),
    )


class Meter:
    """Throughput since the last log line: steps, their summed loss (on the device), FLOPs and training time."""

    def __init__(
        self,
        tokens_per_step: int,
        peak_flops: float,
        device: torch.device,
        remeasure: Callable[[], float] | None = None,
    ):
        self.tokens_per_step, self.peak_flops = tokens_per_step, peak_flops
        self.device = device
        # an MFU above 100% is a bug: once, the peak is measured again (remeasure() returns the new one) and, if it
        # stays above, a warning says the FLOPs are overcounted
        self.remeasure = remeasure
        self.checked = False
        self.spent = 0.0  # training seconds before the last read()
        self._reset()

    def _reset(self) -> None:
        self.t_last = time.perf_counter()
        self.steps = 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.counted: int | torch.Tensor = 0  # steps whose loss is in loss_sum (a device tensor once ok is given)
        self.flops = 0.0  # the steps' training FLOPs (every rank's)

    def add(self, loss: torch.Tensor, ok: torch.Tensor | None = None, flops: float = 0.0) -> None:
        """One step; ok: a device flag, False for a step skipped on the device (its loss is left out, no sync);
        flops: the step's training FLOPs, every rank's (the MFU's numerator)."""
        self.flops += flops
        self.loss_sum += loss if ok is None else torch.where(ok, loss, 0.0)
        self.counted = self.counted + (1 if ok is None else ok.long())
        self.steps += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside (evaluation, saving) out of the throughput."""
        t0 = time.perf_counter()
        yield
        self.t_last += time.perf_counter() - t0

    def seconds(self) -> float:
        """Training seconds since this meter started, pauses excluded (call it outside paused())."""
        return self.spent + time.perf_counter() - self.t_last

    def read(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """train/loss (mean over steps, reduced over ranks), step time, tokens/s and MFU; then start over."""
        steps = max(self.steps, 1)
        self.spent += time.perf_counter() - self.t_last
        dt = (time.perf_counter() - self.t_last) / steps
        metrics = {
            "train/loss": reduce(self.loss_sum / torch.as_tensor(self.counted).clamp(min=1)).item(),
            "perf/step_time": dt,
            "perf/tokens_per_sec": self.tokens_per_step / dt,
        }
        if self.peak_flops > 0:
            flops_per_s = self.flops / (dt * steps)
            mfu = flops_per_s / self.peak_flops
            if mfu > 1.0 and not self.checked:
                mfu = self._recheck(mfu, flops_per_s)
            metrics["perf/mfu"] = mfu
            metrics["perf/peak_flops"] = self.peak_flops
        self._reset()
        return metrics

    def _recheck(self, mfu: float, flops_per_s: float) -> float:
        """An MFU above 100%: measure the peak again (a cached one may come from a busy machine) and say so; the
        MFU against the new peak."""
        self.checked = True
        old = self.peak_flops
        if self.remeasure is not None:
            self.peak_flops = max(old, self.remeasure())
        new_mfu = flops_per_s / self.peak_flops
        warn(
            f"MFU {mfu:.0%} is above 100%: the peak of {old / 1e9:,.0f} GFLOP/s was too low (measured on a busy "
            f"machine?); measured again: {self.peak_flops / 1e9:,.0f} GFLOP/s, MFU {new_mfu:.0%}"
            + (
                ""
                if new_mfu <= 1.0
                else "; still above 100%: the model's FLOPs per token overcount this run's work (padding, or tokens "
                "counted through parts of the model they never pass)"
            )
        )
        return new_mfu


def format_step(
    metrics: dict[str, Any], step: int, max_steps: int, elapsed: float | None = None, eta: float | None = None
) -> str:
    """One console line: step, loss, lr, gradient norm, update/weight ratio, throughput, MFU, step time, and the
    run's elapsed wall time and estimated time left."""
    parts = [f"step {step:>6}/{max_steps}", f"loss {metrics['train/loss']:.4f}", f"lr {metrics['train/lr']:.2e}"]
    parts.append(f"grad norm {metrics['train/grad_norm']:.2f}")
    if "train/update_ratio" in metrics:
        parts.append(f"update/weight {metrics['train/update_ratio']:.1e}")
    parts.append(f"{metrics['perf/tokens_per_sec']:,.0f} tok/s")
    if "perf/mfu" in metrics:
        parts.append(f"mfu {100 * metrics['perf/mfu']:.1f}%")
    parts.append(f"{1000 * metrics['perf/step_time']:.0f} ms/step")
    if elapsed is not None:
        parts.append(
            f"elapsed {format_duration(elapsed)}" + (f" eta {format_duration(eta)}" if eta is not None else "")
        )
    return " | ".join(parts)


def eta_seconds(
    step: int, max_steps: int, steps_here: int, seconds_here: float, elapsed: float, max_time: float | None
) -> float | None:
    """Wall seconds left: the steps left at this process's pace so far (evaluations and saves included), or the
    time budget left (trainer.max_time) when that ends the run first; None before a step has run here."""
    if steps_here <= 0:
        return None
    left = max(max_steps - step, 0) * seconds_here / steps_here
    return min(left, max(max_time - elapsed, 0.0)) if max_time is not None else left


def format_duration(seconds: float) -> str:
    """12s, 4m05s, 1h02m: a duration as a person reads it on a log line."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
