"""CausalLMLoader: shapes, shifted targets, determinism, exact resume, rank slices, and the too-short-corpus error."""

import numpy as np
import pytest
import torch

from data.config import DataConfig
from data.loader import CausalLMLoader
from data.prepare import prepare


@pytest.fixture
def data_dir(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"{i}.txt").write_text(f"Story {i}: " + "the quick brown fox jumps over the lazy dog. " * (i + 3))
    cfg = DataConfig(name="t", corpora=["text"], tokenizer="byte", paths=[str(corpus)], val_fraction=0.25)
    return prepare(cfg, tmp_path / "cache", progress=False)


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batches_are_shifted_windows_of_the_split(data_dir):
    loader = CausalLMLoader(data_dir, "train", batch_size=4, block_size=16)
    batch = loader.next_batch()
    assert batch["idx"].shape == batch["targets"].shape == (4, 16)
    assert batch["idx"].dtype == batch["targets"].dtype == torch.int64
    assert torch.equal(batch["targets"][:, :-1], batch["idx"][:, 1:])
    tokens = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
    for row, target in zip(batch["idx"].numpy(), batch["targets"].numpy()):
        starts = [s for s in range(len(tokens) - 16) if (tokens[s : s + 16] == row).all()]
        assert any((tokens[s + 1 : s + 17] == target).all() for s in starts)
    assert loader.vocab_size == 257 and loader.tokenizer.name == "byte"
    assert loader.num_tokens == len(tokens)


def test_same_seed_same_batches(data_dir):
    a, b = (CausalLMLoader(data_dir, "train", batch_size=4, block_size=8, seed=3) for _ in range(2))
    assert all(equal(a.next_batch(), b.next_batch()) for _ in range(3))
    c = CausalLMLoader(data_dir, "train", batch_size=4, block_size=8, seed=4)
    assert not equal(c.batch_at(0), a.batch_at(0))


def test_batch_at_is_pure(data_dir):
    loader = CausalLMLoader(data_dir, "train", batch_size=2, block_size=8)
    third = loader.batch_at(2)
    assert loader.position == 0
    loader.next_batch(), loader.next_batch()
    assert equal(loader.next_batch(), third) and loader.position == 3


def test_resume_continues_exactly(data_dir):
    a = CausalLMLoader(data_dir, "train", batch_size=4, block_size=8, seed=5)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    torch.save(state, data_dir.parent / "state.pt")
    restored = torch.load(data_dir.parent / "state.pt", weights_only=True)  # plain types only
    b = CausalLMLoader(data_dir, "train", batch_size=4, block_size=8, seed=0)
    b.load_state_dict(restored)
    assert b.seed == 5 and b.position == 3
    assert all(equal(a.next_batch(), b.next_batch()) for _ in range(2))


def test_rank_slices_form_the_global_batch(data_dir):
    whole = CausalLMLoader(data_dir, "train", batch_size=4, block_size=8, seed=1)
    ranks = [
        CausalLMLoader(data_dir, "train", batch_size=2, block_size=8, seed=1, rank=r, world_size=2) for r in (0, 1)
    ]
    for _ in range(2):
        full, parts = whole.next_batch(), [r.next_batch() for r in ranks]
        for key in ("idx", "targets"):
            assert torch.equal(torch.cat([p[key] for p in parts]), full[key])
    for r in ranks:  # resume a 1-rank run on 2 ranks: the global stream continues
        r.load_state_dict(whole.state_dict())
    assert torch.equal(torch.cat([r.next_batch()["idx"] for r in ranks]), whole.next_batch()["idx"])


def test_state_from_another_dataset_or_split_is_refused(data_dir):
    loader = CausalLMLoader(data_dir, "train", batch_size=2, block_size=8)
    with pytest.raises(ValueError, match="another dataset"):
        loader.load_state_dict({**loader.state_dict(), "fingerprint": "0" * 64})
    with pytest.raises(ValueError, match="split 'val'"):
        loader.load_state_dict({**loader.state_dict(), "split": "val"})


def test_too_short_split_is_a_clear_error(data_dir):
    val_tokens = len(np.fromfile(data_dir / "val.bin", dtype=np.uint16))
    with pytest.raises(ValueError, match=rf"val split .* has {val_tokens:,} tokens.*block_size=4096.*model.block_size"):
        CausalLMLoader(data_dir, "val", batch_size=2, block_size=4096)
