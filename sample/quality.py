"""Quality of sampled completions without references: diversity, repetition and (for code) whether it parses.

distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"): unique
n-grams / all n-grams over a set of completions; low means the samples say the same things. repetition-n: the share
of a completion's n-grams that repeat an earlier n-gram of the same completion (degenerate loops score near 1).
Tokens are whitespace-separated words, so the numbers do not depend on the model's tokenizer. Pure functions on
lists of strings.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence, Set

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


# ----------------------------------------------------------------------------------------------------------------
# Held-out quality of a story and code model (bench/quality.py): English words, capitalised sentences, and whether
# a completed function head is a function.

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
CONTRACTION = re.compile(r"'(s|t|d|ll|re|ve|m)$")
# A sentence ends at . ! or ? (closing quotes and brackets may follow) before whitespace or the end of the text.
SENTENCE_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s|$)""")


def is_english_word(word: str, words: Set[str]) -> bool:
    """Whether a word (letters, inner apostrophes) is in words (lowercase), as is or without a clitic ('s, n't)."""
    w = word.lower()
    return w in words or CONTRACTION.sub("", w) in words or (w.endswith("n't") and w[:-3] in words)


def dictionary_words(texts: Sequence[str], words: Set[str]) -> tuple[int, int]:
    """(words of texts found in the dictionary `words`, all words); a word is a run of letters (and apostrophes)."""
    found = total = 0
    for text in texts:
        for w in WORD.findall(text):
            total += 1
            found += is_english_word(w, words)
    return found, total


def sentences(text: str, start: int = 0) -> list[str]:
    """The complete sentences of text that begin at or after offset start, in order.

    A sentence runs to . ! or ? (with closing quotes) before a space; the unfinished tail is not one. A quote that
    ends in ! or ? followed by a lowercase word ("Stop!" said Tom.) is one sentence with its dialogue tag.
    """
    out, begin = [], 0
    for m in SENTENCE_END.finditer(text):
        rest = text[m.end() :].lstrip()
        if m.group()[-1] in "\"'\u201d\u2019" and "." not in m.group() and rest[:1].islower():
            continue  # "...!" said Tom: the tag continues the sentence
        piece = text[begin : m.end()]
        lead = len(piece) - len(piece.lstrip())
        if begin + lead >= start and piece.strip():
            out.append(piece.strip())
        begin = m.end()
    return out


def starts_capitalised(sentence: str) -> bool:
    """Whether a sentence's first letter (after opening quotes, brackets, dashes) is a capital."""
    letter = next((c for c in sentence if c.isalpha() or c.isdigit()), "")
    return letter.isupper() or letter.isdigit()


def function_heads(source: str, max_chars: int = 600) -> list[str]:
    """Prompts made of a module's top-level functions: the def line(s) and docstring, ending with a newline.

    Only functions that have a docstring and at least one statement after it, and whose head is at most max_chars
    characters, are taken; decorators are left out. Source that does not parse gives no heads.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    heads = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.body) < 2:
            continue
        doc = node.body[0]
        if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            continue
        head = "".join(lines[node.lineno - 1 : doc.end_lineno])
        if head.endswith("\n") and len(head) <= max_chars:
            heads.append(head)
    return heads


def completes_function(head: str, completion: str) -> bool:
    """Whether head + completion parses as Python and its first function has a statement after the docstring."""
    try:
        tree = ast.parse(head + completion)
    except (SyntaxError, ValueError):
        return False
    fn = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    return fn is not None and len(fn.body) >= 2
