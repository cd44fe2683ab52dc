"""The table of a multirun's jobs, printed and written into the sweep directory when `python -m train -m ...` ends.

SweepSummary is the Hydra callback configs/hydra/default.yaml registers. It reads each job directory
(<sweep dir>/<job num>: .hydra/overrides.yaml, config.yaml, metrics.jsonl) into one row: the swept overrides, steps,
best and final val loss, median tokens/s, training time and a status. The overrides every job shares are shown once
above the table. The table goes to stdout and summary.md, the rows to summary.json. A summary never fails a finished
sweep: a job without metrics is a "no metrics" row, and any other error one `warning:` line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nanoloom.files import write_text_atomic
from train.compare import flatten, median_tokens_per_sec, show_value, val_records
from train.log import warn
from train.plots import is_number, read_metrics

PER_RUN = ("run_name", "paths.")  # config keys that differ between any two jobs: not what a sweep varies
COLUMNS = ("steps", "best val loss", "final val loss", "tokens/s", "train time", "status")


@dataclass
class Summary:
    """A sweep's rows in job order, and its overrides: those that vary are columns, the others are shown once."""

    sweep_dir: Path
    rows: list[dict[str, Any]]  # summary.json: job, dir, overrides, steps, losses, tokens_per_sec, ... best
    shown: list[dict[str, str]]  # per row, override key -> value as given on the command line
    varying: list[str]  # override keys whose values differ between jobs
    common: list[str]  # "key=value" overrides every job shares


# ----------------------------------------------------------------------------------------------------------------
# reading the sweep


def job_dirs(sweep_dir: Path, since: float | None = None) -> list[Path]:
    """The sweep's job directories (<sweep dir>/<job num>, configs/hydra/default.yaml), by job number.

    since: a time.time() when the sweep started; job directories no file of which was written since are left out
    (a sweep run again into the same hydra.sweep.dir with fewer jobs leaves the old ones there).
    """
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if since is not None:
        jobs = [p for p in jobs if _last_written(p) >= since]
    return sorted(jobs, key=lambda p: int(p.name))


def _last_written(job_dir: Path) -> float:
    """The newest modification time of a job directory, its Hydra files and its run files."""
    files = (job_dir, job_dir / ".hydra" / "overrides.yaml", job_dir / "config.yaml", job_dir / "metrics.jsonl")
    return max(f.stat().st_mtime for f in files if f.exists())


def read_yaml(path: Path) -> Any:
    """A YAML file's content; None when it is missing or unreadable."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def job_row(job_dir: Path, config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """One job's row: its numbers from metrics.jsonl (read as compare.py does); "no metrics" when it has no record."""
    try:
        records = read_metrics(job_dir / "metrics.jsonl")
    except OSError:  # a directory, or no permission: nothing to show either
        records = []
    val = val_records(records)
    steps = [r["step"] for r in records if is_number(r.get("step"))]
    times = [r["train/time"] for r in records if is_number(r.get("train/time"))]
    max_steps = config.get("trainer.max_steps")
    if not records:
        status = "no metrics"
    elif steps and is_number(max_steps) and max(steps) < max_steps:  # stopped before trainer.max_steps
        status = "time budget" if config.get("trainer.max_time") is not None else "incomplete"
    else:
        status = "done"
    return {
        "job": int(job_dir.name),
        "dir": str(job_dir.absolute()),
        "overrides": overrides,
        "steps": max(steps) if steps else None,
        "best_val_loss": min(r["val/loss"] for r in val) if val else None,
        "final_val_loss": val[-1]["val/loss"] if val else None,
        "tokens_per_sec": median_tokens_per_sec(records),
        "train_time": max(times) if times else None,
        "status": status,
    }


def job_overrides(job_dir: Path) -> dict[str, str] | None:
    """key -> value text of the job's command-line overrides (Hydra's .hydra/overrides.yaml); None without that file."""
    overrides = read_yaml(job_dir / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        return None
    return dict(str(o).partition("=")[::2] for o in overrides)


def typed(key: str, text: str, config: dict[str, Any]) -> Any:
    """An override's value as the job's config.yaml holds it (0.001, not "1e-3"); the text for a group choice."""
    return config.get(key.lstrip("+~"), text)


def summarize(sweep_dir: Path, since: float | None = None) -> Summary:
    """Read every job directory of a sweep into its row; mark the lowest best val loss (row "best": true).

    A job without .hydra/overrides.yaml (hydra.output_subdir=null) shows the config values that differ between the
    jobs' config.yaml files instead.
    """
    dirs = job_dirs(sweep_dir, since)
    configs = [flatten(c) if isinstance(c := read_yaml(d / "config.yaml"), dict) else {} for d in dirs]
    shown = [job_overrides(d) for d in dirs]
    if any(s is None for s in shown):
        keys = sorted({k for c in configs for k in c if not k.startswith(PER_RUN)})
        differ = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs if c}) > 1]
        fallback = [{k: show_value(c[k]) for k in differ if k in c} for c in configs]
        shown = [s if s is not None else f for s, f in zip(shown, fallback)]

    rows = [job_row(d, c, {k: typed(k, v, c) for k, v in s.items()}) for d, c, s in zip(dirs, configs, shown)]
    losses = [r["best_val_loss"] for r in rows if r["best_val_loss"] is not None]
    for r in rows:
        r["best"] = bool(losses) and r["best_val_loss"] == min(losses)

    keys = list(dict.fromkeys(k for s in shown for k in s))  # in command-line order
    varying = [k for k in keys if len({s.get(k) for s in shown}) > 1]
    common = [f"{k}={v}" if v else k for k, v in shown[0].items() if k not in varying] if shown else []
    return Summary(sweep_dir, rows, shown, varying, common)


# ----------------------------------------------------------------------------------------------------------------
# output


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _duration(seconds: float | None) -> str:
    """Training seconds as 12.34s, 5m07s or 3h12m."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes = int(seconds // 60)
    return f"{minutes}m{int(seconds % 60):02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def cells(summary: Summary, markdown: bool = False) -> list[list[str]]:
    """The table's header and rows as text; the best val loss marked with * (bold in markdown)."""
    table = [["job", *summary.varying, *COLUMNS]]
    for row, shown in zip(summary.rows, summary.shown):
        best = _number(row["best_val_loss"], ".4f")
        if row["best"]:
            best = f"**{best}**" if markdown else f"{best} *"
        elif not markdown:
            best += "  "  # the loss digits stay aligned with the marked row's
        table.append(
            [
                str(row["job"]),
                *(shown.get(k, "-") for k in summary.varying),
                _number(row["steps"], "d"),
                best,
                _number(row["final_val_loss"], ".4f"),
                _number(row["tokens_per_sec"], ",.0f"),
                _duration(row["train_time"]),
                row["status"],
            ]
        )
    return table


def table(summary: Summary) -> str:
    """The printed report: sweep directory, shared overrides, an aligned table of the jobs, the best-mark legend."""
    rows = cells(summary)
    left = {*range(1, 1 + len(summary.varying)), len(rows[0]) - 1}  # overrides and status; numbers to the right
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    head = [f"sweep summary: {summary.sweep_dir} ({len(summary.rows)} jobs)"]
    if summary.common:
        head.append(f"overrides of every job: {' '.join(summary.common)}")
    legend = ["* lowest best val loss"] if any(r["best"] for r in summary.rows) else []
    return "\n".join([*head, line(rows[0]), line(["-" * w for w in widths]), *map(line, rows[1:]), *legend])


def markdown(summary: Summary) -> str:
    """summary.md: the same table as a markdown table."""
    rows = [[c.replace("|", "\\|") for c in r] for r in cells(summary, markdown=True)]
    align = ["---:" if c in ("job", *COLUMNS[:-1]) else ":---" for c in rows[0]]
    lines = ["# Sweep summary", "", f"`{summary.sweep_dir}`: {len(summary.rows)} jobs."]
    if summary.common:
        lines.append("Overrides of every job: " + " ".join(f"`{o}`" for o in summary.common))
    lines += ["", *("| " + " | ".join(r) + " |" for r in [rows[0], align, *rows[1:]])]
    if any(r["best"] for r in summary.rows):
        lines += ["", "Bold: the lowest best val loss."]
    return "\n".join(lines) + "\n"


def report(sweep_dir: Path, since: float | None = None) -> Summary | None:
    """Print the sweep's table and write summary.md and summary.json into sweep_dir; nothing without job dirs.
    since: when the sweep started (job_dirs)."""
    summary = summarize(sweep_dir, since)
    if not summary.rows:  # e.g. a dry-run sweep, which leaves no run directory
        return None
    print(table(summary), flush=True)
    write_text_atomic(sweep_dir / "summary.md", markdown(summary))
    write_text_atomic(sweep_dir / "summary.json", json.dumps(summary.rows, indent=2) + "\n")
    print(f"summary: {sweep_dir / 'summary.md'}, {sweep_dir / 'summary.json'}", flush=True)
    return summary


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, report() on its sweep directory. A single run shows nothing.

    Hydra calls on_multirun_end only when every job returned: a failing job ends the sweep without a summary.
    """

    started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times can lag the clock by a tick; the old jobs are minutes older

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            report(Path(config.hydra.sweep.dir), self.started)
        except Exception as e:  # the sweep's runs are done and saved: a failed summary must not look like a failure
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            warn(f"no sweep summary ({type(e).__name__}: {message})")
