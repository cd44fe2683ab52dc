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


def test_the_runs_step_time_is_broken_down_by_kind(tmp_path):
    """train.perf.time_breakdown of the dry run's step (train.dry_run.training_step): shares of the profiled host
    time that sum to 1, with the model's matmuls, its attention and the optimizer's update each found; an op run
    inside the optimizer's step counts as the optimizer's, not by its name."""
    import torch

    from train.dry_run import training_step
    from train.perf import _kind, time_breakdown

    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), "prof", **{"dry_run": "true"})
    parts, step, compiled = training_step(compose_train(overrides), torch.device("cpu"))
    assert not compiled and step() > 0  # a short run is not compiled; the step returns its FLOPs
    shares = time_breakdown(step, steps=2)
    assert abs(sum(shares.values()) - 1) < 1e-6 and list(shares.values()) == sorted(shares.values(), reverse=True)
    assert {"matmul", "attention", "optimizer"} <= set(shares) and all(v > 0 for v in shares.values())

    class Event:  # the two FunctionEvent fields _kind reads
        def __init__(self, name, parent=None):
            self.name, self.cpu_parent = name, parent

    assert _kind(Event("aten::mm", Event("Optimizer.step#Muon.step"))) == "optimizer"
    assert _kind(Event("aten::mm", Event("aten::linear"))) == "matmul"
    assert _kind(Event("## Call CompiledFxGraph fabc ##")) == "compiled kernels"
