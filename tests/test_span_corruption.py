"""T5 span corruption: packing lengths, masks, exact reconstruction, and SpanCorruptionLoader batches and resume."""

import numpy as np
import pytest
import torch

from data.config import DataConfig
from data.loader import SpanCorruptionLoader
from data.prepare import prepare
from data.span_corruption import corrupt, noise_counts, random_spans_noise_mask, span_corruption_lengths
from data.tokenizer import get_tokenizer

SENTINELS = list(range(1000, 1100))
EOT = 999


def merge(inputs: np.ndarray, targets: np.ndarray, sentinels: list[int], eot: int) -> list[int]:
    """The raw window back: each sentinel of the input replaced by the span after it in the target."""
    assert inputs[-1] == eot and targets[-1] == eot
    spans, current = {}, None
    for t in targets[:-1].tolist():
        if t in sentinels:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    out = []
    for t in inputs[:-1].tolist():
        out += spans[t] if t in sentinels else [t]
    return out


def test_lengths_pack_inputs_exactly():
    assert span_corruption_lengths(512) == (568, 114)  # T5 / nanoT5's numbers for 512-token inputs
    rng = np.random.default_rng(0)
    for input_length in (3, 4, 7, 16, 33, 64, 100, 512):
        raw, target_length = span_corruption_lengths(input_length)
        inputs, targets = corrupt(np.arange(raw), random_spans_noise_mask(raw, rng=rng), SENTINELS, EOT)
        assert (len(inputs), len(targets)) == (input_length, target_length)
        # raw is the longest such window: one more token makes the input longer than input_length
        longer, _ = corrupt(np.arange(raw + 1), random_spans_noise_mask(raw + 1, rng=rng), SENTINELS, EOT)
        assert len(longer) == input_length + 1
    with pytest.raises(ValueError, match="input_length=2 must be >= 3"):
        span_corruption_lengths(2)
    with pytest.raises(ValueError, match="noise_density"):
        span_corruption_lengths(64, noise_density=1.0)


def test_corrupt_by_hand():
    mask = np.array([0, 1, 1, 0, 0, 1, 0, 1], dtype=bool)
    inputs, targets = corrupt(np.array([10, 11, 12, 13, 14, 15, 16, 17]), mask, [90, 91, 92], eot_id=5)
    assert inputs.tolist() == [10, 90, 13, 14, 91, 16, 92, 5]
    assert targets.tolist() == [90, 11, 12, 91, 15, 92, 17, 5]
    assert inputs.dtype == targets.dtype == np.int64
    with pytest.raises(ValueError, match="3 noise spans but there are only 2 sentinels"):
        corrupt(np.arange(8), mask, [90, 91], eot_id=5)


def test_corruption_reconstructs_every_window_with_sentinels_in_order():
    rng = np.random.default_rng(1)
    raw, _ = span_corruption_lengths(64)
    for _ in range(50):
        tokens = rng.integers(0, 257, size=raw)
        inputs, targets = corrupt(tokens, random_spans_noise_mask(raw, rng=rng), SENTINELS, EOT)
        assert merge(inputs, targets, SENTINELS, EOT) == tokens.tolist()
        used = [t for t in inputs.tolist() if t in SENTINELS]
        assert used == SENTINELS[: len(used)] == [t for t in targets.tolist() if t in SENTINELS]
    # a batch is corrupted row by row the same way
    tokens = rng.integers(0, 257, size=(4, raw))
    masks = np.stack([random_spans_noise_mask(raw, rng=rng) for _ in range(4)])
    inputs, targets = corrupt(tokens, masks, SENTINELS, EOT)
    for row in range(4):
        single = corrupt(tokens[row], masks[row], SENTINELS, EOT)
        assert np.array_equal(inputs[row], single[0]) and np.array_equal(targets[row], single[1])


def test_noise_density_and_span_length():
    rng = np.random.default_rng(2)
    raw, _ = span_corruption_lengths(512)
    masks = np.stack([random_spans_noise_mask(raw, 0.15, 3.0, rng) for _ in range(200)])
    assert abs(masks.mean() - 0.15) < 0.005
    starts = masks & ~np.pad(masks[:, :-1], ((0, 0), (1, 0)))
    assert abs(masks.sum() / starts.sum() - 3.0) < 0.1  # mean span length
    assert (starts.sum(axis=1) == noise_counts(raw, 0.15, 3.0)[1]).all()  # every window: the same number of spans
    assert not masks[:, 0].any()  # a non-noise span comes first
    lengths = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], masks[0].astype(int), [0]]))))[::2]
    assert len(set(lengths.tolist())) > 1  # span lengths vary
    other = random_spans_noise_mask(raw, rng=np.random.default_rng(2))
    assert np.array_equal(other, masks[0])  # seeded: reproducible


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("span")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"{i}.txt").write_text(f"Story {i}: " + "the quick brown fox jumps over the lazy dog. " * (i + 3))
    cfg = DataConfig(name="t", corpora=["text"], tokenizer="byte", paths=[str(corpus)], val_fraction=0.25)
    return prepare(cfg, tmp_path / "cache", progress=False)


TOK = get_tokenizer("byte", sentinels=100)


def loader(data_dir, **kw) -> SpanCorruptionLoader:
    return SpanCorruptionLoader(data_dir, kw.pop("split", "train"), kw.pop("batch_size", 4), 32, TOK, **kw)


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loader_batches_are_corrupted_windows(data_dir):
    ld = loader(data_dir)
    raw, target_length = span_corruption_lengths(32)
    assert (ld.input_length, ld.target_length, ld.raw_length) == (32, target_length, raw)
    assert ld.tokenizer is TOK and ld.vocab_size == 257 + 100  # the model's vocabulary: sentinels included
    batch = ld.next_batch()
    assert batch["enc_idx"].shape == (4, 32) and batch["targets"].shape == batch["dec_idx"].shape == (4, target_length)
    assert all(v.dtype == torch.int64 for v in batch.values())
    assert (batch["dec_idx"][:, 0] == TOK.eot_id).all() and torch.equal(
        batch["dec_idx"][:, 1:], batch["targets"][:, :-1]
    )
    tokens = np.fromfile(data_dir / "train.bin", dtype=np.uint16).tolist()
    sentinels = [TOK.sentinel_id(i) for i in range(100)]
    for inputs, targets in zip(batch["enc_idx"].numpy(), batch["targets"].numpy()):
        window = merge(inputs, targets, sentinels, TOK.eot_id)
        assert len(window) == raw
        assert any(tokens[s : s + raw] == window for s in range(len(tokens) - raw + 1))  # a window of train.bin


def test_loader_is_deterministic_pure_and_resumes(data_dir):
    a, b = loader(data_dir, seed=3), loader(data_dir, seed=3)
    assert all(equal(a.next_batch(), b.next_batch()) for _ in range(2))
    assert not equal(loader(data_dir, seed=4).batch_at(0), a.batch_at(0))
    third = a.batch_at(2)
    assert a.position == 2 and equal(a.next_batch(), third)
    state = a.state_dict()
    c = loader(data_dir, seed=0)
    c.load_state_dict(state)
    assert c.seed == 3 and c.position == 3 and equal(a.next_batch(), c.next_batch())


def test_loader_rank_slices_form_the_global_batch(data_dir):
    whole = loader(data_dir, batch_size=4, seed=1)
    ranks = [loader(data_dir, batch_size=2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    full, parts = whole.batch_at(5), [r.batch_at(5) for r in ranks]
    for key in full:
        assert torch.equal(torch.cat([p[key] for p in parts]), full[key])


def test_loader_errors(data_dir):
    spans = noise_counts(span_corruption_lengths(32)[0], 0.15, 3.0)[1]
    with pytest.raises(ValueError, match=rf"makes {spans} noise spans, one sentinel each, but the tokenizer has 1 "):
        SpanCorruptionLoader(data_dir, "train", 2, 32, get_tokenizer("byte", sentinels=1))
    with pytest.raises(ValueError, match=r"has 0 sentinels; use tokenizer\.with_sentinels\(100\)"):
        SpanCorruptionLoader(data_dir, "train", 2, 32, get_tokenizer("byte"))
    with pytest.raises(ValueError, match="is not the byte tokenizer"):
        SpanCorruptionLoader(data_dir, "train", 2, 32, get_tokenizer("gpt2", sentinels=100))
    with pytest.raises(ValueError, match=r"val split .* fewer than the \d+ of one window .*input_length=4096"):
        SpanCorruptionLoader(data_dir, "val", 2, 4096, get_tokenizer("byte", sentinels=1000))
