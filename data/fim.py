"""Fill-in-the-middle (FIM): documents rearranged so a causal LM learns to infill (Bavarian et al. 2022, "Efficient
Training of Language Models to Fill in the Middle"; used by SantaCoder and StarCoder).

A document cut into prefix, middle and suffix is trained as PSM (prefix-suffix-middle): `<|fim_prefix|> prefix
<|fim_suffix|> suffix <|fim_middle|> middle <|endoftext|>`, so left-to-right prediction of the middle sees both sides.
At sampling time the prompt is `<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>` and the model writes the
middle until end-of-text. As in the paper, the cut is at two uniform random character positions, not token
positions: an editor's cursor sits anywhere, often inside what would otherwise be one token, so training must show
infills that begin or end mid-token. Each part is then tokenized on its own. The ids: tokenizer.with_fim().
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data.tokenizer import FIM_TEXTS, IdSequence, Tokenizer


def _fim_ids_of(tokenizer: Tokenizer) -> tuple[int, int, int]:
    """tokenizer's (prefix, middle, suffix) ids, or a ValueError saying how to get them."""
    ids = getattr(tokenizer, "fim_ids", None)
    if ids is None:
        raise ValueError(
            f"the {tokenizer.name} tokenizer has no fill-in-the-middle tokens ({', '.join(FIM_TEXTS)}); "
            "use tokenizer.with_fim()"
        )
    return ids


def fim_split(text: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of text, cut at two uniform random character positions in 0..len(text) (sorted).

    The positions may coincide or sit at either end, so any part may be empty; rng is a numpy Generator
    (np.random.default_rng(seed)).
    """
    lo, hi = sorted(rng.integers(0, len(text) + 1, size=2).tolist())
    return text[:lo], text[lo:hi], text[hi:]


def fim_plan(lengths: Sequence[int] | np.ndarray, fim_rate: float, seed: Sequence[int]) -> np.ndarray:
    """Which documents to rearrange and where to cut them: (N, 2) int64 character positions, -1 rows for the others.

    Document i uses row i of a (N, 3) array of uniforms from np.random.default_rng(seed): it is rearranged when the
    first is below fim_rate, and the other two pick two character positions in 0..lengths[i] as in fim_split. Row i
    depends only on seed and i, so a document's plan does not change when documents are added after it.
    """
    lengths = np.asarray(lengths, dtype=np.int64)  # (N,)
    u = np.random.default_rng(list(seed)).random((len(lengths), 3))  # (N, 3)
    positions = np.minimum((u[:, 1:] * (lengths[:, None] + 1)).astype(np.int64), lengths[:, None])  # (N, 2)
    cuts = np.sort(positions, axis=1)
    cuts[u[:, 0] >= fim_rate] = -1
    return cuts


def fim_arrange(tokenizer: Tokenizer, prefix: IdSequence, middle: IdSequence, suffix: IdSequence) -> np.ndarray:
    """The PSM layout of three already-encoded parts, as uint32: [P] prefix [S] suffix [M] middle (no end-of-text)."""
    p, m, s = _fim_ids_of(tokenizer)
    parts = [[p], prefix, [s], suffix, [m], middle]
    return np.concatenate([np.asarray(x, dtype=np.uint32) for x in parts])


def fim_ids(tokenizer: Tokenizer, prefix: str, middle: str, suffix: str) -> list[int]:
    """Ids of one document in PSM order: [P] + enc(prefix) + [S] + enc(suffix) + [M] + enc(middle).

    The caller appends end-of-text, as after every document. Each part is encoded on its own.
    """
    _fim_ids_of(tokenizer)  # refuse before encoding anything
    return fim_arrange(tokenizer, *(tokenizer.encode(t) for t in (prefix, middle, suffix))).tolist()


def infill_prompt_ids(tokenizer: Tokenizer, prefix: str, suffix: str) -> list[int]:
    """What a sampler feeds the model to infill between prefix and suffix: [P] + enc(prefix) + [S] + enc(suffix) + [M].

    The model then writes the middle, ending it with end-of-text.
    """
    p, m, s = _fim_ids_of(tokenizer)
    return [p, *tokenizer.encode(prefix), s, *tokenizer.encode(suffix), m]


def fim_arrays(tokenizer: Tokenizer, texts: list[str], cuts: np.ndarray, num_threads: int = 2) -> list[np.ndarray]:
    """encode_arrays() of texts, where a row (lo, hi) of cuts rearranges text i to PSM (rows of -1: left as is).

    Every plain text and every part go through one encode_arrays() call, so gpt2 keeps its threads and byte/char
    their vectorisation.
    """
    pieces: list[str] = []
    for text, (lo, hi) in zip(texts, cuts.tolist()):
        pieces += [text] if lo < 0 else [text[:lo], text[lo:hi], text[hi:]]
    encoded = iter(tokenizer.encode_arrays(pieces, num_threads=num_threads))
    out = []
    for lo, _ in cuts.tolist():
        if lo < 0:
            out.append(next(encoded))
        else:
            prefix, middle, suffix = next(encoded), next(encoded), next(encoded)
            out.append(fim_arrange(tokenizer, prefix, middle, suffix))
    return out


def fim_join(tokenizer: Tokenizer, ids: IdSequence) -> str:
    """The original text of one document's ids (with or without its end-of-text): prefix + middle + suffix of a PSM
    document, the plain decode of any other. A FIM document must be [P] prefix [S] suffix [M] middle, else ValueError.
    """
    ids = ids.tolist() if hasattr(ids, "tolist") else [int(t) for t in ids]
    if ids and ids[-1] == tokenizer.eot_id:
        ids = ids[:-1]
    fim = getattr(tokenizer, "fim_ids", None)
    if fim is None or not set(fim) & set(ids):
        return tokenizer.decode(ids)
    p, m, s = fim
    for token_id, text in zip(fim, FIM_TEXTS):
        if (count := ids.count(token_id)) != 1:
            raise ValueError(
                f"malformed fill-in-the-middle document: it holds {count} {text} (id {token_id}); "
                "a PSM document holds exactly one of each"
            )
    if ids[0] != p:
        raise ValueError(f"malformed fill-in-the-middle document: it starts with id {ids[0]}, not {FIM_TEXTS[0]}")
    i_s, i_m = ids.index(s), ids.index(m)
    if i_m < i_s:
        raise ValueError(
            f"malformed fill-in-the-middle document: {FIM_TEXTS[1]} comes before {FIM_TEXTS[2]}; "
            "PSM order is prefix, suffix, middle"
        )
    prefix, suffix, middle = ids[1:i_s], ids[i_s + 1 : i_m], ids[i_m + 1 :]
    return tokenizer.decode(prefix) + tokenizer.decode(middle) + tokenizer.decode(suffix)
