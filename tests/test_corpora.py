"""Corpora: built-in Shakespeare and stdlib code, the user's files (and their errors), TinyStories from local files."""

import json

import pytest

from data.config import DataConfig
from data.corpora import (
    MAX_FUNCTION_CHARS,
    function_documents,
    hub_split,
    load_documents,
    python_files,
    read_stories,
    source_hashes,
    strip_markdown,
)
from data.prepare import split_documents


def text_cfg(*paths, **kw) -> DataConfig:
    return DataConfig(name="t", corpora=["text"], tokenizer="byte", paths=[str(p) for p in paths], **kw)


def test_shakespeare_plays_are_plain_text():
    docs = load_documents(DataConfig(corpora=["shakespeare"]))
    assert len(docs) >= 30
    text = "\n".join(d.text for d in docs)
    assert "To be, or not to be" in text
    assert "**" not in text and "_" not in text and "\\" not in text
    assert not any(line.startswith("#") or line != line.rstrip() for line in text.splitlines())
    hamlet = next(d for d in docs if d.source.endswith("hamlet.md"))
    assert hamlet.text.startswith("Hamlet\n\nACT I\n")
    assert "\nHAMLET\nTo be, or not to be" in hamlet.text


def test_strip_markdown():
    md = "# Title\n\n**BERNARDO**  \nWho's there?  \nStand.\n\n_Enter Ghost_\n__\\[Aside]_  \n1\\. a \\--b\n\n\n\nEnd"
    assert strip_markdown(md) == "Title\n\nBERNARDO\nWho's there?\nStand.\n\nEnter Ghost\n[Aside]\n1. a --b\n\nEnd\n"


def test_python_code_is_the_stdlib_without_tests():
    names = [name for name, _ in python_files()]
    assert names == sorted(names) and len(names) > 300
    assert "stdlib:json/decoder.py" in names
    assert not any(part in {"test", "tests", "idle_test", "site-packages"} for n in names for part in n.split("/"))
    with_tests = [name for name, _ in python_files(include_tests=True)]
    assert len(with_tests) > len(names) and any(n.startswith("stdlib:test/") for n in with_tests)
    docs = load_documents(DataConfig(corpora=["python-code"], tokenizer="byte", max_documents=3))
    assert len(docs) == 3 and all(d.text.strip() for d in docs)


MODULE = """import os


def top(a, b=1):
    \"\"\"Add.\"\"\"
    def inner(x):
        return x
    return inner(a) + b


class Box:
    size = 3

    @property
    @staticmethod
    def area(
        self,
    ):
        return self.size ** 2

    async def fetch(self):
        text = \"\"\"
keep this column
\"\"\"
        return text


def long():
    return %r
""" % ("x" * MAX_FUNCTION_CHARS)


def test_python_functions_one_document_per_function_and_method_dedented_with_decorators():
    docs = function_documents("stdlib:box.py", MODULE)
    assert [d.source for d in docs] == ["stdlib:box.py:top", "stdlib:box.py:Box.area", "stdlib:box.py:Box.fetch"]
    assert {d.group for d in docs} == {"stdlib:box.py"}  # one module, one split unit; too long: left out
    top, area, fetch = (d.text for d in docs)
    assert top.startswith('def top(a, b=1):\n    """Add."""\n    def inner(x):') and top.endswith("inner(a) + b\n")
    assert area == "@property\n@staticmethod\ndef area(\n    self,\n):\n    return self.size ** 2\n"
    assert fetch.startswith("async def fetch(self):\n    text") and "\nkeep this column\n" in fetch  # string kept
    for text in (top, area, fetch):
        compile(text, "<doc>", "exec")  # each document is a module of its own
    stdlib = load_documents(DataConfig(corpora=["python-functions"], tokenizer="byte", max_documents=40))
    assert len(stdlib) == 40 and all(d.text.lstrip().startswith(("def ", "async def ", "@")) for d in stdlib)


def test_python_functions_and_methods_are_two_corpora_split_by_module_alike():
    # module-level functions and class methods apart, so a mixture can weigh them; together they are every function
    functions, methods = (function_documents("stdlib:box.py", MODULE, methods=m) for m in (False, True))
    assert [d.source for d in functions] == ["stdlib:box.py:top"]
    assert [d.source for d in methods] == ["stdlib:box.py:Box.area", "stdlib:box.py:Box.fetch"]
    assert functions + methods == function_documents("stdlib:box.py", MODULE)
    cfg = DataConfig(corpora=["python-functions", "python-methods"], tokenizer="byte", max_documents=300)
    docs = load_documents(cfg)
    by_corpus = {c: [d for d in docs if d.corpus == c] for c in cfg.corpora}
    assert all(by_corpus.values())
    assert all("." not in d.source.rsplit(":", 1)[1] for d in by_corpus["python-functions"])
    assert all("." in d.source.rsplit(":", 1)[1] for d in by_corpus["python-methods"])
    train, val = split_documents(docs, 0.2, seed=0)
    assert not {d.group for d in train} & {d.group for d in val}  # a module's methods go where its functions go


def test_documents_of_one_group_share_a_split():
    docs = [d for m in range(10) for d in function_documents(f"stdlib:m{m}.py", MODULE)]
    train, val = split_documents(docs, 0.2, seed=3)
    assert len(val) == 2 * 3 and len(train) == 8 * 3  # two of the ten modules, whole
    assert not {d.group for d in train} & {d.group for d in val}
    one_module = function_documents("stdlib:box.py", MODULE)
    assert [len(s) for s in split_documents(one_module, 0.3, seed=0)] == [2, 1]  # one group: documents are units


def test_text_files_dirs_globs_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.md").write_text("beta\n")
    (tmp_path / "d" / "sub" / "c.py").write_text("x = 1\n")
    (tmp_path / "d" / "skip.csv").write_text("not,taken\n")
    (tmp_path / "g1.txt").write_text("gamma\n")
    rows = [{"text": "one", "id": 1}, {"text": "two \u2028 lines", "id": 2}]
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    cfg = text_cfg(tmp_path / "a.txt", tmp_path / "d", tmp_path / "g*.txt", tmp_path / "e.jsonl")
    docs = load_documents(cfg)
    assert [d.text for d in docs] == ["alpha\n", "beta\n", "x = 1\n", "gamma\n", "one", "two \u2028 lines"]
    assert docs[-1].source == f"{tmp_path / 'e.jsonl'}:2"
    assert [d.text for d in load_documents(text_cfg(tmp_path / "d", max_documents=1))] == ["beta\n"]


def test_text_jsonl_errors(tmp_path):
    (tmp_path / "e.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"e\.jsonl:1: no field 'content'.*data\.jsonl_field=<name>"):
        load_documents(text_cfg(tmp_path / "e.jsonl", jsonl_field="content"))
    with pytest.raises(ValueError, match=r"e\.jsonl:2: no field 'text' \(found: body\)"):
        load_documents(text_cfg(tmp_path / "e.jsonl"))
    (tmp_path / "e.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"e\.jsonl:2: not valid JSON"):
        load_documents(text_cfg(tmp_path / "e.jsonl"))


def test_text_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.paths: '.*nothing\*\.txt' matches no file; give a file"):
        load_documents(text_cfg(tmp_path / "nothing*.txt"))
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(ValueError, match="text corpus is empty"):
        load_documents(text_cfg(tmp_path / "empty.txt"))
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not valid UTF-8 \(2 undecodable bytes.*convert it to UTF-8"):
        load_documents(text_cfg(tmp_path / "latin1.txt"))


def write_stories(path, stories):
    path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))


def test_tinystories_from_a_local_dir(tmp_path):
    train = ["Once upon a time, there was a cat.\nThe cat was happy.", "Tom had a red ball.", "Lily saw a bird."]
    write_stories(tmp_path / "TinyStories-train.txt", train)
    write_stories(tmp_path / "TinyStories-valid.txt", ["Spot ran fast.\nHe won."])
    cfg = DataConfig(name="ts", corpora=["tinystories"], tokenizer="gpt2", source="hub", hub_local_dir=str(tmp_path))
    docs = load_documents(cfg)
    assert [d.text for d in docs] == train + ["Spot ran fast.\nHe won."]
    assert [d.split for d in docs] == ["train"] * 3 + ["val"]
    cfg.max_documents = 2  # per file
    assert [d.split for d in load_documents(cfg)] == ["train", "train", "val"]
    assert (hub_split("TinyStories-valid.txt"), hub_split("TinyStoriesV2-GPT4-train.txt")) == ("val", "train")


def test_read_stories_tolerates_a_missing_last_separator(tmp_path):
    (tmp_path / "s.txt").write_text("A.\n<|endoftext|>\n\nB.\nC.\n")
    assert read_stories(tmp_path / "s.txt") == ["A.", "B.\nC."]


def test_tinystories_missing_file_names_the_fix(tmp_path):
    cfg = DataConfig(name="ts", corpora=["tinystories"], tokenizer="gpt2", source="hub", hub_local_dir=str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match=r"TinyStories-train\.txt not found; download .* roneneldan/TinyStories"
    ):
        load_documents(cfg)


def test_source_hashes_follow_content(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    cfg = text_cfg(tmp_path)
    before = source_hashes(cfg)
    assert before == source_hashes(cfg)
    (tmp_path / "a.txt").write_text("alpha!\n")
    assert source_hashes(cfg) != before


def test_tinystories_ships_with_nanoloom_and_keeps_its_split():
    cfg = DataConfig(name="ts", corpora=["tinystories"], tokenizer="bpe")  # data.source=shipped: no network
    docs = load_documents(cfg)
    train = [d for d in docs if d.split == "train"]
    val = [d for d in docs if d.split == "val"]
    assert (len(train), len(val)) == (3357, 649)  # the counts PROVENANCE.md gives
    assert train[1].text.startswith("Once upon a time, there was a little car named Beep.")
    assert not {d.text[:120] for d in train} & {d.text[:120] for d in val}  # held out: not even a shared opening
    assert all("<|endoftext|>" not in d.text and d.text == d.text.strip() for d in docs)


def test_hub_local_dir_without_source_hub_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="add data.source=hub"):
        DataConfig(name="ts", corpora=["tinystories"], hub_local_dir=str(tmp_path))


def test_compressed_story_files_are_read(tmp_path):
    import gzip
    import lzma

    text = "Once upon a time.\n<|endoftext|>\nThe end.\n<|endoftext|>\n"
    with lzma.open(tmp_path / "s.txt.xz", "wt", encoding="utf-8") as f:
        f.write(text)
    with gzip.open(tmp_path / "s.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    expected = ["Once upon a time.", "The end."]
    assert read_stories(tmp_path / "s.txt.xz") == read_stories(tmp_path / "s.txt.gz") == expected
    (tmp_path / "bad.txt.xz").write_bytes(b"not xz at all")
    with pytest.raises(ValueError, match="not a readable compressed file"):
        read_stories(tmp_path / "bad.txt.xz")
