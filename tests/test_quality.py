"""Sample quality without references: distinct-n, repetition rate, parse rate (hand-computed values)."""

from __future__ import annotations

import pytest

from sample.quality import distinct_n, is_code_prompt, ngrams, parse_rate, repetition_rate, sample_quality


def test_distinct_n_hand_computed():
    texts = ["the cat sat", "the cat ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran of 6 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice, (cat sat), (cat ran)
    assert distinct_n(["a b", "c"], 2) == 1.0  # n-grams never cross texts: "b c" is not one
    assert distinct_n(["x  y\n\tz"], 1) == 1.0  # any whitespace separates words


def test_distinct_n_empty_cases_are_zero():
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", "   "], 1) == 0.0
    assert distinct_n(["one two"], 3) == 0.0  # shorter than n: no n-gram
    with pytest.raises(ValueError, match="n=0 must be >= 1"):
        distinct_n(["a"], 0)


def test_repetition_rate_hand_computed():
    loop = "a b c d a b c d a b c d"  # 9 four-grams, 4 unique: 5 repeat an earlier one
    assert repetition_rate([loop]) == pytest.approx(5 / 9)
    assert repetition_rate(["one two three four five"]) == 0.0
    assert repetition_rate([loop, "one two three four five"]) == pytest.approx((5 / 9 + 0) / 2)
    assert repetition_rate([loop, "too short"]) == pytest.approx(5 / 9)  # no 4-gram: left out of the mean
    assert repetition_rate([]) == 0.0 and repetition_rate(["a b"]) == 0.0
    assert repetition_rate(["x x x"], n=1) == pytest.approx(2 / 3)


def test_parse_rate_uses_prompt_and_completion():
    prompts = ["def f(x):\n", "def g(x):\n", "x = ("]
    completions = ["    return x\n", "return x\n", "1, 2)\n"]  # the second is not indented: a syntax error
    assert parse_rate(prompts, completions) == pytest.approx(2 / 3)
    assert parse_rate([], []) == 0.0
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        parse_rate(["a", "b"], ["c"])


def test_sample_quality_keys():
    story = sample_quality(["Once"], [" upon a time upon a time"])
    assert set(story) == {"distinct_1", "distinct_2", "repetition_4"}
    assert story["distinct_1"] == pytest.approx(3 / 6) and story["distinct_2"] == pytest.approx(3 / 5)
    code = sample_quality(["def f():\n"], ["    pass\n"])
    assert code["parse_rate"] == 1.0 and ngrams("a b c", 2) == [("a", "b"), ("b", "c")]


def test_parse_rate_counts_the_code_prompts_cut_where_the_code_task_ends():
    prompts = ["Once upon a time,", "def fibonacci(n):", "class Stack:\n    def push(self, item):"]
    completions = [
        " there was a fox",
        "\n    return n\n\nprint(fibonacci(3)) ) (",  # the function, then a new top-level line: cut there
        "\n        self.items.append(item\n",  # an open bracket: no parse
    ]
    scores = sample_quality(prompts, completions)  # the story prompt is not code
    assert scores["parse_rate"] == pytest.approx(1 / 2)
    assert sample_quality(prompts[:1], completions[:1]).keys() == {"distinct_1", "distinct_2", "repetition_4"}
    code = ("@dataclass\nclass A:", "  import os", "from x.y import z", "# the mean of a list\n", '"""Sort."""\n')
    prose = ("define it", "from here on", "Imports rose", "Once upon a time,", "")
    assert [is_code_prompt(p) for p in code + prose] == [True] * len(code) + [False] * len(prose)


# ----------------------------------------------------------------------------------------------------------------
# held-out story and code quality (bench/quality.py)


def test_dictionary_words_counts_english_and_not_gibberish():
    from bench.quality import english_words
    from sample.quality import dictionary_words

    words = english_words()
    story = 'Lily hugged her mom. "I didn\'t know!" she said. They were happy and began to play.'
    found, total = dictionary_words([story], words)
    assert total == 16 and found == 16  # inflections, names and contractions are words
    assert dictionary_words(["ju erm forg mysterrecake the cat"], words) == (2, 6)  # only "the" and "cat"
    assert dictionary_words(["", "123 !!"], words) == (0, 0)
    assert dictionary_words(["Tom's dog can't run"], {"tom", "dog", "can", "run"}) == (4, 4)  # clitics come off


def test_sentences_split_at_ends_and_keep_dialogue_tags():
    from sample.quality import sentences, starts_capitalised

    text = 'Tom ran. "Stop!" said Mom. "Why?" he asked. she was sad. "No," Tom said. And then the'
    found = sentences(text)
    assert found == ["Tom ran.", '"Stop!" said Mom.', '"Why?" he asked.', "she was sad.", '"No," Tom said.']
    assert [starts_capitalised(s) for s in found] == [True, True, True, False, True]
    assert sentences(text, start=9) == found[1:]  # only sentences that begin at or after the offset
    assert sentences("no end here") == []
    assert sentences('He said "hi." then left.') == ['He said "hi."', "then left."]  # a '."' ends a sentence


def test_function_heads_take_documented_top_level_functions():
    from sample.quality import completes_function, function_heads

    source = (
        "import os\n\n"
        "@decorator\n"
        "def add(a, b):\n"
        '    """Add two numbers."""\n'
        "    return a + b\n\n"
        "def bare(x):\n"
        "    return x\n\n"
        "def doc_only(x):\n"
        '    """Nothing after me."""\n\n'
        "class C:\n"
        "    def method(self):\n"
        '        """A method."""\n'
        "        return 1\n\n"
        "def multi(\n    a,\n    b,\n):\n"
        '    """Two lines\n    of docstring.\n    """\n'
        "    return a\n"
    )
    heads = function_heads(source)
    assert heads == [
        'def add(a, b):\n    """Add two numbers."""\n',
        'def multi(\n    a,\n    b,\n):\n    """Two lines\n    of docstring.\n    """\n',
    ]
    assert function_heads(source, max_chars=50) == heads[:1]
    assert function_heads("def broken(:\n") == []
    assert completes_function(heads[0], "    return a + b\n")
    assert not completes_function(heads[0], "\n")  # only the docstring: not a function body
    assert not completes_function(heads[0], "    return (a +\n")  # does not parse
