"""Loss-curve PNGs of a run: written from metrics.jsonl as it is, torn, partial or empty."""

from __future__ import annotations

import json
import time
from pathlib import Path

from train.plots import curve, plot_run, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_metrics(run_dir: Path, records: list[dict], tail: str = "") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def train_record(step: int) -> dict:
    return {"step": step, "time": 1.0e9 + step, "train/loss": 5.0 - 0.1 * step, "train/tokens": 128 * step,
            "train/time": 0.5 * step, "perf/tokens_per_sec": 256.0}  # fmt: skip


def val_record(step: int) -> dict:
    return {"step": step, "time": 1.0e9 + step, "val/loss": 5.1 - 0.1 * step, "val/ppl": 1.0,
            "train/tokens": 128 * step, "train/time": 0.5 * step}  # fmt: skip


def test_plots_a_torn_metrics_file(tmp_path):
    records = [val_record(0), *[train_record(s) for s in range(1, 5)], val_record(4), {"step": 4, "event": "oom"}]
    write_metrics(tmp_path / "run", records, tail='{"step": 5, "train/lo')  # killed mid-line
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == len(records)
    written = plot_run(tmp_path / "run")
    assert [p.name for p in written] == ["loss_vs_tokens.png", "loss_vs_time.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 1000
    assert not list((tmp_path / "run").glob(".*tmp*"))  # written atomically: no temp file left


def test_no_val_records_yet_still_plots_train_loss(tmp_path):
    write_metrics(tmp_path / "run", [train_record(1), train_record(2)])
    assert len(plot_run(tmp_path / "run")) == 2
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert curve(records, "train/tokens", "val/loss") == ([], [])
    assert curve(records, "train/time", "train/loss") == ([0.5, 1.0], [4.9, 4.8])


def test_empty_or_missing_metrics_write_nothing(tmp_path):
    assert plot_run(tmp_path / "no_run") == []
    write_metrics(tmp_path / "empty", [], tail="")
    assert plot_run(tmp_path / "empty") == []
    write_metrics(tmp_path / "torn", [], tail='{"step": 0, "val/lo')
    assert plot_run(tmp_path / "torn") == [] and not list((tmp_path / "torn").glob("*.png"))


def test_nonfinite_and_missing_values_are_skipped(tmp_path):
    records = [train_record(1), {**train_record(2), "train/loss": float("nan")}, {"step": 3, "train/loss": 4.0}]
    write_metrics(tmp_path / "run", records)
    assert curve(read_metrics(tmp_path / "run" / "metrics.jsonl"), "train/tokens", "train/loss") == ([128], [4.9])
    assert len(plot_run(tmp_path / "run")) == 2


def test_cheap_enough_for_every_evaluation(tmp_path):
    records = [r for s in range(1, 1001) for r in ([train_record(s)] + ([val_record(s)] if s % 50 == 0 else []))]
    write_metrics(tmp_path / "run", records)
    plot_run(tmp_path / "run")  # the first call imports matplotlib
    start = time.perf_counter()
    plot_run(tmp_path / "run")
    assert time.perf_counter() - start < 1.0  # two figures of 1000 steps; typically ~0.2 s
