"""The synthetic instruction set (data/instructions.py): seeded, exactly checkable, with a held-out split that
training never sees, in items and in phrasings."""

from __future__ import annotations

from collections import Counter

from data.config import DataConfig
from data.instructions import FAMILIES, TRAIN_PHRASINGS, VAL_PER_FAMILY, generate
from data.prepare import load_meta, prepare


def test_the_set_is_seeded_and_its_held_out_items_never_train():
    items = generate(train_items=3000)
    assert items == generate(train_items=3000)  # the same on every machine
    val = [it for it in items if it.split == "val"]
    train = [it for it in items if it.split == "train"]
    assert len(val) == VAL_PER_FAMILY * len(FAMILIES) and len(train) == 3000
    assert not {it.instruction for it in val} & {it.instruction for it in train}
    assert Counter(it.family for it in val) == {f.name: VAL_PER_FAMILY for f in FAMILIES}
    assert Counter(it.phrasing for it in val) == {"seen": len(val) // 2, "unseen": len(val) // 2}
    for family in FAMILIES:
        held_out = family.phrasings[-1].split("{")[0]  # the held-out phrasing's opening words
        assert len(family.phrasings) == TRAIN_PHRASINGS + 1
        assert not any(it.instruction.startswith(held_out) for it in train if it.family == family.name)
        assert any(it.instruction.startswith(held_out) for it in val if it.family == family.name)


def test_the_answers_are_what_the_instructions_ask():
    checks = {
        "reverse": lambda words, answer: answer.split() == words[::-1],
        "sort": lambda words, answer: [int(x) for x in answer.split()] == sorted(int(x) for x in words),
        "count": lambda words, answer: int(answer) == len(words),
        "last": lambda words, answer: answer == words[-1],
    }
    for it in generate(train_items=600):
        content = it.instruction.split(":", 1)[-1].split("?", 1)[-1].split()  # the words after the ask
        if it.family in checks:
            assert checks[it.family](content, it.answer), it
        elif it.family == "larger":
            numbers = [int(x.strip("?,.")) for x in it.instruction.split() if x.strip("?,.").isdigit()]
            assert int(it.answer) == max(numbers) and len(numbers) == 2
        else:  # repeat: the word, as many times as asked
            count = [
                int(x.lstrip("x").strip(".,")) for x in it.instruction.split() if x.lstrip("x").strip(".,").isdigit()
            ]
            assert it.answer.split() == [it.answer.split()[0]] * count[0]


def test_prepared_instructions_keep_the_fixed_split(tmp_path):
    data = prepare(DataConfig(name="instructions", corpora=["instructions"], tokenizer="byte", max_documents=500),
                   tmp_path, progress=False)  # fmt: skip
    meta = load_meta(data)
    assert meta["layout"] == "pairs"
    assert meta["splits"]["train"]["pairs"] == 500 and meta["splits"]["val"]["pairs"] == VAL_PER_FAMILY * len(FAMILIES)
