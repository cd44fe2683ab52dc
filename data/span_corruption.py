"""T5 span corruption (Raffel et al. 2020, sec. 3.1.4): random spans of a window become sentinels in the input and
the target spells them out: "a b c d e f" -> input "a <extra_id_0> d e <extra_id_1> eot", target
"<extra_id_0> b c <extra_id_1> f eot". Same rules as T5's `random_spans_noise_mask` (also in nanoT5): a window of n
tokens holds round(n * noise_density) noise tokens in round(noise / mean_span_length) spans, alternating with
non-noise spans and starting with one; span lengths are uniform random segmentations.
`span_corruption_lengths` picks the raw window length whose corrupted input is exactly `input_length` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data.config import MEAN_SPAN_LENGTH, NOISE_DENSITY  # T5's; defined with the objective settings


def _check(noise_density: float, mean_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density={noise_density} must be between 0 and 1 (exclusive); T5 uses 0.15")
    if mean_span_length < 1.0:
        raise ValueError(f"mean_span_length={mean_span_length} must be >= 1; T5 uses 3.0")


def noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a window of `length` >= 2 tokens: every window of that length has exactly these.

    At least one noise token and one span, and at least one non-noise token before each span.
    """
    if length < 2:
        raise ValueError(f"a span-corruption window needs >= 2 tokens, not {length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = min(max(round(num_noise / mean_span_length), 1), length - num_noise)
    return num_noise, num_spans


def _corrupted_lengths(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    num_noise, num_spans = noise_counts(length, noise_density, mean_span_length)
    # input: the non-noise tokens, a sentinel per span, eot; target: a sentinel per span, the noise tokens, eot
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def span_corruption_lengths(
    input_length: int, noise_density: float = NOISE_DENSITY, mean_span_length: float = MEAN_SPAN_LENGTH
) -> tuple[int, int]:
    """(raw_length, target_length): windows of raw_length tokens corrupt into inputs of exactly input_length tokens.

    raw_length is the longest such window, so packed windows waste no encoder positions (T5's
    `compute_input_and_target_lengths`); target_length is the length of every target, eot included.
    """
    _check(noise_density, mean_span_length)
    if input_length < 3:
        raise ValueError(f"input_length={input_length} must be >= 3 (a token, a sentinel and eot)")
    # The corrupted input length never shrinks as the window grows and grows by at most 1 per token (so the walk
    # lands on input_length exactly, except for extreme densities); it is <= input_length at input_length - 1.
    raw = max(2, input_length - 1)
    while _corrupted_lengths(raw + 1, noise_density, mean_span_length)[0] <= input_length:
        raw += 1
    inputs, targets = _corrupted_lengths(raw, noise_density, mean_span_length)
    if inputs != input_length:
        raise ValueError(
            f"no window corrupts into exactly input_length={input_length} tokens with noise_density={noise_density} "
            f"and mean_span_length={mean_span_length}; use input_length={inputs}"
        )
    return raw, targets


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths (all >= 1) of num_segments consecutive segments of num_items items, uniformly at random."""
    cuts = np.sort(rng.choice(num_items - 1, size=num_segments - 1, replace=False) + 1)  # distinct, in 1..n-1
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def random_spans_noise_mask(
    length: int,
    noise_density: float = NOISE_DENSITY,
    mean_span_length: float = MEAN_SPAN_LENGTH,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(length,) bool mask, True = noise: noise_counts(length, ...) tokens in spans, after a non-noise span each."""
    _check(noise_density, mean_span_length)
    rng = rng if rng is not None else np.random.default_rng()
    num_noise, num_spans = noise_counts(length, noise_density, mean_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    span_lengths = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)  # non-noise, noise, non-noise ...
    return np.repeat(np.tile([False, True], num_spans), span_lengths)


def corrupt(
    tokens: np.ndarray, mask: np.ndarray, sentinel_ids: Sequence[int] | np.ndarray, eot_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int64 of one window (R,) or a batch (B, R) and its noise mask.

    inputs: the non-noise tokens with noise span k replaced by sentinel_ids[k], then eot_id.
    targets: sentinel_ids[k] followed by span k, for every span in order, then eot_id.
    In a batch every row must have the same numbers of noise tokens and spans (true of masks of one length).
    """
    tokens = np.asarray(tokens).astype(np.int64)
    mask = np.asarray(mask, dtype=bool)
    if tokens.shape != mask.shape or tokens.ndim not in (1, 2):
        raise ValueError(f"tokens {tokens.shape} and mask {mask.shape} must have the same shape, (R,) or (B, R)")
    single = tokens.ndim == 1
    tokens, mask = np.atleast_2d(tokens), np.atleast_2d(mask)
    B = tokens.shape[0]
    starts = mask & ~np.pad(mask[:, :-1], ((0, 0), (1, 0)))  # (B, R): first token of each noise span
    num_spans, num_noise = starts.sum(axis=1), mask.sum(axis=1)
    if (num_spans != num_spans[0]).any() or (num_noise != num_noise[0]).any():
        raise ValueError("every row of a batch needs the same numbers of noise tokens and spans; corrupt rows singly")
    sentinel_ids = np.asarray(sentinel_ids, dtype=np.int64)
    if num_spans[0] > len(sentinel_ids):
        raise ValueError(f"the mask has {num_spans[0]} noise spans but there are only {len(sentinel_ids)} sentinels")
    lookup = sentinel_ids if len(sentinel_ids) else np.zeros(1, dtype=np.int64)
    sentinels = lookup[np.maximum(np.cumsum(starts, axis=1) - 1, 0)]  # (B, R): sentinel of the span a token is in
    inputs = np.where(starts, sentinels, tokens)[~mask | starts].reshape(B, -1)
    # Targets: one slot for a sentinel before each token, kept at span starts; the token kept where it is noise.
    slots = np.stack([sentinels, tokens], axis=-1).reshape(B, -1)  # (B, 2R)
    targets = slots[np.stack([starts, mask], axis=-1).reshape(B, -1)].reshape(B, -1)
    eot = np.full((B, 1), eot_id, dtype=np.int64)
    inputs, targets = np.concatenate([inputs, eot], axis=1), np.concatenate([targets, eot], axis=1)
    return (inputs[0], targets[0]) if single else (inputs, targets)
