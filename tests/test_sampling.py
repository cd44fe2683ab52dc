"""Tests of sample/sampling.py: top-k, top-p, temperature, greedy decoding, seeded reproducibility, validation."""

import math

import pytest
import torch

from sample.sampling import apply_temperature, apply_top_k, apply_top_p, sample_next


def test_top_k_keeps_the_k_best_and_their_ties():
    logits = torch.tensor([[1.0, 5.0, 3.0, 3.0, 3.0, -2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [4, 3, 2, 1, 0, -1]])
    out = apply_top_k(logits, 2)
    kept = torch.isfinite(out)
    assert kept.sum(dim=-1).tolist() == [4, 6, 2]  # ties with the k-th are kept (transformers' TopKLogitsWarper)
    assert kept[0, 1] and out[0, 1] == 5.0  # the largest survives with its value unchanged
    assert torch.equal(apply_top_k(logits, 6), logits)  # k >= V keeps everything


def test_top_k_samples_only_from_the_k_best():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    top3 = torch.topk(logits, 3, dim=-1).indices
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        token = sample_next(logits, temperature=2.0, top_k=3, generator=g)
        assert (top3 == token[:, None]).any(dim=-1).all()


def test_top_p_keeps_the_minimal_mass_set():
    probs = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05]])  # sorted: 0.5, 0.3, 0.1, 0.05, 0.05
    logits = probs.log()
    assert torch.isfinite(apply_top_p(logits, 0.75)).tolist() == [[False, True, False, True, False]]  # 0.8 >= 0.75
    assert torch.isfinite(apply_top_p(logits, 0.85)).tolist() == [[True, True, False, True, False]]  # 0.9 >= 0.85
    assert torch.isfinite(apply_top_p(logits, 0.4)).tolist() == [[False, True, False, False, False]]  # 0.5 >= 0.4
    assert torch.equal(apply_top_p(logits, 1.0), logits)


def test_top_p_always_keeps_one_token():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    kept = torch.isfinite(apply_top_p(logits, 1e-6))
    assert kept.sum(dim=-1).tolist() == [1, 1]
    assert kept[0, 0]


def test_temperature_zero_is_argmax():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(0))
    expected = logits.argmax(dim=-1)
    assert torch.equal(sample_next(logits, temperature=0.0), expected)
    assert torch.equal(sample_next(logits, temperature=0.0, top_k=5, top_p=0.5), expected)


def test_temperature_scales_logits():
    logits = torch.tensor([[2.0, 4.0]])
    assert torch.equal(apply_temperature(logits, 2.0), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, 0.0)


def test_low_temperature_concentrates_on_the_mode():
    logits = torch.tensor([[0.0, 1.0, 0.5]]).expand(2000, 3)
    g = torch.Generator().manual_seed(0)
    assert (sample_next(logits, temperature=0.05, generator=g) == 1).all()


def test_same_seed_same_samples_different_seed_different():
    logits = torch.zeros(1000, 64)  # flat: every draw is pure randomness
    draw = lambda seed: sample_next(logits, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_flat_distribution_is_sampled_uniformly():
    tokens = sample_next(torch.zeros(6400, 8), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=8).float()
    assert counts.min() > 0.8 * 800 and counts.max() < 1.2 * 800
    assert math.isclose(counts.sum().item(), 6400)


def test_argument_validation():
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-0.1)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, top_k=-1)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="top_p"):
            sample_next(logits, top_p=bad)
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        sample_next(torch.zeros(5))
