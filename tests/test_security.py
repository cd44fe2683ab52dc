"""Loading never runs code from a file: a planted pickle that would write a marker file is refused everywhere a
checkpoint is read (training state on resume, Hugging Face .bin weights: tests/test_hf_import.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import compose_train, tiny_run_overrides, zen_of_python

from train import loop
from train.state import TRAIN_STATE, load_train_state

ROOT = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this calls open(path, "w"): the marker file appears only if the loader ran the pickle's code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def run_with_planted_state(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A finished tiny run whose latest checkpoint's train_state.pt was replaced by a code-running pickle."""
    tmp = tmp_path_factory.mktemp("planted")
    overrides = tiny_run_overrides(tmp, zen_of_python(tmp), "run", **{"samples.prompts": "[]"})
    loop.run(compose_train(overrides))
    checkpoint = tmp / "run" / "checkpoints" / (tmp / "run" / "checkpoints" / "latest").read_text().strip()
    marker = tmp / "marker"
    state = torch.load(checkpoint / TRAIN_STATE, weights_only=True)
    torch.save({**state, "payload": RunsCode(marker)}, checkpoint / TRAIN_STATE)
    return checkpoint, marker, overrides


@pytest.mark.e2e
def test_loading_a_planted_training_state_refuses_it(run_with_planted_state):
    checkpoint, marker, _ = run_with_planted_state
    with pytest.raises(ValueError, match=r"refused to load .*train_state\.pt.*could run code") as e:
        load_train_state(checkpoint)
    assert "\n" not in str(e.value) and not marker.exists()


@pytest.mark.slow
def test_resuming_from_it_is_a_one_line_error_and_runs_nothing(run_with_planted_state):
    checkpoint, marker, overrides = run_with_planted_state
    args = [o for o in overrides if not o.startswith("trainer.max_steps=")] + ["trainer.max_steps=12", "resume=auto"]
    result = subprocess.run(
        [sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: refused to load") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and not marker.exists()
