"""Evaluation metrics: loss/perplexity over fixed batches, exact match, ROUGE-L."""

from __future__ import annotations

import math

import pytest
import torch

from data.loader import strided_windows
from train.scoring import estimate_loss, exact_match, rouge_l, score_tokens


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


@pytest.mark.parametrize(
    "num_tokens,length,stride", [(50, 8, None), (50, 8, 3), (9, 8, None), (5, 8, None), (64, 8, 8)]
)
def test_strided_windows_score_every_prediction_once(num_tokens: int, length: int, stride: int | None):
    windows = strided_windows(num_tokens, length, stride)
    length = min(length, num_tokens - 1)
    scored = [start + p for start, first in windows for p in range(max(first, 0), length)]
    assert sorted(scored) == list(range(num_tokens - 1))  # prediction j is of token j + 1: each exactly once
    assert all(0 <= start and start + length <= num_tokens - 1 for start, _ in windows)  # inputs + targets fit
    if stride is not None and stride < length:  # after the first window, every scored token sees >= length - stride
        assert all(first >= length - stride for _, first in windows[1:])


def test_strided_windows_bad_stride():
    with pytest.raises(ValueError, match="stride=9 must be in"):
        strided_windows(50, 8, 9)
    with pytest.raises(ValueError, match="at least 2"):
        strided_windows(1, 8)


def _tiny_gpt() -> torch.nn.Module:
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=11)).eval()


@pytest.mark.parametrize("stride", [None, 5])
def test_score_tokens_matches_scoring_each_window_by_hand(stride: int | None):
    import torch.nn.functional as F

    model = _tiny_gpt()
    tokens = torch.randint(0, 11, (203,), generator=torch.Generator().manual_seed(1))
    total, count = 0.0, 0
    for start, first in strided_windows(len(tokens), 16, stride):  # transformers' perplexity-guide loop, by hand
        logits, _ = model(tokens[start : start + 16][None])
        nll = F.cross_entropy(logits[0].double(), tokens[start + 1 : start + 17], reduction="none")
        total, count = total + nll[max(first, 0) :].sum().item(), count + len(nll[max(first, 0) :])
    for batch_size, world in [(1, 1), (4, 1), (3, 2)]:
        sums = [score_tokens(model, tokens, 16, stride, batch_size, rank=r, world_size=world) for r in range(world)]
        # each rank's mean times its count, summed: what reduce=dist.total gives across processes
        loss = sum(s["loss"] * s["tokens"] for s in sums) / sum(s["tokens"] for s in sums)
        assert sum(s["tokens"] for s in sums) == count == len(tokens) - 1
        assert loss == pytest.approx(total / count, rel=1e-5)
    assert model.training is False


def test_whole_split_is_refused_for_batch_objectives():
    from omegaconf import OmegaConf

    from train.config import TrainConfig

    with pytest.raises(ValueError, match="whole val split of a causal model"):
        OmegaConf.to_object(
            OmegaConf.merge(
                OmegaConf.structured(TrainConfig),
                {"model": {"kind": "t5"}, "task": {"objective": "span_corruption"}, "trainer": {"eval_batches": None}},
            )
        )


def test_scoring_gives_back_train_mode_even_when_a_batch_fails():
    """mean_loss runs the model in eval mode and restores the mode it found, also when the forward raises."""
    from train.scoring import mean_loss

    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.modes = []

        def forward(self, idx, targets):
            self.modes.append(self.training)
            raise RuntimeError("boom")

    model = Failing().train()
    batch = {"idx": torch.zeros(1, 2, dtype=torch.long), "targets": torch.zeros(1, 2, dtype=torch.long)}
    with pytest.raises(RuntimeError, match="boom"):
        mean_loss(model, [batch])
    assert model.modes == [False] and model.training  # scored in eval mode, left in train mode


def test_mean_loss_weights_batches_by_their_scored_tokens():
    """Per token: a batch with 3 scored targets counts three times one with 1; per_batch: each batch once."""
    from data.loader import IGNORE_INDEX
    from train.scoring import mean_loss

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx, targets):
            return None, idx.float().mean()  # the batch's "loss" is carried in idx

    one = {"idx": torch.full((1, 3), 1), "targets": torch.tensor([[5, IGNORE_INDEX, IGNORE_INDEX]])}
    three = {"idx": torch.full((1, 3), 5), "targets": torch.tensor([[5, 5, 5]])}
    padding = {"idx": torch.full((1, 3), 99), "targets": torch.full((1, 3), IGNORE_INDEX)}
    scores = mean_loss(Fixed(), [one, three, padding])
    assert scores["loss"] == pytest.approx((1 * 1 + 5 * 3) / 4) and scores["tokens"] == 4
    assert mean_loss(Fixed(), [one, three], per_batch=True)["loss"] == pytest.approx(3.0)
