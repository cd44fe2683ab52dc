"""Data parallelism through torchrun on CPU (gloo): 2 ranks train like 1 process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import compose_train, losses, tiny_run_overrides, zen_of_python

from train.loop import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process(tmp_path):
    corpus = zen_of_python(tmp_path)
    # 1 process, 8 rows per step
    run(compose_train(tiny_run_overrides(tmp_path, corpus, "single", **{"trainer.batch_size": 8})))
    # 2 ranks x 4 rows: each rank takes its half of the same global batch; DDP averages the gradients
    overrides = tiny_run_overrides(tmp_path, corpus, "ddp", **{"trainer.batch_size": 4})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "train"]
    overrides.append(f"hydra.run.dir={tmp_path / 'ddp'}")  # Hydra's own files too, not under runs/ of the repo
    proc = subprocess.run(cmd + overrides, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single, ddp = list(losses(tmp_path / "single").values()), list(losses(tmp_path / "ddp").values())
    assert len(single) == len(ddp) == 8
    assert ddp == pytest.approx(single, rel=1e-5)  # fp32 sums in a different order: equal to rounding
