"""Loss curves of a run as PNGs: train and val loss against tokens seen and against training seconds.

plot_run(run_dir) reads the run's metrics.jsonl (train/loss, val/loss, train/tokens, train/time) and writes
loss_vs_tokens.png and loss_vs_time.png beside it. It is cheap enough to call at every evaluation and plots whatever
the file holds: an empty file, a last line torn by a crash, no val record yet. Figures are drawn on matplotlib's Agg
canvas (off-screen, no display, no pyplot state). The helpers plot_run uses serve train/compare.py too.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

from data.jsonl import parse_jsonl

# x axes: name -> (metrics key, label); training seconds leave evaluation and checkpointing out
X_AXES = {"tokens": ("train/tokens", "tokens seen"), "time": ("train/time", "training time (s)")}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl in file order; [] when there is no file. A line that is not a JSON object
    (the last one of a process killed while writing it) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [record for _, record in parse_jsonl(text, str(path), strict=False)[0] if isinstance(record, dict)]


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): a value worth plotting."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curve(records: list[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of the records holding both keys as finite numbers, in file order."""
    points = [(r[x_key], r[y_key]) for r in records if is_number(r.get(x_key)) and is_number(r.get(y_key))]
    return [x for x, _ in points], [y for _, y in points]


def new_figure(panels: int = 1) -> tuple[Any, list[Any]]:
    """(figure, axes): panels side by side on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: importing train.plots stays cheap
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * panels, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def save_png(fig: Any, path: str | Path) -> Path:
    """Write the figure as a PNG atomically (temp file + rename): a reader never sees half a file.

    The temp file is created new (O_EXCL, a random name) and the rename replaces whatever `path` is: a symbolic link
    there, or at the temp name, is never written through.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write loss_vs_tokens.png and loss_vs_time.png (train and val loss) into run_dir; return the files written.

    An axis without a single loss point yet writes no file. A file that cannot be written is a warning, never an
    exception: a plot is not worth ending a training run for.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    title = f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name  # a sweep's job
    written = []
    for name, (x_key, label) in X_AXES.items():
        train, val = curve(records, x_key, "train/loss"), curve(records, x_key, "val/loss")
        if not train[0] and not val[0]:
            continue
        fig, (ax,) = new_figure()
        if train[0]:
            ax.plot(*train, lw=1, alpha=0.7, label="train")
        if val[0]:
            ax.plot(*val, "o-", ms=3, label="val")
        ax.set(xlabel=label, ylabel="loss (nats/token)", title=f"{title}: loss vs {label}")
        ax.grid(alpha=0.3)
        ax.legend()
        try:
            written.append(save_png(fig, run_dir / f"loss_vs_{name}.png"))
        except OSError as e:
            warnings.warn(f"cannot write loss_vs_{name}.png in {run_dir} ({e}); the run goes on", stacklevel=2)
    return written
