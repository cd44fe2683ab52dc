"""Shared fixtures: tiny configs, deterministic seeds, offline environment."""

from __future__ import annotations

import os

import pytest
import torch

# Tests never touch the network: hub libraries fail fast instead of waiting on time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

# Under pytest-xdist each worker is a process of its own: one torch thread each (and in the processes it starts),
# so n workers share n cores instead of each spreading over all of them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_gpt_kwargs() -> dict:
    """STYLE 4.10's tiny configuration."""
    return dict(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=100)
