"""A synthetic instruction set that a small CPU model can learn and a script can score exactly.

Six families of one-line instructions, each with an answer a program computes:

    reverse   "Reverse the words: cat sun tree"            -> "tree sun cat"
    sort      "Sort these numbers: 42 7 19"                -> "7 19 42"
    count     "How many words are in: the dog ran home"    -> "4"
    last      "What is the last word? red ball sky"        -> "sky"
    repeat    "Repeat the word moon 3 times."              -> "moon moon moon"
    larger    "Which is larger, 37 or 52?"                 -> "52"

Every family has TRAIN_PHRASINGS ways to ask, used by the train split, and one held-out phrasing used only by the
val split. val holds, per family, VAL_PER_FAMILY items: half asked with a train phrasing, half with the held-out
one; no val instruction (family and content) occurs in train. Everything is drawn from numpy's generator seeded with
SEED, so every machine generates the same set. `pairs()` is the corpus (data.corpora=[instructions]) as input/target
Pairs with their split fixed; `held_out()` the val items with their family and phrasing kind, which
bench/instruct.py scores. Bump VERSION when the set changes (it is part of the prepared data's cache key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

VERSION = 1
SEED = 20261205
TRAIN_ITEMS = 48_000  # train instructions, spread evenly over the families
VAL_PER_FAMILY = 100  # held-out instructions per family: half a train phrasing, half the held-out phrasing

WORDS = (
    "apple ball bird boat book box bread cake car cat cloud cup dog door duck egg fish flower frog girl hat horse "
    "house kite lamp leaf lion milk moon mouse nest park pig rain ring rock rose sheep ship shoe sky snow sock star "
    "sun toy train tree water wind"
).split()
SMALL_WORDS = "the a big little red blue happy sad old new".split()


@dataclass(frozen=True)
class Family:
    """One kind of instruction: how to draw its content, the answer, and the ways to ask (the last is held out)."""

    name: str
    draw: Callable[[np.random.Generator], tuple[str, ...]]  # the content: the template's fields, in order
    answer: Callable[[tuple[str, ...]], str]
    phrasings: tuple[str, ...]  # str.format templates of the fields; the last one is held out of training


def _words(rng: np.random.Generator, low: int, high: int, pool: tuple[str, ...] | list[str] = WORDS) -> str:
    """low..high distinct words of pool, in random order, joined by spaces."""
    n = int(rng.integers(low, high + 1))
    return " ".join(pool[i] for i in rng.choice(len(pool), size=n, replace=False))


def _numbers(rng: np.random.Generator) -> str:
    """3..5 distinct numbers in 0..99."""
    n = int(rng.integers(3, 6))
    return " ".join(str(int(v)) for v in rng.choice(100, size=n, replace=False))


def _sentence(rng: np.random.Generator) -> str:
    """2..7 words from both pools (repeats allowed)."""
    pool = WORDS + SMALL_WORDS
    return " ".join(pool[int(i)] for i in rng.integers(0, len(pool), size=int(rng.integers(2, 8))))


def _two_numbers(rng: np.random.Generator) -> tuple[str, str]:
    a, b = rng.choice(100, size=2, replace=False)
    return str(int(a)), str(int(b))


FAMILIES = (
    Family(
        "reverse",
        lambda rng: (_words(rng, 3, 5),),
        lambda f: " ".join(reversed(f[0].split())),
        (
            "Reverse the words: {0}",
            "Write these words backwards: {0}",
            "reverse: {0}",
            "Put these words in reverse order: {0}",
            "Say these words from last to first: {0}",
        ),
    ),
    Family(
        "sort",
        lambda rng: (_numbers(rng),),
        lambda f: " ".join(str(v) for v in sorted(int(x) for x in f[0].split())),
        (
            "Sort these numbers: {0}",
            "Put these numbers in increasing order: {0}",
            "sort: {0}",
            "Order from smallest to largest: {0}",
            "Arrange these numbers from low to high: {0}",
        ),
    ),
    Family(
        "count",
        lambda rng: (_sentence(rng),),
        lambda f: str(len(f[0].split())),
        (
            "How many words are in: {0}",
            "Count the words: {0}",
            "word count: {0}",
            "How many words does this have? {0}",
            "Tell me the number of words in this: {0}",
        ),
    ),
    Family(
        "last",
        lambda rng: (_words(rng, 3, 6),),
        lambda f: f[0].split()[-1],
        (
            "What is the last word? {0}",
            "Give the final word: {0}",
            "last word: {0}",
            "Which word comes last? {0}",
            "Name the word at the end of this list: {0}",
        ),
    ),
    Family(
        "repeat",
        lambda rng: (WORDS[int(rng.integers(len(WORDS)))], str(int(rng.integers(2, 6)))),
        lambda f: " ".join([f[0]] * int(f[1])),
        (
            "Repeat the word {0} {1} times.",
            "Say {0} {1} times.",
            "repeat {0} x{1}",
            "Write {0} {1} times.",
            "Give me the word {0}, {1} times over.",
        ),
    ),
    Family(
        "larger",
        _two_numbers,
        lambda f: str(max(int(f[0]), int(f[1]))),
        (
            "Which is larger, {0} or {1}?",
            "What is the bigger number: {0} or {1}?",
            "max of {0} and {1}",
            "Which number is greater, {0} or {1}?",
            "Of {0} and {1}, tell me the one that is more.",
        ),
    ),
)
TRAIN_PHRASINGS = 4  # the first four phrasings of a family train; the fifth is held out


@dataclass(frozen=True)
class Item:
    """One instruction: what is asked, the one right answer, and where it belongs."""

    instruction: str
    answer: str
    family: str
    split: str  # train | val
    phrasing: str  # seen (a train phrasing) | unseen (the held-out phrasing)


def generate(train_items: int = TRAIN_ITEMS, val_per_family: int = VAL_PER_FAMILY, seed: int = SEED) -> list[Item]:
    """The whole set: val first (families interleaved, seen and unseen phrasings alternating), then train
    (families interleaved); a train item never repeats a val item's family and content."""
    rng = np.random.default_rng(seed)
    items: list[Item] = []
    held: set[tuple[str, tuple[str, ...]]] = set()
    for i in range(val_per_family):
        for family in FAMILIES:
            fields = family.draw(rng)
            while (family.name, fields) in held:
                fields = family.draw(rng)
            held.add((family.name, fields))
            unseen = i % 2 == 1
            template = family.phrasings[-1] if unseen else family.phrasings[int(rng.integers(TRAIN_PHRASINGS))]
            kind = "unseen" if unseen else "seen"
            items.append(Item(template.format(*fields), family.answer(fields), family.name, "val", kind))
    for i in range(train_items):
        family = FAMILIES[i % len(FAMILIES)]
        fields = family.draw(rng)
        while (family.name, fields) in held:
            fields = family.draw(rng)
        template = family.phrasings[int(rng.integers(TRAIN_PHRASINGS))]
        items.append(Item(template.format(*fields), family.answer(fields), family.name, "train", "seen"))
    return items


def held_out() -> list[Item]:
    """The val items, in order."""
    return [item for item in generate() if item.split == "val"]
