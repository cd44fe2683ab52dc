"""`python -m train ... dry_run=true`: the estimate is printed and nothing of a run is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import compose_train, tiny_run_overrides, zen_of_python

from train import loop

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_measures_and_writes_no_run(tmp_path, capsys):
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), "dry", **{"dry_run": "true"})
    result = loop.run(compose_train(overrides))
    out = capsys.readouterr().out
    for line in ("parameters", "FLOPs per token", "memory estimate", "measured peak", "step time", "ETA"):
        assert line in out
    assert result["step_seconds"] > 0 and result["params"] > 0 and result["tokens_per_step"] > 0
    assert result["eta_seconds"] == result["steps"] * result["step_seconds"]
    memory = result["memory_estimate"]
    assert memory["weights"] == memory["gradients"] == 4 * result["params"]  # fp32 weights, tied ones once
    assert memory["optimizer"] == 2 * memory["weights"]  # AdamW's two fp32 moments, fp32 weights
    assert not (tmp_path / "dry").exists()  # no run directory, checkpoint or metrics


@pytest.mark.slow
def test_dry_run_from_the_command_line_leaves_no_run_directory(tmp_path):
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), "dry")
    result = subprocess.run(
        [sys.executable, "-m", "train", *overrides, "dry_run=true"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "dry run: dry" in result.stdout and "ETA" in result.stdout
    assert "sweep summary" not in result.stdout  # train/sweep.py's callback reports multiruns (-m) only
    assert not (tmp_path / "dry").exists()


def test_dry_run_measures_the_loops_own_step(tmp_path, capsys):
    # T5 rows feed encoder and decoder tokens: the dry run's tokens per step are the loop's, and its optimizer
    # memory is the optimizer's own state (Muon keeps one momentum per matrix, not AdamW's two moments)
    from test_train_t5 import span_overrides

    dry = loop.run(compose_train([*span_overrides(tmp_path, "t5dry"), "dry_run=true"]))
    capsys.readouterr()
    loop.run(compose_train([*span_overrides(tmp_path, "t5run"), "trainer.max_steps=1"]))
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("nanoloom:"))
    assert f"| {dry['tokens_per_step']:,} tokens/step |" in header

    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), "muon", **{"dry_run": "true", "optim": "muon"})
    memory = loop.run(compose_train(overrides))["memory_estimate"]
    assert memory["weights"] < memory["optimizer"] < 2 * memory["weights"]
