"""Fill-in-the-middle: the PSM layout, its inverse over random and unicode texts, split and plan statistics, errors."""

import numpy as np
import pytest

from data.fim import fim_arrays, fim_ids, fim_join, fim_plan, fim_split, infill_prompt_ids
from data.tokenizer import ByteTokenizer, CharTokenizer, get_tokenizer

ALPHABET = list("abc xyz\n\t()_:=#") + ["é", "ü", "日", "本", "🙂", "\u200b", "<", "|", ">"]
TEXTS = ["", "a", "🙂", "日本語 text", "def f(x):\n    return x  # <|endoftext|><|fim_prefix|>"]


def random_text(rng: np.random.Generator, max_len: int = 40) -> str:
    return "".join(rng.choice(ALPHABET, size=rng.integers(0, max_len + 1)).tolist())


def make(name: str):
    if name == "char":
        return CharTokenizer.from_texts([*ALPHABET, *TEXTS]).with_fim()
    return get_tokenizer(name).with_fim()


def test_layout_of_a_hand_computed_byte_document():
    tok = ByteTokenizer().with_fim()
    P, M, S, EOT = 257, 258, 259, 256
    assert tok.fim_ids == (P, M, S)
    # prefix "ab", middle "c", suffix "é" (two UTF-8 bytes): [P] prefix [S] suffix [M] middle
    assert fim_ids(tok, "ab", "c", "é") == [P, 97, 98, S, 0xC3, 0xA9, M, 99]
    assert fim_ids(tok, "", "", "") == [P, S, M]
    assert infill_prompt_ids(tok, "ab", "é") == [P, 97, 98, S, 0xC3, 0xA9, M]
    assert fim_join(tok, [P, 97, 98, S, 0xC3, 0xA9, M, 99, EOT]) == "abcé"


@pytest.mark.parametrize("name", ["byte", "char", "gpt2"])
def test_the_transform_is_invertible(name):
    tok = make(name)
    rng = np.random.default_rng(0)
    texts = [*TEXTS, *(random_text(rng) for _ in range(150))]
    for text in texts:
        parts = fim_split(text, rng)
        assert "".join(parts) == text
        ids = fim_ids(tok, *parts)
        assert fim_join(tok, ids) == fim_join(tok, ids + [tok.eot_id]) == text
        assert fim_join(tok, tok.encode(text) + [tok.eot_id]) == text  # a plain document decodes as is
        for lo, hi in ((0, 0), (len(text), len(text)), (0, len(text)), (len(text) // 2, len(text))):  # the ends
            assert fim_join(tok, fim_ids(tok, text[:lo], text[lo:hi], text[hi:])) == text


@pytest.mark.parametrize("name", ["byte", "char", "gpt2"])
def test_fim_arrays_match_fim_ids_and_encode(name):
    tok = make(name)
    rng = np.random.default_rng(1)
    texts = [random_text(rng) for _ in range(30)]
    cuts = fim_plan([len(t) for t in texts], 0.5, (3, 2))
    arrays = fim_arrays(tok, texts, cuts)
    assert all(a.dtype == np.uint32 for a in arrays)
    for text, (lo, hi), a in zip(texts, cuts.tolist(), arrays):
        expected = tok.encode(text) if lo < 0 else fim_ids(tok, text[:lo], text[lo:hi], text[hi:])
        assert a.tolist() == expected


def test_fim_split_positions_are_uniform_and_may_coincide():
    rng = np.random.default_rng(0)
    assert fim_split("", rng) == ("", "", "")
    counts = np.zeros(5, dtype=int)  # each of the 5 positions of a 4-character text, counted once per draw
    n = 20000
    for _ in range(n):
        prefix, middle, suffix = fim_split("abcd", rng)
        counts[len(prefix)] += 1
        counts[len(prefix) + len(middle)] += 1
    assert np.all(np.abs(counts / (2 * n) - 0.2) < 0.01)


def test_fim_plan_rate_determinism_and_bounds():
    lengths = np.random.default_rng(0).integers(0, 200, size=20000)
    cuts = fim_plan(lengths, 0.3, (1337, 2))
    chosen = cuts[:, 0] >= 0
    assert abs(chosen.mean() - 0.3) < 0.015
    lo, hi = cuts[chosen].T
    assert np.all((0 <= lo) & (lo <= hi) & (hi <= lengths[chosen]))
    assert (hi == lengths[chosen]).any() and (lo == 0).any() and (lo == hi).any()  # the ends are reachable
    assert np.array_equal(cuts[chosen & (lengths == 0)], np.zeros((int((chosen & (lengths == 0)).sum()), 2)))
    assert np.all(cuts[~chosen] == -1)
    assert np.array_equal(fim_plan(lengths, 0.3, (1337, 2)), cuts)  # deterministic ...
    assert np.array_equal(fim_plan(lengths[:100], 0.3, (1337, 2)), cuts[:100])  # ... row i depends only on i
    assert not np.array_equal(fim_plan(lengths, 0.3, (1338, 2)), cuts)
    assert np.all(fim_plan(lengths, 0.0, (0, 2)) == -1) and np.all(fim_plan(lengths, 1.0, (0, 2))[:, 0] >= 0)


def test_tokenizers_without_fim_ids_are_refused():
    for build in (lambda t: fim_ids(t, "a", "b", "c"), lambda t: infill_prompt_ids(t, "a", "c")):
        with pytest.raises(
            ValueError, match=r"byte tokenizer has no fill-in-the-middle tokens.*tokenizer\.with_fim\(\)"
        ):
            build(ByteTokenizer())
    assert fim_join(ByteTokenizer(), [97, 256]) == "a"


@pytest.mark.parametrize(
    "ids, message",
    [
        ([257, 97, 258, 98], r"holds 0 <\|fim_suffix\|>"),  # suffix marker missing
        ([257, 97, 259, 259, 258], r"holds 2 <\|fim_suffix\|>"),
        ([257, 257, 259, 258], r"holds 2 <\|fim_prefix\|>"),
        ([97, 257, 259, 258], r"starts with id 97, not <\|fim_prefix\|>"),
        ([257, 97, 258, 98, 259], r"<\|fim_middle\|> comes before <\|fim_suffix\|>"),
    ],
)
def test_malformed_layouts_are_named(ids, message):
    with pytest.raises(ValueError, match="malformed fill-in-the-middle document: (it )?" + message):
        fim_join(ByteTokenizer().with_fim(), ids)
