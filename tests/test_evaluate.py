"""Evaluation metrics: loss/perplexity over fixed batches, exact match, ROUGE-L."""

from __future__ import annotations

import math

import pytest
import torch

from train.evaluate import estimate_loss, exact_match, rouge_l


def test_rouge_l_hand_computed():
    # LCS of "the cat sat on the mat" / "the cat on the mat" is 5 tokens: P = 5/6, R = 5/5
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert rouge_l("a b c", "a b c") == 1.0
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("b a", "a b") == pytest.approx(0.5)  # order matters: LCS is 1
    assert rouge_l("", "") == 1.0 and rouge_l("", "a") == 0.0


def test_exact_match_ignores_surrounding_whitespace():
    assert exact_match(" return x\n", "return x") == 1.0
    assert exact_match("return x", "return y") == 0.0


def test_estimate_loss_is_the_mean_over_fixed_batches():
    class Loader:
        def batch_at(self, i: int) -> dict:
            return {"x": torch.tensor(float(i))}

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
            return None, x * self.w

    model = Model().train()
    out = estimate_loss(model, Loader(), 4)
    assert out["loss"] == pytest.approx(1.5) and out["ppl"] == pytest.approx(math.exp(1.5))
    assert model.training  # restored
