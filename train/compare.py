"""`nanoloom compare runs=<run dirs or globs> [out=DIR] [x=tokens|time|both]`: runs' val loss, grouped by config.

Runs whose resolved configs (config.yaml) are equal except for the seed (trainer.seed) and per-run fields
(run_name, paths.*, resume, logger.*) form a group: repeats of one experiment. Each group is named by the config
keys that differ between the groups ("optim.lr=0.001"). The command writes one PNG (val loss against tokens and
against training seconds; per group the mean curve and, with >= 2 runs, its 95% confidence band from Student's t),
prints one table (per group: runs, best val loss as mean +- 95% CI half-width, final val loss, tokens/s) and, with
exactly two groups, the difference of their val loss at equal tokens and at equal training seconds, each with the
p-value of Welch's t-test (unequal variances). The last stdout line is all of it as one JSON object. x= picks the
PNG's panels (default both); out= its folder (default: the one holding the runs).
A user error (a glob matching nothing, a run without val records) is one `error: ...` line and exit status 2.
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from train.plots import X_AXES, is_number, new_figure, read_metrics, save_png

IGNORED_KEYS = ("trainer.seed", "run_name", "resume")  # differ between repeats of one experiment
IGNORED_PREFIXES = ("paths.", "logger.")  # where a run writes and logs: not what it trains
PLOT_NAME = "compare.png"


@dataclass
class RunCurve:
    """One run directory as compare reads it: its flattened config and val curve (not train.loop.Run, the parts
    of a run in progress)."""

    path: Path
    config: dict[str, Any]  # "optim.lr" -> 0.001
    tokens: np.ndarray  # (E,) train/tokens at each val record, ascending
    time: np.ndarray  # (E,) train/time (training seconds) at each val record
    loss: np.ndarray  # (E,) val/loss
    tokens_per_sec: float | None  # median perf/tokens_per_sec of the train records

    @property
    def seed(self) -> Any:
        return self.config.get("trainer.seed")

    def val_at(self, axis: str, x: float) -> float:
        """Val loss at x tokens or training seconds, interpolated linearly between evaluations."""
        return float(np.interp(x, getattr(self, axis), self.loss))


@dataclass
class Group:
    name: str
    runs: list[RunCurve]


# ----------------------------------------------------------------------------------------------------------------
# runs and groups


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys; lists and scalars are leaves."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def load_run(path: Path) -> RunCurve:
    """A run directory's config and val curve; a one-line ValueError when it is not a run or never evaluated."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} has no config.yaml: not a run directory (python -m train writes one)") from None
    except yaml.YAMLError as e:
        raise ValueError(f"cannot read {path / 'config.yaml'} ({str(e).splitlines()[0]}); is it a run's?") from None
    records = read_metrics(path / "metrics.jsonl")
    val = val_records(records)
    if not val:
        raise ValueError(
            f"{path} has no val record in metrics.jsonl; compare runs that evaluated (trainer.eval_interval > 0)"
        )
    return RunCurve(
        path=path,
        config=flatten(config if isinstance(config, dict) else {}),
        tokens=np.array([r["train/tokens"] for r in val], dtype=np.float64),
        time=np.array([r["train/time"] for r in val], dtype=np.float64),
        loss=np.array([r["val/loss"] for r in val], dtype=np.float64),
        tokens_per_sec=median_tokens_per_sec(records),
    )


def val_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The val records of a metrics.jsonl (val/loss, train/tokens and train/time all numbers), in token order."""
    val = [r for r in records if all(is_number(r.get(k)) for k in ("val/loss", "train/tokens", "train/time"))]
    return sorted(val, key=lambda r: r["train/tokens"])


def median_tokens_per_sec(records: list[dict[str, Any]]) -> float | None:
    """Median perf/tokens_per_sec of the train records; None when there is none."""
    speeds = [r["perf/tokens_per_sec"] for r in records if is_number(r.get("perf/tokens_per_sec"))]
    return float(np.median(speeds)) if speeds else None


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories from paths and globs, in the order given, each once. A glob keeps the directories it matches
    that hold a metrics.jsonl; a glob matching none is an error."""
    found: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(pattern)) if (Path(m) / "metrics.jsonl").is_file()]
            if not matches:
                raise ValueError(f"{pattern!r} matches no run directory; pass run directories or a glob of them")
        else:
            if not Path(pattern).is_dir():
                raise ValueError(f"{pattern!r} is not a directory; pass run directories (runs/<run_name>) or globs")
            matches = [Path(pattern)]
        found += [m for m in matches if m.resolve() not in {f.resolve() for f in found}]
    return found


def group_runs(runs: list[RunCurve]) -> tuple[list[Group], list[str]]:
    """(groups in order of first appearance, the config keys that differ between them)."""
    by_config: dict[str, list[RunCurve]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run.config.items() if not ignored(k)}, sort_keys=True, default=str)
        by_config.setdefault(key, []).append(run)
    members = list(by_config.values())
    keys = sorted({k for run in runs for k in run.config if not ignored(k)})
    differs = [k for k in keys if len({json.dumps(g[0].config.get(k), default=str) for g in members}) > 1]
    labels = [", ".join(f"{k}={show_value(g[0].config.get(k))}" for k in differs) or "all runs" for g in members]
    groups = [Group(label, g) for label, g in zip(labels, members)]
    return groups, differs


def show_value(value: Any) -> str:
    """A config value as a label: strings as they are, anything else as JSON (lists, numbers, null)."""
    return value if isinstance(value, str) else json.dumps(value)


# ----------------------------------------------------------------------------------------------------------------
# statistics


def mean_ci(values: list[float] | np.ndarray, axis: int = 0) -> tuple[Any, Any]:
    """Mean and half-width of its 95% confidence interval (Student's t with n - 1 degrees of freedom: mean +- t *
    s / sqrt(n), s the sample standard deviation); the half-width is None for a single value."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    n = a.shape[axis]
    mean = a.mean(axis=axis)
    if n < 2:
        return mean, None
    return mean, stats.t.ppf(0.975, n - 1) * a.std(axis=axis, ddof=1) / math.sqrt(n)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (no equal-variance assumption); None below two runs a side, or when
    both sides have no spread at all."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def mean_curve(group: Group, axis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(x, mean val loss, 95% CI half-width or None) of a group along tokens or time.

    x: the evaluation points every run shares (same batch size and eval interval: the usual case for tokens),
    else 64 points over the range every run covers, each run's curve interpolated there.
    """
    xs = [getattr(run, axis) for run in group.runs]
    lo, hi = max(x[0] for x in xs), min(x[-1] for x in xs)
    shared = sorted(v for v in set.intersection(*(set(x.tolist()) for x in xs)) if lo <= v <= hi)
    grid = np.array(shared) if len(shared) >= 2 else np.linspace(lo, hi, 64 if hi > lo else 1)
    losses = np.stack([np.interp(grid, getattr(run, axis), run.loss) for run in group.runs])  # (runs, points)
    mean, half = mean_ci(losses, axis=0)
    return grid, mean, half


def difference(a: Group, b: Group, axis: str) -> dict[str, Any]:
    """Val loss of b minus a at one x for both: tokens, the last count every run evaluated at (else the smallest
    last count, interpolated); time, the last training second every run reached, each run's curve interpolated."""
    runs = a.runs + b.runs
    shared = set.intersection(*(set(run.tokens.tolist()) for run in runs)) if axis == "tokens" else set()
    x = max(shared) if shared else min(float(getattr(run, axis)[-1]) for run in runs)
    va, vb = [run.val_at(axis, x) for run in a.runs], [run.val_at(axis, x) for run in b.runs]
    return {
        axis: x,
        "val_loss": [float(np.mean(va)), float(np.mean(vb))],
        "difference": float(np.mean(vb) - np.mean(va)),
        "p_value": welch_p(va, vb),
        "values": [va, vb],
    }


def summarize(group: Group) -> dict[str, Any]:
    """A group's row: runs, best and final val loss (mean, 95% CI half-width), mean tokens/s."""
    best, best_ci = mean_ci([run.loss.min() for run in group.runs])
    final, final_ci = mean_ci([run.loss[-1] for run in group.runs])
    speeds = [run.tokens_per_sec for run in group.runs if run.tokens_per_sec is not None]
    return {
        "name": group.name,
        "runs": [str(run.path) for run in group.runs],
        "seeds": [run.seed for run in group.runs],
        "best_val_loss": {"mean": float(best), "ci95": _float(best_ci)},
        "final_val_loss": {"mean": float(final), "ci95": _float(final_ci)},
        "tokens_per_sec": float(np.mean(speeds)) if speeds else None,
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# ----------------------------------------------------------------------------------------------------------------
# output


def plot_groups(groups: list[Group], axes: list[str], path: Path) -> Path:
    """One PNG: a panel per x axis, per group its mean val curve and 95% band."""
    fig, panels = new_figure(len(axes))
    for ax, axis in zip(panels, axes):
        for i, group in enumerate(groups):
            x, mean, half = mean_curve(group, axis)
            color = f"C{i % 10}"
            ax.plot(
                x, mean, "o-" if len(x) < 20 else "-", ms=3, color=color, label=f"{group.name} (n={len(group.runs)})"
            )
            if half is not None:
                ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.2, lw=0)
        ax.set(xlabel=X_AXES[axis][1], ylabel="val loss (nats/token)", title=f"val loss vs {X_AXES[axis][1]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(fig, path)


def table(result: dict[str, Any]) -> str:
    """The printed report: one row per group, then the two-group differences."""

    def pm(stat: dict[str, Any]) -> str:
        return f"{stat['mean']:.4f}" + (f" ± {stat['ci95']:.4f}" if stat["ci95"] is not None else "")

    width = max(len("group"), *(len(g["name"]) for g in result["groups"]))
    lines = [f"{'group':<{width}}  runs  {'best val loss (95% CI)':<24}{'final val loss (95% CI)':<25}tokens/s"]
    for g in result["groups"]:
        speed = f"{g['tokens_per_sec']:,.0f}" if g["tokens_per_sec"] is not None else "n/a"
        lines.append(
            f"{g['name']:<{width}}  {len(g['runs']):>4}  {pm(g['best_val_loss']):<24}"
            f"{pm(g['final_val_loss']):<25}{speed}"
        )
    c = result["comparison"]
    if c is not None:
        for axis, unit in (("tokens", "tokens"), ("time", "training seconds")):
            d = c[f"at_{axis}"]
            p = f"{d['p_value']:.3g}" if d["p_value"] is not None else "n/a (needs >= 2 runs per group)"
            lines.append(
                f"at {d[axis]:,.6g} {unit}: {c['b']} - {c['a']} = {d['difference']:+.4f} val loss "
                f"({d['val_loss'][1]:.4f} vs {d['val_loss'][0]:.4f}), Welch's t-test p = {p}"
            )
    return "\n".join(lines)


def compare(patterns: list[str], out: str | None = None, x: str = "both") -> dict[str, Any]:
    """Load, group and compare the runs; write the PNG. Returns the result printed as JSON."""
    runs = [load_run(path) for path in find_runs(patterns)]
    groups, differs = group_runs(runs)
    out_dir = Path(out) if out is not None else Path(os.path.commonpath([r.path.absolute().parent for r in runs]))
    axes = list(X_AXES) if x == "both" else [x]
    plot = plot_groups(groups, axes, out_dir / PLOT_NAME)
    comparison = None
    if len(groups) == 2:
        a, b = groups
        comparison = {
            "a": a.name,
            "b": b.name,
            "at_tokens": difference(a, b, "tokens"),
            "at_time": difference(a, b, "time"),
        }
    return {"groups": [summarize(g) for g in groups], "differs": differs, "comparison": comparison, "plot": str(plot)}


USAGE = """\
usage: nanoloom compare runs=<run dir or glob>[,...] [out=<dir>] [x=tokens|time|both]
       nanoloom compare runs/sweep/*            (bare paths are runs too: a shell-expanded glob works)
       (python -m train.compare ... is the same command)

Groups the runs by config (seeds of one experiment together), plots the val loss of each group with a 95% band
(compare.png in out=, default the folder holding the runs), prints a table and, for two groups, Welch's t-test at
equal tokens and equal training time; the last line is the result as JSON.
runs= takes Hydra's list syntax too: runs='[runs/a,runs/b]'; quote a glob (runs='runs/sweep/*') to let this
command expand it.
options: --cfg  print the composed config and exit;  -h, --help  this message
a user error is one "error: ..." line (exit status 2); NANOLOOM_DEBUG=1 shows its traceback instead
"""


@dataclass
class CompareConfig:
    """The schema of configs/compare.yaml."""

    runs: Any = None  # a run directory or glob, or a list of them
    out: Optional[str] = None  # folder for compare.png; null: the one holding the runs
    x: str = "both"  # tokens | time | both: the plot's x axes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of `nanoloom compare` / `python -m train.compare`: prints the table and the JSON line, returns the
    result."""
    from nanoloom.cli import run_command  # Hydra: the command line's business, not the comparison's

    args = sys.argv[1:] if argv is None else list(argv)
    bare = [a for a in args if "=" not in a and not a.startswith("-")]  # shell-expanded run paths
    if bare:
        quoted = ",".join(f"'{b}'" for b in bare)
        args = [a for a in args if a not in bare] + [f"runs=[{quoted}]"]

    def body(cfg: CompareConfig) -> dict[str, Any]:
        patterns = [cfg.runs] if isinstance(cfg.runs, str) else list(cfg.runs or [])
        if not patterns:
            raise ValueError("runs= is required: pass runs=<run dir or glob>[,...] (or the run paths themselves)")
        if cfg.x not in ("tokens", "time", "both"):
            raise ValueError(f"x={cfg.x!r} is not one of tokens, time, both")
        result = compare([str(p) for p in patterns], cfg.out, cfg.x)
        print(table(result))
        print(f"plot: {result['plot']}")
        print(json.dumps(result), flush=True)
        return result

    results = run_command("compare", CompareConfig, body, args, USAGE)
    return results[0] if results else {}


if __name__ == "__main__":
    main()
