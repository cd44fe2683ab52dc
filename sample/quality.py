"""Quality of sampled completions without references: diversity, repetition and (for code) whether it parses.

distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"): unique
n-grams / all n-grams over a set of completions; low means the samples say the same things. repetition-n: the share
of a completion's n-grams that repeat an earlier n-gram of the same completion (degenerate loops score near 1).
Tokens are whitespace-separated words, so the numbers do not depend on the model's tokenizer. Pure functions on
lists of strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sample.stopping import code_block_end, parses

CODE_START = re.compile(r"""\s*((async\s+)?def\s|class\s|import\s|from\s+[\w.]+\s+import\s|@\w|#|"{3}|'{3})""")


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The n-grams of a text's whitespace tokens, in order."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    words = text.split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over all texts (n-grams do not cross texts); 0.0 when there is no n-gram."""
    grams = [g for text in texts for g in ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 4) -> float:
    """Mean over texts of the share of a text's n-grams that repeat an earlier n-gram of that text.

    Texts shorter than n words have no n-gram and are left out of the mean; 0.0 when no text has one.
    """
    rates = []
    for text in texts:
        grams = ngrams(text, n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))  # every occurrence after the first is a repeat
    return sum(rates) / len(rates) if rates else 0.0


def parse_rate(prompts: Sequence[str], completions: Sequence[str]) -> float:
    """Fraction of prompt + completion that is valid Python (ast.parse); 0.0 for no completions."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions: pass one prompt per completion")
    if not completions:
        return 0.0
    return sum(parses(p + c)[0] for p, c in zip(prompts, completions)) / len(completions)


def is_code_prompt(prompt: str) -> bool:
    """Whether a prompt starts Python code: its first non-blank line opens a def, class, decorator, import,
    comment or docstring (a function head, or a description of the code to write)."""
    return CODE_START.match(prompt) is not None


def sample_quality(prompts: Sequence[str], completions: Sequence[str]) -> dict[str, float]:
    """{"distinct_1", "distinct_2", "repetition_4"} of all completions, and "parse_rate" of the code prompts' ones.

    The code prompts are those is_code_prompt finds (the default prompts are a story and a function head). A code
    completion is cut where the code task's sampler ends it (the first new top-level line after the body,
    sample.stopping.code_block_end) before prompt + completion is parsed.
    """
    scores = {
        "distinct_1": distinct_n(completions, 1),
        "distinct_2": distinct_n(completions, 2),
        "repetition_4": repetition_rate(completions, 4),
    }
    pairs = [(p, c) for p, c in zip(prompts, completions, strict=True) if is_code_prompt(p)]
    if pairs:
        cut = [c[: code_block_end(p, c)[0]] for p, c in pairs]  # None: no end found, the whole completion
        scores["parse_rate"] = parse_rate([p for p, _ in pairs], cut)
    return scores
