"""python -m train.compare on synthetic run directories: grouping by seed, 95% CIs, Welch's t-test, the PNG."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

from train.compare import main

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T_975_DF2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (from a t table)
STEPS = (0, 10, 20, 30)  # evaluations; 128 tokens per step


def fake_run(root: Path, name: str, lr: float, seed: int, final: float, seconds_per_step: float = 0.1) -> Path:
    """A run directory as python -m train leaves it: config.yaml and metrics.jsonl whose val loss falls linearly
    from 5.0 at step 0 to `final` at step 30."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "model": {"kind": "gpt", "n_layer": 2, "n_embd": 16},
        "optim": {"name": "adamw", "lr": lr},
        "trainer": {"seed": seed, "batch_size": 4, "max_steps": 30},
        "logger": {"name": "none", "tags": [name]},
        "paths": {"run_dir": str(run), "cache_dir": ".cache"},
        "run_name": name,
        "resume": None,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = []
    for step in range(31):
        common = {"step": step, "time": 1.0e9 + step, "train/tokens": 128 * step, "train/time": seconds_per_step * step}
        if step:
            records.append({**common, "train/loss": 5.0, "perf/tokens_per_sec": 128 / seconds_per_step})
        if step in STEPS:
            records.append({**common, "val/loss": 5.0 - (5.0 - final) * step / 30, "val/ppl": 1.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def run_main(capsys, *args: str) -> tuple[int, dict | None, str, str]:
    """main() in-process: (exit status, result, stdout, stderr)."""
    try:
        result, code = main(list(args)), 0
    except SystemExit as e:
        result, code = None, e.code
    out, err = capsys.readouterr()
    return code, result, out, err


def png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">I", data[16:20])[0]  # IHDR: width, height


def two_groups(root: Path, finals_a: list[float], finals_b: list[float], slow_b: bool = False) -> None:
    for seed, final in enumerate(finals_a):
        fake_run(root, f"a{seed}", 0.001, seed, final)
    for seed, final in enumerate(finals_b):
        fake_run(root, f"b{seed}", 0.003, seed, final, seconds_per_step=0.2 if slow_b else 0.1)


def test_groups_runs_that_differ_only_by_seed(tmp_path, capsys):
    two_groups(tmp_path / "runs", [2.0, 2.2, 2.4], [1.9, 2.0, 2.1])
    fake_run(tmp_path / "runs", "c0", 0.01, 0, 3.0)  # a third config, one run
    code, result, out, _ = run_main(capsys, str(tmp_path / "runs" / "*"))
    assert code == 0
    names = [g["name"] for g in result["groups"]]
    assert names == ["optim.lr=0.001", "optim.lr=0.003", "optim.lr=0.01"] and result["differs"] == ["optim.lr"]
    assert [len(g["runs"]) for g in result["groups"]] == [3, 3, 1] and result["groups"][0]["seeds"] == [0, 1, 2]
    assert result["comparison"] is None  # only for exactly two groups
    assert json.loads(out.strip().splitlines()[-1]) == result  # the last stdout line is the JSON
    assert "optim.lr=0.003" in out and "2.2000 ± " in out


def test_ci_half_width_and_welch_p_value(tmp_path, capsys):
    two_groups(tmp_path / "runs", [2.0, 2.2, 2.4], [1.9, 2.0, 2.25])
    code, result, _, _ = run_main(capsys, *(str(p) for p in sorted((tmp_path / "runs").iterdir())))
    assert code == 0
    best = result["groups"][0]["best_val_loss"]
    assert best["mean"] == pytest.approx(2.2)
    assert best["ci95"] == pytest.approx(T_975_DF2 * 0.2 / math.sqrt(3))  # t * s / sqrt(n), s = 0.2
    assert result["groups"][0]["tokens_per_sec"] == pytest.approx(1280)
    at_tokens = result["comparison"]["at_tokens"]
    assert at_tokens["tokens"] == 128 * 30  # the last count every run evaluated at
    assert at_tokens["values"] == [pytest.approx([2.0, 2.2, 2.4]), pytest.approx([1.9, 2.0, 2.25])]
    assert at_tokens["difference"] == pytest.approx(2.05 - 2.2)
    welch = stats.ttest_ind([2.0, 2.2, 2.4], [1.9, 2.0, 2.25], equal_var=False).pvalue
    assert at_tokens["p_value"] == pytest.approx(welch)
    # by hand: Welch's t = (mean_a - mean_b) / sqrt(va / n + vb / n), Welch-Satterthwaite degrees of freedom
    va, vb, n = 0.04, stats.tvar([1.9, 2.0, 2.25]), 3
    t = (2.2 - 2.05) / math.sqrt(va / n + vb / n)
    df = (va / n + vb / n) ** 2 / ((va / n) ** 2 / (n - 1) + (vb / n) ** 2 / (n - 1))
    assert at_tokens["p_value"] == pytest.approx(2 * stats.t.sf(t, df))
    assert at_tokens["p_value"] != pytest.approx(stats.ttest_ind([2.0, 2.2, 2.4], [1.9, 2.0, 2.25]).pvalue)  # Student


def test_clearly_different_and_identical_groups(tmp_path, capsys):
    two_groups(tmp_path / "different", [3.00, 3.02, 2.98, 3.01], [2.50, 2.52, 2.49, 2.51])
    _, different, _, _ = run_main(capsys, str(tmp_path / "different" / "*"))
    assert different["comparison"]["at_tokens"]["p_value"] < 0.01
    assert different["comparison"]["at_time"]["p_value"] < 0.01
    two_groups(tmp_path / "same", [3.00, 3.02, 2.98, 3.01], [3.00, 3.02, 2.98, 3.01])
    _, same, _, _ = run_main(capsys, str(tmp_path / "same" / "*"))
    assert same["comparison"]["at_tokens"]["p_value"] > 0.5 and same["comparison"]["at_time"]["p_value"] > 0.5


def test_equal_training_seconds_interpolates_at_the_last_time_all_runs_reached(tmp_path, capsys):
    two_groups(tmp_path / "runs", [2.0, 2.2], [2.0, 2.2], slow_b=True)  # b takes twice the seconds per step
    _, result, out, _ = run_main(capsys, str(tmp_path / "runs" / "*"))
    at_time = result["comparison"]["at_time"]
    assert at_time["time"] == pytest.approx(3.0)  # a's runs end at 30 steps * 0.1 s
    # b at 3.0 s is at step 15: halfway from 5.0 to its final loss (between its evaluations at steps 10 and 20)
    assert at_time["values"][1] == pytest.approx([5.0 - 3.0 / 2, 5.0 - 2.8 / 2])
    assert at_time["difference"] == pytest.approx((3.5 + 3.6) / 2 - 2.1)
    assert result["comparison"]["at_tokens"]["difference"] == pytest.approx(0.0)
    assert "3 training seconds" in out


def test_writes_one_png_with_a_panel_per_axis(tmp_path, capsys):
    two_groups(tmp_path / "runs", [2.0, 2.2], [1.9, 2.0])
    _, result, _, _ = run_main(capsys, str(tmp_path / "runs" / "*"))
    both = Path(result["plot"])
    assert both == tmp_path / "runs" / "compare.png"  # default: the folder holding the runs
    _, result, _, _ = run_main(capsys, f"runs={tmp_path / 'runs' / '*'}", f"out={tmp_path / 'plots'}", "x=time")
    one = Path(result["plot"])
    assert one == tmp_path / "plots" / "compare.png"
    assert png_width(both) == 2 * png_width(one) > 0


@pytest.mark.parametrize(
    "make, arg, message",
    [
        (lambda root: None, "{root}/nothing*", "'{root}/nothing*' matches no run directory"),
        (lambda root: root.joinpath("x").mkdir(), "{root}/x", "has no config.yaml: not a run directory"),
        (lambda root: root.joinpath("missing"), "{root}/missing", "is not a directory"),
    ],
    ids=["glob-matches-nothing", "not-a-run", "missing-dir"],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, make, arg, message):
    make(tmp_path)
    code, _, _, err = run_main(capsys, arg.format(root=tmp_path))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message.format(root=tmp_path) in err


def test_a_run_without_val_records_is_refused(tmp_path, capsys):
    run = fake_run(tmp_path, "a0", 0.001, 0, 2.0)
    lines = [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if "val/loss" not in ln]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 31, "val/lo')  # and a torn last line
    code, _, _, err = run_main(capsys, str(run))
    assert code == 2 and err.count("\n") == 1
    assert "has no val record in metrics.jsonl; compare runs that evaluated (trainer.eval_interval > 0)" in err


@pytest.mark.e2e
def test_command_line_end_to_end(tmp_path):
    two_groups(tmp_path / "runs", [2.0, 2.2], [1.9, 2.0])
    cmd = [sys.executable, "-m", "train.compare", str(tmp_path / "runs" / "a*"), str(tmp_path / "runs" / "b*")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [len(g["runs"]) for g in result["groups"]] == [2, 2] and Path(result["plot"]).is_file()
