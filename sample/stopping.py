"""Text-level stopping: one generated row's ids -> final text, with stop strings and the end of a code block.

A row decodes its token bytes incrementally (a multi-byte UTF-8 character is never split), and releases text only
once it is final: text that could still be the start of a stop string, or blank lines that may turn out to end a
code block, are held back until they cannot. The completion ends at the first of: an eos id, a stop string (cut
before it, never shown), the end of the completed top-level code block (stop_at_top_level), or the row's token
limit. `finish_reason` says which: "eos", "stop", "top_level" or "length".
"""

from __future__ import annotations

import ast
import codecs
import re
from collections.abc import Sequence

from data.tokenizer import Tokenizer

_CONTINUATION = re.compile(r"(else|elif|except|finally)\b|[)\]}]")  # column-0 lines that continue a statement
_KEYWORDS = ("else", "elif", "except", "finally")


def _prompt_in_block(prompt: str) -> bool:
    """Whether the prompt ends inside (or at the header of) an indented block, so its body is being written.

    True when the last non-blank line is indented or ends with ":"; False after a blank line (the block ended).
    """
    if re.search(r"\n[ \t]*\n[ \t]*$", prompt):
        return False
    lines = [ln for ln in prompt.split("\n") if ln.strip()]
    return bool(lines) and (lines[-1][0] in " \t" or lines[-1].rstrip().endswith(":"))


def code_block_end(prompt: str, text: str) -> tuple[int | None, int]:
    """Where a code completion ends: (cut, final) for text generated after prompt.

    The completion ends before the first new line at column 0 (a new top-level statement, decorator or comment)
    that comes after an indented body, either in the prompt's last block or written in text; lines that continue a
    statement (else/elif/except/finally, closing brackets) do not count. cut is that line's start, with the blank
    lines before it dropped, or None when no such line exists yet. text[:final] can no longer be cut.
    """
    body = _prompt_in_block(prompt)
    at_start = not prompt or prompt.endswith("\n")
    content_end = 0  # end (after its newline) of the last non-blank line that started in text
    offset = 0
    segments = text.split("\n")
    for i, line in enumerate(segments):
        last = i == len(segments) - 1
        offset += len(line) + 1
        if i == 0 and not at_start:  # continues the prompt's last line
            if line.strip():
                content_end = offset if not last else len(text)
            continue
        if not line.strip():
            continue  # a blank line, or the start of one still being written
        if line[0] in " \t":
            body = True
        else:
            word = re.match(r"\w*", line).group()
            if last and word == line and any(k.startswith(word) for k in _KEYWORDS):
                return None, content_end  # "el" may become "else" (continues) or "elapsed = 1" (a new statement)
            if not _CONTINUATION.match(line):
                if body:
                    return content_end, content_end
                body = False  # the header of the statement the completion is writing
        content_end = offset if not last else len(text)
    if text.endswith("\n") or not segments[-1].strip():
        return None, content_end  # blank lines may still be followed by a new top-level line
    return None, len(text)


def parses(code: str) -> tuple[bool, str]:
    """Whether code is valid Python (ast.parse), and the error ("" when it parses)."""
    try:
        ast.parse(code)
    except SyntaxError as e:
        return False, f"{type(e).__name__}: {e.msg} (line {e.lineno})"
    except ValueError as e:  # null bytes
        return False, f"ValueError: {e}"
    return True, ""


class TextRow:
    """One generated row: token ids in, final text out (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        eos_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        prompt: str | None = None,
        max_tokens: int | None = None,
        strip_leading_space: bool = False,
        hidden_ids: Sequence[int] = (),
    ) -> None:
        """prompt: the code before the completion when it should end with its top-level block (None: never).
        hidden_ids: ids kept in token_ids but not in the text (BART's forced <s>, structure rather than words)."""
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.hidden_ids = frozenset(hidden_ids)
        self.stops = [s for s in stop_strings if s]
        self.prompt = prompt
        self.max_tokens = max_tokens
        # SentencePiece output starts with its word-boundary space; a fresh (T5) output drops it, as decode() does
        self.strip_leading_space = strip_leading_space
        # invalid bytes become U+FFFD; an incomplete trailing sequence waits for its next bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.token_ids: list[int] = []  # every generated id, the one that ended the row included
        self.text = ""  # decoded so far; the output is text[:released] until the row is done
        self.released = 0
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> str:
        """Take one generated token; return the text that became final (possibly "")."""
        if self.done:
            return ""
        self.token_ids.append(token)
        if token in self.eos_ids:
            return self.finish("eos")
        if token in self.hidden_ids:
            return ""
        piece = self.utf8.decode(self.tokenizer.decode_bytes([token]))
        if self.strip_leading_space and piece:
            piece, self.strip_leading_space = piece.removeprefix(" "), False
        self.text += piece
        cut, final, reason = self._cut()
        if cut is not None:
            out = self.text[self.released : cut]
            self.text = self.text[:cut]
            self.released = cut
            self.finish_reason = reason
            return out
        if self.max_tokens is not None and len(self.token_ids) >= self.max_tokens:
            return self.finish("length")
        out, self.released = self.text[self.released : final], max(self.released, final)
        return out

    def finish(self, reason: str = "length") -> str:
        """End the row: release the held text (an incomplete character becomes U+FFFD); "" if already done."""
        if self.done:
            return ""
        self.finish_reason = reason
        self.text += self.utf8.decode(b"", final=True)
        out = self.text[self.released :]
        self.released = len(self.text)
        return out

    def _cut(self) -> tuple[int | None, int, str]:
        """(where the output ends or None, how much is final, why): the earliest stop string or block end."""
        search_from = max(0, self.released - max((len(s) for s in self.stops), default=0))
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        cut, reason = (min(hits), "stop") if hits else (None, "")
        final = len(self.text) - self._stop_holdback()
        if self.prompt is not None:
            block_cut, block_final = code_block_end(self.prompt, self.text)
            if block_cut is not None and (cut is None or block_cut < cut):
                cut, reason = block_cut, "top_level"
            final = min(final, block_final)
        return cut, final, reason

    def _stop_holdback(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest
