"""Preparation: shard layout and meta.json, document split, content-keyed cache, atomic writes, and the Hydra CLI."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data.prepare as prep
from data.config import DataConfig
from data.corpora import CORPORA_VERSION, Document, source_hashes
from data.fim import fim_join
from data.loader import CausalLMLoader, SpanCorruptionLoader
from data.prepare import fingerprint, load_meta, prepare, split_documents, split_tail, token_dtype
from data.tokenizer import ByteTokenizer, tokenizer_from_spec

REPO = Path(__file__).resolve().parents[1]


def make_corpus(root: Path, n: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(f"Document number {i}.\nIt has two lines, the second ends here.\n")
    return root


def text_cfg(*paths, **kw) -> DataConfig:
    kw = {"name": "t", "tokenizer": "byte", **kw}
    return DataConfig(corpora=["text"], paths=[str(p) for p in paths], **kw)


def read_split(data_dir: Path, split: str) -> np.ndarray:
    return np.fromfile(data_dir / f"{split}.bin", dtype=load_meta(data_dir)["dtype"])


def documents_of(tokens: np.ndarray, eot: int) -> list[str]:
    assert tokens[-1] == eot  # every document, the last included, is followed by eot
    ends = np.flatnonzero(tokens == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [bytes(tokens[s:e].tolist()).decode() for s, e in zip(starts, ends)]


def test_prepare_writes_shards_and_meta(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    data_dir = prepare(text_cfg(corpus, val_fraction=0.2), tmp_path / "cache", progress=False)
    assert data_dir.parent == tmp_path / "cache" and data_dir.name.startswith("t-byte-")
    meta = load_meta(data_dir)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 257 and meta["tokenizer"]["name"] == "byte"
    assert meta["layout"] == "documents"
    assert set(meta["sources"]) == {"text"} and meta["config"]["val_fraction"] == 0.2
    docs = {}
    for split in ("train", "val"):
        tokens = read_split(data_dir, split)
        assert tokens.dtype == np.uint16 and len(tokens) == meta["splits"][split]["tokens"]
        docs[split] = documents_of(tokens, eot=256)
        assert len(docs[split]) == meta["splits"][split]["documents"]
    assert len(docs["val"]) == 4  # split by document: 20% of 20 whole files
    originals = sorted(p.read_text() for p in corpus.iterdir())
    assert sorted(docs["train"] + docs["val"]) == originals
    assert not set(docs["train"]) & set(docs["val"])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [data_dir.name]  # no temp dir left behind


def test_second_call_is_a_noop_and_changes_give_a_new_dir(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    first = prepare(text_cfg(corpus), tmp_path / "cache", progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert prepare(text_cfg(corpus), tmp_path / "cache", progress=False) == first
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == mtimes
    (corpus / "doc03.txt").write_text("Changed.\n")
    changed = prepare(text_cfg(corpus), tmp_path / "cache", progress=False)
    assert changed != first and changed.exists() and first.exists()
    assert prepare(text_cfg(corpus, split_seed=1), tmp_path / "cache", progress=False) not in (first, changed)
    assert prepare(text_cfg(corpus, tokenizer="char"), tmp_path / "cache", progress=False).name.startswith("t-char-")


def test_a_damaged_dataset_is_rebuilt(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    data_dir = prepare(text_cfg(corpus), tmp_path / "cache", progress=False)
    good = (data_dir / "train.bin").read_bytes()
    (data_dir / "train.bin").write_bytes(good[:10])  # truncated
    assert prepare(text_cfg(corpus), tmp_path / "cache", progress=False) == data_dir
    assert (data_dir / "train.bin").read_bytes() == good


def test_a_damaged_pairs_index_is_rebuilt(tmp_path):
    rows = [f'{{"input": "question {i}", "target": "answer {i}"}}\n' for i in range(10)]
    (tmp_path / "p.jsonl").write_text("".join(rows))
    cfg = DataConfig(name="p", corpora=["pairs"], tokenizer="byte", paths=[str(tmp_path / "p.jsonl")])
    data_dir = prepare(cfg, tmp_path / "cache", progress=False)
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "meta.json", "train_pairs.bin", "train_pairs.idx", "val_pairs.bin", "val_pairs.idx"
    ]  # fmt: skip
    good = (data_dir / "val_pairs.idx").read_bytes()
    (data_dir / "val_pairs.idx").write_bytes(good[:-8])
    assert prepare(cfg, tmp_path / "cache", progress=False) == data_dir
    assert (data_dir / "val_pairs.idx").read_bytes() == good


def test_a_crash_leaves_no_dataset(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "write_tokens", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(text_cfg(corpus), tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_single_document_splits_its_tail(tmp_path):
    lines = [f"line {i}: some text\n" for i in range(100)]
    (tmp_path / "one.txt").write_text("".join(lines))
    data_dir = prepare(text_cfg(tmp_path / "one.txt", val_fraction=0.1), tmp_path / "cache", progress=False)
    meta = load_meta(data_dir)
    assert meta["splits"]["train"]["documents"] == meta["splits"]["val"]["documents"] == 1
    (train,), (val,) = (documents_of(read_split(data_dir, s), eot=256) for s in ("train", "val"))
    assert train + val == "".join(lines) and val == "".join(lines[90:])  # cut at a line boundary
    assert split_tail("abcdef", 0.5) == ("abc", "def")  # no line boundary: cut mid-line


def test_split_documents_is_deterministic_and_keeps_fixed_splits():
    docs = [Document(f"d{i}", f"s{i}") for i in range(10)] + [Document("v", "hub", "val")]
    train, val = split_documents(docs, 0.2, seed=7)
    assert (train, val) == split_documents(docs, 0.2, seed=7)
    assert len(val) == 3 and val[-1].source == "hub" and len(train) == 8
    assert split_documents(docs, 0.2, seed=8) != (train, val)
    assert len(split_documents(docs[:2], 0.01, seed=0)[1]) == 1  # at least one val document ...
    assert len(split_documents(docs[:2], 0.99, seed=0)[0]) == 1  # ... and at least one train document


def test_tinystories_keeps_the_hub_split(tmp_path):
    for name, n in (("TinyStories-train.txt", 5), ("TinyStories-valid.txt", 2)):
        (tmp_path / name).write_text(
            "".join(f"Once upon a time, story {i}.\nThe end.\n<|endoftext|>\n" for i in range(n))
        )
    cfg = DataConfig(name="ts", corpora=["tinystories"], tokenizer="gpt2", source="hub", hub_local_dir=str(tmp_path))
    data_dir = prepare(cfg, tmp_path / "cache", progress=False)
    splits = load_meta(data_dir)["splits"]
    assert (splits["train"]["documents"], splits["val"]["documents"]) == (5, 2)
    val = read_split(data_dir, "val")
    assert (val == 50256).sum() == 2 and val[0] == 7454  # "Once"


def test_token_dtype():
    assert [token_dtype(v) for v in (257, 50257, 65536)] == [np.uint16] * 3
    assert token_dtype(65537) == np.uint32 and token_dtype(100277) == np.uint32


def test_large_vocabulary_writes_uint32(tmp_path, monkeypatch):
    monkeypatch.setattr(ByteTokenizer, "vocab_size", 70000)
    data_dir = prepare(text_cfg(make_corpus(tmp_path / "corpus")), tmp_path / "cache", progress=False)
    assert load_meta(data_dir)["dtype"] == "uint32" and read_split(data_dir, "train").dtype == np.uint32
    batch = CausalLMLoader(data_dir, "train", batch_size=2, block_size=8).next_batch()
    assert batch["idx"].max() <= 256


def run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "data.prepare", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_prepares_a_text_corpus(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=3)
    out = run_cli("data=text", f"data.paths=['{corpus}']", f"paths.cache_dir={tmp_path / 'cache'}")
    assert out.returncode == 0, out.stderr
    (data_dir,) = (tmp_path / "cache").iterdir()
    assert f"dataset   {data_dir}" in out.stdout and "train" in out.stdout and "tokenizer byte" in out.stdout
    assert not (REPO / "outputs").exists() and not (REPO / "prepare.log").exists()


def test_cli_mistyped_key_fails_at_compose_time(tmp_path):
    out = run_cli("data.tokenzer=byte", f"paths.cache_dir={tmp_path / 'cache'}")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "Key 'tokenzer' not in 'DataConfig'" in out.stderr
    assert not (tmp_path / "cache").exists()


def test_cli_user_error_is_one_line_and_exit_2(tmp_path):
    out = run_cli("data=text", f"data.paths=['{tmp_path}/missing.txt']", f"paths.cache_dir={tmp_path / 'cache'}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: data.paths: '{tmp_path}/missing.txt' matches no file; give a file, directory or glob"
    ]


def test_tokenizer_model_needs_the_trainer_s_tokenizer(tmp_path):
    from data.config import DataConfig
    from data.prepare import prepare
    from data.tokenizer import get_tokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("one document of real text\n" * 20)
    cfg = DataConfig(name="t", corpora=["text"], paths=[str(corpus)], tokenizer="model")
    with pytest.raises(ValueError, match="data.tokenizer=model means the tokenizer of the model being fine-tuned"):
        prepare(cfg, tmp_path / "cache", progress=False)
    a = prepare(cfg, tmp_path / "cache", progress=False, tokenizer=get_tokenizer("byte"))
    b = prepare(cfg, tmp_path / "cache", progress=False, tokenizer=get_tokenizer("gpt2"))
    assert a != b  # the given tokenizer is part of the cache key
    assert json.loads((b / "meta.json").read_text())["tokenizer"]["name"] == "gpt2"
    fim = DataConfig(name="t", corpora=["text"], paths=[str(corpus)], tokenizer="model", fim_rate=0.5)
    with pytest.raises(ValueError, match="data.fim_rate=0.5 needs fill-in-the-middle ids, which the byte tokenizer"):
        prepare(fim, tmp_path / "cache", progress=False, tokenizer=get_tokenizer("byte"))
    c = prepare(fim, tmp_path / "cache", progress=False, tokenizer=get_tokenizer("byte").with_fim())
    assert load_meta(c)["tokenizer"] == get_tokenizer("byte").with_fim().spec()


# ----------------------------------------------------------------------------------------------------------------
# fill-in-the-middle


def make_code_corpus(root: Path, n: int = 60) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"m{i:02d}.py").write_text(
            f'def f{i}(x):\n    """Return x times {i} ({"é" * (i % 3)}🙂)."""\n    return x * {i}\n'
        )
    return root


def token_documents(tokens: np.ndarray, eot: int) -> list[np.ndarray]:
    ends = np.flatnonzero(tokens == eot)
    return np.split(tokens, ends + 1)[:-1]  # each with its eot


def test_fim_rate_rearranges_train_documents_only(tmp_path, monkeypatch):
    corpus = make_code_corpus(tmp_path / "corpus")
    data_dir = prepare(text_cfg(corpus, fim_rate=0.5, val_fraction=0.25), tmp_path / "cache", progress=False)
    meta = load_meta(data_dir)
    tok = tokenizer_from_spec(meta["tokenizer"])
    assert meta["tokenizer"]["fim"] is True and meta["vocab_size"] == 260 and tok.fim_ids == (257, 258, 259)
    assert meta["config"]["fim_rate"] == 0.5
    train, val = (token_documents(read_split(data_dir, s), eot=256) for s in ("train", "val"))
    rearranged = [d for d in train if d[0] == tok.fim_ids[0]]
    assert len(rearranged) == meta["splits"]["train"]["fim_documents"] and 0.25 < len(rearranged) / len(train) < 0.75
    assert all(d.max() < 257 for d in val) and "fim_documents" not in meta["splits"]["val"]  # val is plain
    # Every train document decodes back to its original text, and the documents are the corpus' own.
    originals = sorted(p.read_text() for p in corpus.iterdir())
    texts = [fim_join(tok, d) for d in train] + [tok.decode(d[:-1]) for d in val]
    assert sorted(texts) == originals
    batch = CausalLMLoader(data_dir, "train", batch_size=4, block_size=32).next_batch()
    assert batch["idx"].max() < 260
    # Reproducible: a second preparation elsewhere, in many small chunks, writes the same tokens.
    monkeypatch.setattr(prep, "CHUNK_CHARS", 200)
    again = prepare(text_cfg(corpus, fim_rate=0.5, val_fraction=0.25), tmp_path / "cache2", progress=False)
    assert (again / "train.bin").read_bytes() == (data_dir / "train.bin").read_bytes()
    assert again.name == data_dir.name


def test_fim_rate_zero_keeps_the_cache_key(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    cfg = text_cfg(corpus)
    hashes = source_hashes(cfg)
    # The key as it was computed before fim_rate existed.
    before = {
        "format_version": prep.FORMAT_VERSION,
        "corpora_version": CORPORA_VERSION,
        "sources": hashes,
        "config": {f: getattr(cfg, f) for f in prep.CONTENT_FIELDS},
    }
    assert fingerprint(cfg, hashes) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert fingerprint(text_cfg(corpus, fim_rate=0.0), hashes) == fingerprint(cfg, hashes)
    assert fingerprint(text_cfg(corpus, fim_rate=0.5), hashes) not in (
        fingerprint(cfg, hashes), fingerprint(text_cfg(corpus, fim_rate=0.25), hashes)
    )  # fmt: skip
    plain = prepare(cfg, tmp_path / "cache", progress=False)
    assert "fim" not in load_meta(plain)["tokenizer"] and "fim_rate" not in load_meta(plain)["config"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fim_rate=1.5), "data.fim_rate=1.5 must be between 0 and 1 \\(inclusive\\)"),
        (dict(fim_rate=-0.1), "data.fim_rate=-0.1 must be between 0 and 1 \\(inclusive\\)"),
        (dict(fim_rate=float("nan")), "data.fim_rate=nan must be between 0 and 1"),
        (dict(corpora=["pairs"], fim_rate=0.5), r"data.fim_rate=0.5 rearranges documents, but data.corpora \(pairs\)"),
    ],
)
def test_bad_fim_rate_is_a_one_line_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        DataConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_t5_sentinels_cannot_read_fim_data(tmp_path):
    data_dir = prepare(
        text_cfg(make_code_corpus(tmp_path / "corpus"), fim_rate=0.5), tmp_path / "cache", progress=False
    )
    tok = tokenizer_from_spec(load_meta(data_dir)["tokenizer"]).with_sentinels(100)  # sentinels take ids 257..356
    with pytest.raises(ValueError, match="holds fill-in-the-middle ids .* prepare T5 data with data.fim_rate=0"):
        SpanCorruptionLoader(data_dir, "train", batch_size=2, input_length=32, tokenizer=tok)
    with pytest.raises(ValueError, match="is not the byte tokenizer"):  # one without the FIM ids
        SpanCorruptionLoader(
            data_dir, "train", batch_size=2, input_length=32, tokenizer=ByteTokenizer().with_sentinels()
        )


# ----------------------------------------------------------------------------------------------------------------
# bpe: a vocabulary trained on the train split


def make_prose_corpus(root: Path, n: int = 40) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    animals = ["cat", "dog", "bird", "fish", "frog", "bear"]
    for i in range(n):
        a, b = animals[i % 6], animals[(i * 5 + 1) % 6]
        (root / f"s{i:02d}.txt").write_text(
            f'Once upon a time, a little {a} met a {b}. The {a} said, "Hello, {b}!" They played all day.\n'
            f"def play_{i}(x):\n    return x + {i}\n"
        )
    return root


def test_bpe_is_trained_on_the_train_split_only_and_cached(tmp_path, monkeypatch):
    corpus = make_prose_corpus(tmp_path / "corpus")
    (corpus / "zz_val_only.txt").write_text("Xylophonequartzjukebox " * 40)  # a word no train document holds
    cfg = text_cfg(corpus, tokenizer="bpe", vocab_size=400, val_fraction=0.1, split_seed=3)
    trained = []
    original = prep.BPETokenizer.train
    monkeypatch.setattr(prep.BPETokenizer, "train", lambda *a, **k: trained.append(a[0]) or original(*a, **k))
    data_dir = prepare(cfg, tmp_path / "cache", progress=False)
    meta = load_meta(data_dir)
    tokenizer = tokenizer_from_spec(meta["tokenizer"])
    assert tokenizer.name == "bpe" and meta["vocab_size"] == tokenizer.vocab_size <= 400
    assert meta["tokenizer_train_seconds"] >= 0 and data_dir.name.startswith("t-bpe-")
    (texts,) = trained
    val_docs = documents_of_tokens(read_split(data_dir, "val"), tokenizer)
    assert val_docs and not set(val_docs) & set(texts)  # val documents were never seen by the trainer
    for split in ("train", "val"):  # the token files decode back to the documents exactly
        docs = documents_of_tokens(read_split(data_dir, split), tokenizer)
        assert len(docs) == meta["splits"][split]["documents"]
    assert prepare(cfg, tmp_path / "cache", progress=False) == data_dir and len(trained) == 1  # cached: not retrained
    other = prepare(text_cfg(corpus, tokenizer="bpe", vocab_size=300, val_fraction=0.1, split_seed=3),
                    tmp_path / "cache", progress=False)  # fmt: skip
    assert other != data_dir and len(trained) == 2  # the vocabulary size is part of the key


def documents_of_tokens(tokens: np.ndarray, tokenizer) -> list[str]:
    ends = np.flatnonzero(tokens == tokenizer.eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(tokens[s:e]) for s, e in zip(starts, ends)]


def test_bpe_on_a_small_corpus_warns_with_the_size_reached(tmp_path, caplog):
    corpus = make_prose_corpus(tmp_path / "corpus", n=4)
    data_dir = prepare(text_cfg(corpus, tokenizer="bpe", vocab_size=60000), tmp_path / "cache", progress=False)
    reached = load_meta(data_dir)["vocab_size"]
    assert 257 < reached < 60000
    assert f"stops at {reached} ids" in caplog.text and "data.vocab_size=60000" in caplog.text


@pytest.mark.parametrize("size", [256, 0, 1 << 32])
def test_bpe_vocab_size_out_of_range_is_a_one_line_error(size):
    with pytest.raises(ValueError, match=r"data.vocab_size=\d+ cannot hold a bpe vocabulary.*set data.vocab_size"):
        DataConfig(tokenizer="bpe", vocab_size=size)
    DataConfig(tokenizer="byte", vocab_size=size)  # only bpe reads it


def test_cli_bpe_bad_vocab_size_is_one_line(tmp_path):
    out = run_cli("data=tinystories", "data.vocab_size=100", f"paths.cache_dir={tmp_path / 'cache'}")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "error: " in out.stderr and "data.vocab_size=100 cannot hold a bpe vocabulary" in out.stderr


def test_weights_repeat_or_subsample_train_documents_only(tmp_path):
    stories = make_corpus(tmp_path / "stories", n=10)
    plain = DataConfig(name="w", corpora=["text", "python-code"], paths=[str(stories)], tokenizer="byte",
                       max_documents=20, val_fraction=0.2)  # fmt: skip
    base = load_meta(prepare(plain, tmp_path / "cache", progress=False))
    weighted_cfg = DataConfig(**{**plain.__dict__, "weights": [2.5, 0.5]})
    data_dir = prepare(weighted_cfg, tmp_path / "cache", progress=False)
    meta = load_meta(data_dir)
    assert meta["config"]["weights"] == [2.5, 0.5] and "weights" not in base["config"]  # part of the key when set
    assert meta["splits"]["val"] == base["splits"]["val"]  # val is never weighted
    train = documents_of(read_split(data_dir, "train"), eot=256)
    counts = {d: train.count(d) for d in set(train)}
    story_texts = {p.read_text() for p in stories.iterdir()}
    story_counts = [n for d, n in counts.items() if d in story_texts]
    assert sorted(set(story_counts)) == [2, 3] and story_counts.count(3) == round(0.5 * len(story_counts))
    code_docs = [d for d in train if d not in story_texts]
    base_code = [d for d in documents_of(read_split(prepare(plain, tmp_path / "cache", progress=False), "train"), 256)
                 if d not in story_texts]  # fmt: skip
    assert len(code_docs) == round(0.5 * len(base_code)) and set(code_docs) <= set(base_code)  # a seeded half, once
    assert prepare(weighted_cfg, tmp_path / "cache", progress=False) == data_dir  # deterministic: the same dataset


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "one weight per document corpus"), ([1.0, 0.0], "every weight must be > 0"), ([1.0, -2.0], "> 0")],
)
def test_bad_weights_are_one_line_errors(weights, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(corpora=["tinystories", "python-code"], tokenizer="bpe", weights=weights)
