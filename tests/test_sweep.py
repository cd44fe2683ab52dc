"""The table a multirun ends with (train/sweep.py): a real two-job sweep, a hand-written sweep dir, the callback."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import CONFIG_DIR, tiny_run_overrides, zen_of_python

from train.config import register_schema
from train.sweep import SweepSummary, markdown, summarize, table

ROOT = Path(__file__).resolve().parents[1]


def records(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def table_rows(out: str) -> dict[int, list[str]]:
    """job number -> the words of its row in a printed table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("job  ")) + 2  # past the header and its rule
    rows = {}
    for line in lines[start:]:
        words = line.split()
        if not words or not words[0].isdigit():
            break
        rows[int(words[0])] = words
    return rows


@pytest.mark.slow
def test_a_multirun_ends_with_the_table_of_its_jobs(tmp_path):
    small = {"trainer.max_steps": 4, "trainer.eval_interval": 2, "trainer.save_interval": 0, "samples.prompts": "[]"}
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **small)
    overrides = [o for o in overrides if not o.startswith(("paths.run_dir=", "run_name="))]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "train", "-m", *overrides, "optim.lr=1e-3,3e-3", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning:" not in proc.stderr, proc.stderr[-2000:]
    print(proc.stdout[proc.stdout.index("sweep summary:") :])  # the table, for -s

    assert f"sweep summary: {sweep} (2 jobs)" in proc.stdout
    assert "overrides of every job: debug=default " in proc.stdout and "trainer.max_steps=4" in proc.stdout
    printed = table_rows(proc.stdout)
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["job"] for r in rows] == [0, 1] == sorted(printed)
    assert [r["overrides"]["optim.lr"] for r in rows] == [0.001, 0.003]  # numbers, from each job's config.yaml
    best_of_sweep = min(min(r["val/loss"] for r in records(sweep / str(job)) if "val/loss" in r) for job in (0, 1))
    for row in rows:
        logged = records(sweep / str(row["job"]))
        val = [r["val/loss"] for r in logged if "val/loss" in r]
        speed = statistics.median(r["perf/tokens_per_sec"] for r in logged if "perf/tokens_per_sec" in r)
        assert row["best_val_loss"] == min(val) and row["final_val_loss"] == val[-1]
        assert row["tokens_per_sec"] == pytest.approx(speed, rel=1e-12)
        assert row["train_time"] == max(r["train/time"] for r in logged if "train/time" in r) > 0
        assert (row["steps"], row["status"], row["best"]) == (4, "done", min(val) == best_of_sweep)
        words = printed[row["job"]]
        assert words[1:4] == [str(row["overrides"]["optim.lr"]), "4", f"{min(val):.4f}"]
        assert (words[4] == "*") == row["best"] and f"{speed:,.0f}" in words and words[-1] == "done"
    assert sum(r["best"] for r in rows) == 1
    md = (sweep / "summary.md").read_text()
    assert "| job | optim.lr | steps | best val loss |" in md and f"**{best_of_sweep:.4f}**" in md


def write_job(sweep: Path, num: int, overrides: list[str], lines: list[str] | None, config: dict | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if config is not None:
        (job / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    if lines is not None:
        (job / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_summary_of_a_sweep_dir_marks_the_best_and_a_job_without_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    val = '{{"step": {}, "val/loss": {}, "train/tokens": {}, "train/time": {}}}'
    train = '{{"step": {}, "train/loss": 3.0, "perf/tokens_per_sec": {}, "train/tokens": {}, "train/time": {}}}'
    config = {"trainer": {"max_steps": 4}, "optim": {"lr": 0.001}, "run_name": "a", "paths": {"run_dir": "x"}}
    write_job(sweep, 0, ["trainer.max_steps=4", "optim.lr=1e-3"], [
        val.format(0, 5.0, 0, 0.0), train.format(2, 100.0, 64, 1.5), val.format(2, 2.0, 64, 1.5),
        train.format(4, 600.0, 128, 3.0), '{"step": 4, "event": "out_of_memory"}', val.format(4, 2.5, 128, 3.0),
    ], config)  # fmt: skip
    write_job(sweep, 2, ["trainer.max_steps=4", "optim.lr=3e-3"], [
        val.format(0, 5.0, 0, 0.0), train.format(1, 50.0, 32, 0.5), train.format(2, 200.0, 64, 1.0),
        train.format(3, 300.0, 96, 1.5), val.format(3, 1.75, 96, 1.5), '{"step": 4, "train/lo',  # torn by a kill
    ], {**config, "optim": {"lr": 0.003}})  # fmt: skip
    write_job(sweep, 10, ["trainer.max_steps=4", "optim.lr=1e-2"], None, None)  # failed before writing anything
    (sweep / ".submitit").mkdir()  # not a job

    summary = summarize(sweep)
    rows = {r["job"]: r for r in summary.rows}
    assert [r["job"] for r in summary.rows] == [0, 2, 10]  # by number, not by name
    assert summary.varying == ["optim.lr"] and summary.common == ["trainer.max_steps=4"]
    assert rows[0]["overrides"] == {"trainer.max_steps": 4, "optim.lr": 0.001}
    assert rows[10]["overrides"] == {"trainer.max_steps": "4", "optim.lr": "1e-2"}  # no config.yaml: as given
    assert rows[0] | {"overrides": None} == {
        "job": 0, "dir": str((sweep / "0").absolute()), "overrides": None, "steps": 4, "best_val_loss": 2.0,
        "final_val_loss": 2.5, "tokens_per_sec": 350.0, "train_time": 3.0, "status": "done", "best": False,
    }  # fmt: skip
    assert (rows[2]["best_val_loss"], rows[2]["final_val_loss"], rows[2]["tokens_per_sec"]) == (1.75, 1.75, 200.0)
    assert (rows[2]["steps"], rows[2]["status"], rows[2]["best"]) == (3, "incomplete", True)
    assert rows[10] | {"overrides": None} == {
        "job": 10, "dir": str((sweep / "10").absolute()), "overrides": None, "steps": None, "best_val_loss": None,
        "final_val_loss": None, "tokens_per_sec": None, "train_time": None, "status": "no metrics", "best": False,
    }  # fmt: skip
    json.dumps(summary.rows, allow_nan=False)  # summary.json's rows are plain JSON

    printed = table(summary)
    words = table_rows(printed)
    assert words[0] == ["0", "1e-3", "4", "2.0000", "2.5000", "350", "3.00s", "done"]
    assert words[2] == ["2", "3e-3", "3", "1.7500", "*", "1.7500", "200", "1.50s", "incomplete"]
    assert words[10] == ["10", "1e-2", "-", "-", "-", "-", "-", "no", "metrics"]
    lines = printed.splitlines()
    assert lines[0] == f"sweep summary: {sweep} (3 jobs)" and lines[1] == "overrides of every job: trainer.max_steps=4"
    header, _, job0, job2, job10 = lines[2:7]
    assert job0.index("2.0000") == job2.index("1.7500") and job0.index("350") == job2.index("200")  # right-aligned
    assert header.index("status") == job0.index("done") == job2.index("incomplete") == job10.index("no metrics")
    assert "| 2 | 3e-3 | 3 | **1.7500** | 1.7500 | 200 | 1.50s | incomplete |" in markdown(summary)

    # the sweep runs again into the same directory, job 2 alone: job 0 and 10 are leftovers of the first one
    for path in [p for p in sweep.rglob("*")] + [sweep / "0", sweep / "10"]:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    started = time.time() - 1
    write_job(sweep, 2, ["trainer.max_steps=4", "optim.lr=3e-3"], [val.format(4, 1.5, 128, 2.0)],
              {**config, "optim": {"lr": 0.003}, "trainer": {"max_steps": 5, "max_time": 2.0}})  # fmt: skip
    again = summarize(sweep, since=started)
    assert [(r["job"], r["best_val_loss"], r["status"]) for r in again.rows] == [(2, 1.5, "time budget")]


def test_without_hydra_override_files_the_differing_config_values_are_shown(tmp_path):
    sweep = tmp_path / "sweep"
    for num, lr in ((0, 0.001), (1, 0.003)):  # hydra.output_subdir=null: no .hydra/ in a job directory
        config = {"optim": {"lr": lr, "name": "adamw"}, "run_name": f"r{num}", "paths": {"run_dir": f"x/{num}"}}
        (sweep / str(num)).mkdir(parents=True)
        (sweep / str(num) / "config.yaml").write_text(json.dumps(config))
    summary = summarize(sweep)
    assert summary.varying == ["optim.lr"] and summary.common == []  # run_name and paths.* differ in every sweep
    assert [r["overrides"] for r in summary.rows] == [{"optim.lr": 0.001}, {"optim.lr": 0.003}]
    assert [r["status"] for r in summary.rows] == ["no metrics"] * 2 and not any(r["best"] for r in summary.rows)
    assert "* lowest best val loss" not in table(summary)


def test_the_callback_is_registered_and_a_failed_summary_is_one_warning(tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.sweep.dir={tmp_path / 'gone'}"], return_hydra_config=True)
    callback = instantiate(cfg.hydra.callbacks.sweep_summary)
    assert isinstance(callback, SweepSummary)
    callback.on_multirun_end(config=cfg, config_name="train")  # the sweep dir does not exist
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("warning: no sweep summary (FileNotFoundError: ")
