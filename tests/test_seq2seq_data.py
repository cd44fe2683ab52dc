"""Seq2seq pairs: jsonl and python-docstrings corpora, pair preparation, and Seq2SeqLoader batches and resume."""

import json
import warnings

import numpy as np
import pytest
import torch

import data.corpora as corpora
from data.config import DataConfig
from data.corpora import docstring_pairs, load_pairs, python_files
from data.loader import CausalLMLoader, Seq2SeqLoader
from data.prepare import load_meta, prepare, split_pairs
from data.tokenizer import get_tokenizer

TOK = get_tokenizer("byte", sentinels=100)  # as a T5 run holds it
EOT = TOK.eot_id
PAIRS = [{"input": f"what is {i} plus {i}?", "target": f"{2 * i}", "id": i} for i in range(20)]
PAIRS[7] = {"input": "a much longer question, " * 4, "target": "and a longer answer too", "id": 7}


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def pairs_cfg(*paths, **kw) -> DataConfig:
    kw = {"name": "p", "tokenizer": "byte", "val_fraction": 0.2, **kw}
    return DataConfig(corpora=["pairs"], paths=[str(p) for p in paths], **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    write_jsonl(tmp / "a.jsonl", PAIRS[:12])
    write_jsonl(tmp / "b.jsonl", PAIRS[12:])
    return prepare(pairs_cfg(tmp / "a.jsonl", tmp / "b.jsonl"), tmp / "cache", progress=False)


def text(ids) -> str:
    return TOK.decode(ids)


def loader(data_dir, input_length=128, target_length=32, **kw) -> Seq2SeqLoader:
    return Seq2SeqLoader(
        data_dir, kw.pop("split", "train"), kw.pop("batch_size", 4), input_length, target_length, TOK, **kw
    )


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prepare_writes_pairs_and_index(data_dir):
    meta = load_meta(data_dir)
    assert meta["layout"] == "pairs" and meta["config"]["input_field"] == "input"
    seen = []
    for split in ("train", "val"):
        info = meta["splits"][split]
        assert info["file"] == f"{split}_pairs.bin" and info["index"] == f"{split}_pairs.idx"
        tokens = np.fromfile(data_dir / info["file"], dtype=np.uint16)
        index = np.fromfile(data_dir / info["index"], dtype=np.uint64).reshape(-1, 4)
        assert len(tokens) == info["tokens"] and len(index) == info["pairs"] == info["groups"]
        for in_start, in_len, tgt_start, tgt_len in index.astype(int):
            inp, tgt = tokens[in_start : in_start + in_len], tokens[tgt_start : tgt_start + tgt_len]
            assert inp[-1] == EOT and tgt[-1] == EOT  # each side ends in eot
            seen.append({"input": text(inp[:-1]), "target": text(tgt[:-1])})
        assert info["input_tokens_max"] == index[:, 1].max() and info["target_tokens_max"] == index[:, 3].max()
    assert meta["splits"]["val"]["pairs"] == 4  # 20% of 20 pairs
    assert sorted(seen, key=str) == sorted(({"input": p["input"], "target": p["target"]} for p in PAIRS), key=str)
    assert prepare(pairs_cfg(*load_meta(data_dir)["config"]["paths"]), data_dir.parent, progress=False) == data_dir


def test_batches_pad_mask_and_shift(data_dir):
    batch = loader(data_dir, batch_size=8).batch_at(0)
    enc, mask, dec, targets = batch["enc_idx"], batch["enc_mask"], batch["dec_idx"], batch["targets"]
    assert enc.dtype == dec.dtype == targets.dtype == torch.int64 and mask.dtype == torch.bool
    assert enc.shape == mask.shape and dec.shape == targets.shape and enc.shape[0] == targets.shape[0] == 8
    lengths = mask.sum(1)
    assert enc.shape[1] == lengths.max() and targets.shape[1] == (targets != -1).sum(1).max()  # the longest, no more
    assert torch.equal(mask, torch.arange(enc.shape[1]) < lengths[:, None])  # real tokens first, then padding
    assert (enc[~mask] == EOT).all()
    assert (dec[:, 0] == EOT).all()
    assert torch.equal(dec[:, 1:], torch.where(targets[:, :-1] == -1, EOT, targets[:, :-1]))
    known = {(p["input"], p["target"]) for p in PAIRS}
    for row in range(8):
        inp, tgt = enc[row, mask[row]].tolist(), [t for t in targets[row].tolist() if t != -1]
        assert inp[-1] == EOT and tgt[-1] == EOT and (text(inp[:-1]), text(tgt[:-1])) in known


def test_truncation_is_counted_and_warns_once(data_dir):
    ld = loader(data_dir, input_length=10, target_length=2, batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = [ld.next_batch() for _ in range(3)]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "raise model.block_size" in message and "input_length=10" in message and "target_length=2" in message
    whole = [loader(data_dir, batch_size=8).batch_at(n) for n in range(3)]  # the same pairs, uncut
    assert ld.truncated_inputs == sum(int((w["enc_mask"].sum(1) > 10).sum()) for w in whole) == 24
    assert ld.truncated_targets == sum(int(((w["targets"] != -1).sum(1) > 2).sum()) for w in whole) > 0
    for b, w in zip(batches, whole):
        assert b["enc_idx"].shape[1] == 10 and b["enc_mask"].all()
        assert torch.equal(b["enc_idx"], w["enc_idx"][:, :10])  # inputs keep their start
        assert torch.equal(b["targets"][:, 0], w["targets"][:, 0]) and (b["targets"][:, 1] == EOT).all()
    quiet = loader(data_dir, batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.next_batch()
    assert not caught and quiet.truncated_inputs == quiet.truncated_targets == 0


def test_first_warning_reports_the_count_so_far(data_dir):
    ld = loader(data_dir, input_length=10, target_length=64, batch_size=3)
    with pytest.warns(UserWarning, match=r"3 input\(s\) longer than input_length=10 and 0 target\(s\)"):
        ld.next_batch()


def test_pairs_in_file_order(data_dir):
    ld = loader(data_dir, split="val")
    pairs = list(ld.pairs())
    assert len(pairs) == ld.num_pairs == 4 and list(ld.pairs(limit=2)) == pairs[:2]
    order = [(p["input"], p["target"]) for p in PAIRS]
    decoded = [(text(i[:-1]), text(t[:-1])) for i, t in pairs]
    assert decoded == sorted(decoded, key=order.index)  # corpus order
    assert all(i[-1] == EOT and t[-1] == EOT for i, t in pairs)


def test_deterministic_resume_and_rank_slices(data_dir):
    a, b = loader(data_dir, seed=3), loader(data_dir, seed=0)
    first = a.batch_at(0)
    a.next_batch(), a.next_batch()
    b.load_state_dict(a.state_dict())
    assert b.seed == 3 and b.position == 2 and equal(a.next_batch(), b.next_batch())
    assert equal(loader(data_dir, seed=3).next_batch(), first)
    whole = loader(data_dir, batch_size=4, seed=1)
    ranks = [loader(data_dir, batch_size=2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    full, parts = whole.batch_at(4), [r.batch_at(4) for r in ranks]
    for p in parts:  # each rank pads to its own longest
        assert p["enc_idx"].shape[1] <= full["enc_idx"].shape[1]
    for key in full:
        width = full[key].shape[1]
        pad = EOT if key in ("enc_idx", "dec_idx") else (-1 if key == "targets" else False)
        padded = [torch.nn.functional.pad(p[key], (0, width - p[key].shape[1]), value=pad) for p in parts]
        assert torch.equal(torch.cat(padded), full[key])


def test_jsonl_errors_name_the_line_and_the_fix(tmp_path):
    write_jsonl(tmp_path / "e.jsonl", [{"input": "a", "target": "b"}, {"question": "q", "target": "t"}])
    fix = r"e\.jsonl:2: no field 'input' \(found: question, target\); set data\.input_field=<name>"
    with pytest.raises(ValueError, match=fix):
        load_pairs(pairs_cfg(tmp_path / "e.jsonl"))
    with pytest.raises(ValueError, match=r"e\.jsonl:1: no field 'answer' .*data\.target_field=<name>"):
        load_pairs(pairs_cfg(tmp_path / "e.jsonl", target_field="answer"))
    write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}])
    assert load_pairs(pairs_cfg(tmp_path / "q.jsonl", input_field="question", target_field="answer"))[0].input == "q"
    write_jsonl(tmp_path / "e.jsonl", [{"input": "a", "target": "b"}, {}, {"input": "c", "target": " "}])
    (tmp_path / "e.jsonl").write_text((tmp_path / "e.jsonl").read_text().replace("{}\n", "\n"))  # blank: skipped
    with pytest.raises(ValueError, match=r"e\.jsonl:3: field 'target' is empty"):
        load_pairs(pairs_cfg(tmp_path / "e.jsonl"))
    with pytest.raises(ValueError, match=r"corpus 'pairs' needs data\.paths"):
        prepare(pairs_cfg(), tmp_path / "cache", progress=False)


def test_prefix_and_config_errors(tmp_path):
    write_jsonl(tmp_path / "q.jsonl", PAIRS[:3])
    pairs = load_pairs(pairs_cfg(tmp_path / "q.jsonl", prefix="question: "))
    assert [p.input for p in pairs] == ["question: " + r["input"] for r in PAIRS[:3]]
    assert pairs[1].source == f"{tmp_path / 'q.jsonl'}:2"
    with pytest.raises(ValueError, match=r"mixes input/target pairs \(pairs\) with documents \(text\)"):
        DataConfig(corpora=["pairs", "text"], paths=["x"])
    with pytest.raises(ValueError, match="pairs_direction='docs'"):
        DataConfig(corpora=["python-docstrings"], pairs_direction="docs")


def test_loaders_refuse_the_other_layout(data_dir, tmp_path):
    with pytest.raises(ValueError, match="holds pairs, but CausalLMLoader reads documents; read it with Seq2SeqLoader"):
        CausalLMLoader(data_dir, "train", batch_size=2, block_size=8)
    (tmp_path / "d.txt").write_text("some text\n" * 20)
    docs = prepare(DataConfig(name="d", corpora=["text"], tokenizer="byte", paths=[str(tmp_path / "d.txt")]), tmp_path)
    with pytest.raises(ValueError, match="holds documents, but Seq2SeqLoader reads pairs"):
        loader(docs)


SOURCE = '''
import functools


@functools.cache
def area(width, height=1):
    """Area of a
    rectangle.

    More words here.
    """
    return width * height


def undocumented(x):
    return x


def one_word(x):
    """Identity."""
    return x


def only_docstring():
    """Does nothing at all."""


class Shape:
    def describe(
        self, prefix: str = "",
    ) -> str:
        """Describe the shape."""
        text = """
at column 0
"""
        return prefix + text

    async def fetch(self):
        """Fetch it later."""
        await something()
'''


def test_docstring_pairs_by_hand():
    big = 'def big():\n    """A big function."""\n' + "    x = 1\n" * 500  # over 4,000 characters
    pairs = docstring_pairs("stdlib:m.py", SOURCE + big, "both")
    names = ["area", "area", "Shape.describe", "Shape.describe", "Shape.fetch", "Shape.fetch"]  # both directions
    assert [p.source for p in pairs] == [f"stdlib:m.py:{n}" for n in names]  # the others: skipped
    assert {p.group for p in pairs} == {"stdlib:m.py"}
    gen, summ = pairs[0], pairs[1]
    assert gen.input == "generate python: Area of a rectangle.\ndef area(width, height=1):"  # no decorator
    assert (
        gen.target
        == summ.input.removeprefix("summarize python: ")
        == "def area(width, height=1):\n    return width * height\n"
    )
    assert summ.target == "Area of a rectangle."
    describe = pairs[2]
    assert (
        describe.input == 'generate python: Describe the shape.\ndef describe(\n    self, prefix: str = "",\n) -> str:'
    )
    assert describe.target == (
        'def describe(\n    self, prefix: str = "",\n) -> str:\n'
        '    text = """\nat column 0\n"""\n'  # a string's lines at column 0 stay there
        "    return prefix + text\n"
    )
    assert pairs[4].target == "async def fetch(self):\n    await something()\n"
    assert [p.input.split(":")[0] for p in docstring_pairs("m", SOURCE, "code")] == ["generate python"] * 3
    assert [p.target for p in docstring_pairs("m", SOURCE, "docstring")] == [
        "Area of a rectangle.",
        "Describe the shape.",
        "Fetch it later.",
    ]


MODULES = {"stdlib:textwrap.py", "stdlib:json/decoder.py", "stdlib:json/encoder.py", "stdlib:shlex.py",
           "stdlib:fnmatch.py", "stdlib:glob.py", "stdlib:bisect.py", "stdlib:heapq.py"}  # fmt: skip


def test_python_docstrings_from_the_stdlib(tmp_path, monkeypatch):
    stdlib = [(name, path) for name, path in python_files() if name in MODULES]
    assert len(stdlib) == len(MODULES)  # all real modules of this interpreter
    monkeypatch.setattr(corpora, "python_files", lambda include_tests=False: stdlib)  # a few modules: fast
    cfg = DataConfig(name="pd", corpora=["python-docstrings"], tokenizer="byte", val_fraction=0.25)
    pairs = load_pairs(cfg)
    assert len(pairs) > 50 and {p.group for p in pairs} == MODULES
    train, val = split_pairs(pairs, cfg.val_fraction, cfg.split_seed)
    train_modules, val_modules = {p.group for p in train}, {p.group for p in val}
    assert len(val_modules) == 2 and not train_modules & val_modules  # val functions come from unseen modules
    assert (train, val) == split_pairs(pairs, cfg.val_fraction, cfg.split_seed)
    dedent = [p for p in pairs if p.source == "stdlib:textwrap.py:dedent"]
    assert len(dedent) == 2 and dedent[0].target.startswith("def dedent(text):\n")
    assert "Remove any common leading whitespace" in dedent[1].target and '"""' not in dedent[0].target

    data_dir = prepare(cfg, tmp_path, progress=False)
    meta = load_meta(data_dir)
    assert (meta["splits"]["train"]["pairs"], meta["splits"]["val"]["pairs"]) == (len(train), len(val))
    assert meta["splits"]["val"]["groups"] == 2
    texts = {s: [text(i) + text(t) for i, t in loader(data_dir, split=s).pairs()] for s in ("train", "val")}
    hits = [s for s, ts in texts.items() if any(t.startswith("summarize python: def dedent(text):") for t in ts)]
    assert hits == ["val" if "stdlib:textwrap.py" in val_modules else "train"]


def test_decoder_start_is_the_model_s(data_dir):
    """A T5 loaded from Hugging Face starts its decoder from pad (0): training must start from the same id."""
    default = loader(data_dir).batch_at(0)["dec_idx"]
    hf_style = loader(data_dir, start_id=0).batch_at(0)["dec_idx"]
    assert (default[:, 0] == EOT).all() and (hf_style[:, 0] == 0).all()
    assert torch.equal(default[:, 1:], hf_style[:, 1:])
