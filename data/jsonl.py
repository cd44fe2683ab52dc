"""JSONL files written one line at a time (sample records, a run's metrics.jsonl): the append and the read.

A process killed while appending leaves its last line torn: the start of a JSON object, without its end and without
the newline. Readers skip that line alone (parse_jsonl), and the next append cuts it first (append_jsonl). An append
that fails (disk full, quota) cuts the file back to its size before it, so a failed write never tears a line. Stdlib
only: the command-line tools that read these files stay light.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any


def append_jsonl(path: str | Path, records: list[Any], *, follow_links: bool = True) -> bool:
    """Append records to a JSONL file, one line each, written and synced; return whether a torn last line was cut.

    A failed write (disk full, quota ...) cuts the file back to where the records began (a file the call created is
    removed) and raises: no torn line is left. A last line a writer killed mid-append tore is cut first, so the
    records start on a line of their own; any other last line without its newline (a complete record, text that is
    not ours) is kept and gets one. follow_links=False (a run's own logs): a symbolic link in path's place fails the
    open (OSError ELOOP) and anything but a regular file is a ValueError, instead of being written to as it comes.
    """
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    existed = os.path.exists(path)
    no_follow = 0 if follow_links else getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | no_follow, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # /dev/stdout, a pipe: written as they come
            if not follow_links:
                raise ValueError(f"{path} is not a regular file; replace it with one of its own (or remove it)")
            _write_all(fd, data)
            return False
        if no_follow:
            os.set_blocking(fd, True)
        size = os.lseek(fd, 0, os.SEEK_END)
        tail = _unterminated_tail(fd, size)
        cut = tail is not None and _torn(tail)
        if cut:
            size -= len(tail)
            os.ftruncate(fd, size)
        elif tail is not None:
            data = b"\n" + data
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            if not existed and size == 0:
                os.unlink(path)
            raise
    finally:
        os.close(fd)
    return cut


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unterminated_tail(fd: int, size: int) -> bytes | None:
    """The bytes after the last newline of an open file of `size` bytes, when there are any."""
    end, block = size, b""
    while end > 0:
        start = max(0, end - (1 << 16))
        os.lseek(fd, start, os.SEEK_SET)
        block = os.read(fd, end - start) + block
        if b"\n" in block[: end - start]:
            break
        end = start
    tail = block.rpartition(b"\n")[2]
    return tail or None


def _torn(line: str | bytes) -> bool:
    """Whether an unterminated last line is a record cut short: a JSON object begun and not ended."""
    if not line.lstrip().startswith(b"{" if isinstance(line, bytes) else "{"):
        return False
    try:
        json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for a line cut inside a character
        return True
    return False


def parse_jsonl(text: str, where: str, *, strict: bool = True) -> tuple[list[tuple[int, Any]], int | None]:
    """(line number, value) of the non-blank lines of a JSONL file written line by line (append_jsonl, a run's
    metrics.jsonl), and the number of its last line if a writer killed mid-append tore it (a JSON object begun, no
    newline at its end: left out), else None. Any other line that is not JSON is a ValueError naming where:line or, with
    strict=False, left out too. Lines end at "\n" only: JSON strings may hold U+2028 and friends, which
    str.splitlines() would cut at."""
    lines = text.split("\n")
    torn = None
    if _torn(lines[-1]):
        torn = len(lines)
        lines.pop()
    values = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            values.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            if strict:
                raise ValueError(f"{where}:{n}: not a JSON line ({e.msg})") from None
    return values, torn
