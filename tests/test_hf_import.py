"""Importing Hugging Face checkpoints: load_model("hf:<folder or hub name>") on folders the tests write.

Random transformers GPT-2 and T5 models are saved like save_pretrained does (safetensors, sharded, pytorch_model.bin)
with tokenizer.json files built by the tokenizers library, then loaded through load_model: same logits, same greedy
tokens. No network: hub names are tested against a hub cache the test writes, and offline.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from data.tokenizer import (
    GPT2_VOCAB_SIZE,
    HFTokenizer,
    Tokenizer,
    byte_level_chars,
    get_tokenizer,
    gpt2_files,
    load_hf_tokenizer,
    tokenizer_from_spec,
)
from model.checkpoint import load_model, read_model_json, save_model
from model.hf import _download, resolve_hf_source
from sample import pipeline
from sample.generate import generate, generate_tokens

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


# ----------------------------------------------------------------------------------------------------------------
# folders as Hugging Face writes them


def wordlevel_json(vocab_size: int) -> str:
    """A tokenizer.json of vocab_size words "w0".."wN", "[UNK]" and "<|endoftext|>" (the last id)."""
    vocab = {f"w{i}": i for i in range(vocab_size - 2)} | {"[UNK]": vocab_size - 2, "<|endoftext|>": vocab_size - 1}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in ("[UNK]", "<|endoftext|>")])
    return tok.to_str()


T5_PIECES = ["<pad>", "</s>", "<unk>", "\u2581", "\u2581the", "\u2581cat", "\u2581sat", "\u2581on", "\u2581mat",
             "t", "h", "e", "c", "a", "s", "o", "n", "m", "\u00e9"]  # fmt: skip
T5_SENTINELS = [f"<extra_id_{i}>" for i in reversed(range(4))]  # numbered downward from the top, as in T5


def t5_tokenizer_json() -> str:
    """A SentencePiece-style (Unigram + Metaspace) tokenizer.json laid out like T5's: pad 0, eos 1, unk 2, sentinels."""
    scores = [(p, -1.0 - 0.1 * i) for i, p in enumerate(T5_PIECES)] + [(s, 0.0) for s in T5_SENTINELS]
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram(scores, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = tokenizers.decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    specials = ["<pad>", "</s>", "<unk>", *T5_SENTINELS]
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in specials])
    return tok.to_str()


def gpt2_folder(path, fmt: str, **hf_kwargs):
    """A random GPT2LMHeadModel saved as safetensors, sharded safetensors or pytorch_model.bin."""
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_kwargs)).eval()
    if fmt == "bin":  # transformers >= 5 writes only safetensors: the pickle format is written by hand
        hf.config.save_pretrained(path)
        torch.save(hf.state_dict(), path / "pytorch_model.bin")
    else:
        hf.save_pretrained(path, max_shard_size="40KB" if fmt == "sharded" else "5GB")
    return hf


T5_BASE = dict(vocab_size=32, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
               dropout_rate=0.0, pad_token_id=0, eos_token_id=1)  # fmt: skip
T5_VARIANTS = {
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=8),
    "v1.1-untied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),  # older transformers' layout
}


def t5_folder(path, variant: str):
    """A random T5ForConditionalGeneration with the tokenizer.json above (23 ids; the model has 32, as T5 pads)."""
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**{**T5_BASE, **T5_VARIANTS[variant]})).eval()
    (path / "tokenizer.json").parent.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(t5_tokenizer_json())
    if variant != "v1.1-untied":
        hf.save_pretrained(path)
        return hf
    # Older transformers saved v1.1 with its own lm_head.weight and said so with tie_word_embeddings=false.
    hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight))
    config = hf.config.to_dict()
    config.pop("scale_decoder_outputs", None)
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    state = {k: v.clone().contiguous() for k, v in hf.state_dict().items()}
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(32, 2)  # unused
    save_file(state, str(path / "model.safetensors"))
    return hf


# ----------------------------------------------------------------------------------------------------------------
# GPT-2


@pytest.mark.parametrize(
    "fmt, hf_kwargs",
    [
        ("safetensors", dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=1000)),
        ("bin", dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=257)),  # not a multiple of 64
        ("sharded", dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=1000)),
    ],
)
def test_gpt2_folder_matches_transformers(tmp_path, fmt, hf_kwargs):
    hf = gpt2_folder(tmp_path, fmt, **hf_kwargs)
    V = hf_kwargs["vocab_size"]
    (tmp_path / "tokenizer.json").write_text(wordlevel_json(V))
    if fmt == "sharded":
        assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    model, tok = load_model(f"hf:{tmp_path}")
    assert not model.training and model.config.vocab_size == V
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == V and tok.eot_id == V - 1

    idx = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, rtol=1e-5, atol=1e-5)
        seq = idx[:1, :5]  # transformers, uncached: rerun the whole sequence for each token
        for _ in range(30):
            seq = torch.cat([seq, hf(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    ours = torch.stack(list(generate_tokens(model, idx[:1, :5], 30, temperature=0.0)), dim=1)  # cached
    assert torch.equal(ours, seq[:, 5:])


def test_gpt2_vocabulary_size_without_tokenizer_files_gets_the_gpt2_tokenizer(tmp_path):
    hf = gpt2_folder(tmp_path, "safetensors", n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50257)
    model, tok = load_model(f"hf:{tmp_path}")
    assert tok.name == "gpt2" and tok.vocab_size == model.config.vocab_size == GPT2_VOCAB_SIZE
    idx = torch.tensor([tok.encode("Hello, world")])
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, rtol=1e-5, atol=1e-5)


def gpt2_tokenizer_json(extra: tuple[str, ...] = ()) -> str:
    """GPT-2's byte-level BPE as a tokenizer.json, built from the files the gpt2 tokenizer reads."""
    vocab_bpe, encoder_json = gpt2_files()
    tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.add_special_tokens([tokenizers.AddedToken("<|endoftext|>", special=True), *extra])
    return tok.to_str()


def test_gpt2_tokenizer_json_is_recognised_and_byte_level_vocabularies_stream(tmp_path):
    config = {"model_type": "gpt2", "vocab_size": 50258, "eos_token_id": 50256}
    (tmp_path / "tokenizer.json").write_text(gpt2_tokenizer_json())
    assert load_hf_tokenizer(tmp_path, config).name == "gpt2"  # GPT-2's own files: the offline tiktoken tokenizer

    (tmp_path / "tokenizer.json").write_text(gpt2_tokenizer_json(extra=("<pad>",)))  # one id more: not GPT-2's
    tok, gpt2 = load_hf_tokenizer(tmp_path, config), get_tokenizer("gpt2")
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 50258 and tok.eot_id == 50256 and tok.pad_id == 50257
    text = "Hello world, h\u00e9llo \U0001f642\n  code<|endoftext|>"
    ids = tok.encode(text)
    assert ids == gpt2.encode(text) and tok.eot_id not in ids  # special-token text stays text, as in gpt2
    assert tok.decode(ids) == text
    # token by token, the bytes of a multi-byte character arrive split and join back up
    assert b"".join(tok.decode_bytes([t]) for t in ids) == tok.decode_bytes(ids) == text.encode()
    assert tok.decode([tok.eot_id, 50257]) == "<|endoftext|>"  # padding is left out


# ----------------------------------------------------------------------------------------------------------------
# T5


@pytest.mark.parametrize("variant", T5_VARIANTS)
def test_t5_folder_matches_transformers(tmp_path, variant):
    hf = t5_folder(tmp_path, variant)
    model, tok = load_model(f"hf:{tmp_path}")
    assert model.config.vocab_size == 32 and tok.vocab_size == 23  # the embedding is larger than the vocabulary
    assert model.config.tie_embeddings == (variant == "v1.0")
    if variant == "v1.1-untied":  # the file's own lm_head, not a copy of the embedding
        assert torch.equal(model.lm_head.weight, hf.lm_head.weight)
        assert not torch.equal(model.lm_head.weight, model.shared.weight)

    enc = torch.tensor([tok.encode("the cat sat on the mat") + [tok.eot_id]] * 2)
    enc[1, 2:4] = torch.tensor([tok.sentinel_id(0), tok.sentinel_id(1)])
    dec = torch.randint(2, 23, (2, 7))
    with torch.no_grad():
        expected = hf(input_ids=enc, decoder_input_ids=dec)
        enc_out = model.encode(enc)
        torch.testing.assert_close(enc_out, expected.encoder_last_hidden_state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode(dec, enc_out), expected.logits, rtol=1e-4, atol=1e-4)
        seq = torch.zeros(2, 1, dtype=torch.long)  # decoder start = pad, uncached
        for _ in range(20):
            next_id = hf(input_ids=enc, decoder_input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, next_id], dim=1)
    ours = torch.stack(list(generate_tokens(model, enc, 20, temperature=0.0)), dim=1)  # cached, from the config
    assert torch.equal(ours, seq[:, 1:])


def test_t5_tokenizer_round_trips_reports_sentinels_and_rebuilds_from_its_spec(tmp_path):
    (tmp_path / "tokenizer.json").write_text(t5_tokenizer_json())
    tok = HFTokenizer.from_directory(tmp_path)
    assert isinstance(tok, Tokenizer) and tok.name == "hf"
    assert (tok.vocab_size, tok.eot_id, tok.pad_id, tok.num_sentinels) == (23, 1, 0, 4)

    text = "the cat sat on the mat"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.eot_id not in ids  # no special tokens added
    assert tok.decode([0, *ids, 1]) == text + "</s>"  # pad left out, eos shown
    assert b"".join(tok.decode_bytes([t]) for t in ids) == tok.decode_bytes(ids) == b" " + text.encode()

    assert [tok.sentinel_id(i) for i in range(4)] == [22, 21, 20, 19]  # <extra_id_0> is the highest id
    assert tok.is_sentinel(22) and not tok.is_sentinel(tok.eot_id)
    masked = tok.encode("the <extra_id_0> sat <extra_id_1>")
    assert tok.sentinel_id(0) in masked and tok.sentinel_id(1) in masked
    assert tok.decode(masked).split() == ["the", "<extra_id_0>", "sat", "<extra_id_1>"]
    assert tok.with_sentinels(4) is tok and tok.with_sentinels(0) is tok
    with pytest.raises(ValueError, match="sentinel 4 does not exist"):
        tok.sentinel_id(4)

    spec = json.loads(json.dumps(tok.spec()))  # JSON-serialisable, the tokenizer.json embedded
    assert "sentinels" not in spec and tokenizer_from_spec(spec).encode(text) == ids
    more = tok.with_sentinels(6)  # two appended after the vocabulary, the way T5 training asks for 100
    assert (more.vocab_size, more.num_sentinels, more.sentinel_id(4)) == (25, 6, 23)
    assert more.encode("a <extra_id_5>")[-1] == 24 and more.decode([24]) == "<extra_id_5>"
    rebuilt = tokenizer_from_spec(more.spec())
    assert rebuilt.spec() == more.spec() and [rebuilt.sentinel_id(i) for i in range(6)] == [22, 21, 20, 19, 23, 24]


def test_t5_tokenizer_encodes_like_transformers(tmp_path):
    pieces = [(p, -1.0 - 0.1 * i) for i, p in enumerate(T5_PIECES + [".", "\u2581."])]
    reference = transformers.T5Tokenizer(vocab=pieces + [(s, 0.0) for s in T5_SENTINELS], extra_ids=4)
    reference.save_pretrained(tmp_path)  # transformers' own T5 tokenizer.json layout
    tok = HFTokenizer.from_directory(tmp_path)
    assert tok.strips_leading_space  # SentencePiece: streamed output starts with the first word's space
    for text in ["the cat sat on the mat.", "the <extra_id_0> sat<extra_id_1>on  the   mat", "th\u00e9 cat</s>"]:
        ids = tok.encode(text)
        assert ids == reference(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == reference.decode(ids)


def test_folder_without_tokenizer_json_is_converted_by_transformers(tmp_path):
    byte_chars = sorted(byte_level_chars(), key=byte_level_chars().get)  # GPT-2's 256 byte stand-ins, in order
    merged = {"\u0120t": 256, "he": 257, "\u0120the": 258, "<|endoftext|>": 259}  # \u0120 stands for the space
    vocab = {c: i for i, c in enumerate(byte_chars)} | merged
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n\u0120 t\nh e\n\u0120t he\n")
    config = {"model_type": "gpt2", "vocab_size": 260, "eos_token_id": 259}
    (tmp_path / "config.json").write_text(json.dumps(config))
    tok = load_hf_tokenizer(tmp_path, config)
    assert isinstance(tok, HFTokenizer) and tok.eot_id == 259 and not tok.strips_leading_space
    assert tok.encode("the the") == [116, 257, 258] and tok.decode(tok.encode("the th\u00e9")) == "the th\u00e9"


def test_hf_model_saved_as_nanoloom_checkpoint_is_self_describing(tmp_path):
    hf = t5_folder(tmp_path / "hf", "v1.1")
    model, tok = load_model(f"hf:{tmp_path / 'hf'}")
    info = read_model_json(f"hf:{tmp_path / 'hf'}")  # what `python -m sample` reads for provenance
    assert info["kind"] == "t5" and info["config"] == model.config.to_dict() and info["tokenizer"] == tok.spec()
    assert info["meta"]["source"] == f"hf:{tmp_path / 'hf'}"

    del hf
    save_model(model, tmp_path / "ckpt", tokenizer_spec=tok.spec())  # e.g. after fine-tuning
    model2, tok2 = load_model(tmp_path / "ckpt")
    assert tok2.spec() == tok.spec() and tok2.encode("the cat") == tok.encode("the cat")
    enc = torch.tensor([tok.encode("the cat") + [1]])
    with torch.no_grad():
        assert torch.equal(model2.encode(enc), model.encode(enc))


def test_pipeline_takes_an_hf_source(tmp_path):
    gpt2_folder(tmp_path, "safetensors", n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50)
    (tmp_path / "tokenizer.json").write_text(wordlevel_json(50))
    generator = pipeline("text-generation", model=f"hf:{tmp_path}", device="cpu")
    out = generator("w1 w2", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("w1 w2")


# ----------------------------------------------------------------------------------------------------------------
# errors, and the hub


class RunsCode:
    """Unpickling this calls open(path, "w"): a file appears if the loader ran the pickle's code."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    hf = gpt2_folder(tmp_path, "bin", n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50)
    (tmp_path / "tokenizer.json").write_text(wordlevel_json(50))
    marker = tmp_path / "marker"
    torch.save({**hf.state_dict(), "payload": RunsCode(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"refused to load .*pytorch_model\.bin.*could run code") as e:
        load_model(f"hf:{tmp_path}")
    assert "\n" not in str(e.value) and not marker.exists()


def test_errors_are_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 100}))
    with pytest.raises(ValueError, match=r"model_type='llama'; nanoloom imports only gpt2, t5, bart models") as e:
        load_model(f"hf:{tmp_path}")
    assert "\n" not in str(e.value)

    t5_folder(tmp_path / "t5", "v1.0")
    (tmp_path / "t5" / "tokenizer.json").unlink()
    (tmp_path / "t5" / "spiece.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match=r"no tokenizer\.json, only spiece\.model.*pip install transformers") as e:
        load_model(f"hf:{tmp_path / 't5'}")
    assert "\n" not in str(e.value)

    gpt2_folder(tmp_path / "gpt", "safetensors", n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50)
    (tmp_path / "gpt" / "tokenizer.json").write_text(wordlevel_json(50))
    config = json.loads((tmp_path / "gpt" / "config.json").read_text())
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({**config, "n_layer": 2}))
    with pytest.raises(ValueError, match=r"do not fit its config\.json .*missing \['transformer\.h\.1\.") as e:
        load_model(f"hf:{tmp_path / 'gpt'}")
    assert "\n" not in str(e.value)

    with pytest.raises(ValueError, match="is not a folder"):
        load_model(f"hf:{tmp_path / 'missing'}")


def test_hub_name_offline_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError) as e:
        load_model("hf:nanoloom-tests/no-such-model")
    assert time.perf_counter() - start < 3.0
    message = str(e.value)
    assert "\n" not in message and message.startswith("could not download 'nanoloom-tests/no-such-model'")
    assert "hf download nanoloom-tests/no-such-model" in message and "hf:./no-such-model" in message


def test_hub_name_found_in_the_hub_cache_loads_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--nanoloom-tests--tiny-gpt2"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    gpt2_folder(snapshot, "safetensors", n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50)
    (snapshot / "tokenizer.json").write_text(wordlevel_json(50))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _download.cache_clear()
    assert resolve_hf_source("nanoloom-tests/tiny-gpt2") == snapshot
    model, tok = load_model("hf:nanoloom-tests/tiny-gpt2")
    assert model.config.vocab_size == 50 and tok.vocab_size == 50
    _download.cache_clear()


def test_t5_text_output_matches_transformers_decode(tmp_path):
    """Our text2text output equals transformers' greedy generate + decode: no id past the tokenizer's 23 (the
    model has 32 rows), and no leading SentencePiece space."""
    hf = t5_folder(tmp_path, "v1.0")
    with torch.no_grad():  # make some padded ids (23..31) the model's favourites: they must never be produced
        hf.lm_head.weight[23:] *= 4
    hf.save_pretrained(tmp_path)
    t2t = pipeline("text2text-generation", model=f"hf:{tmp_path}", device="cpu")
    tok = t2t.tokenizer
    text = "hello world"
    ids = torch.tensor([tok.encode(text) + [tok.eot_id]])
    with torch.no_grad():
        logits_processor = transformers.LogitsProcessorList(
            [transformers.SuppressTokensLogitsProcessor(list(range(23, 32)), device="cpu")]
        )
        out = hf.generate(
            ids, max_new_tokens=8, do_sample=False, logits_processor=logits_processor, decoder_start_token_id=0
        )[0]
    assert int(out.max()) < 23
    expected = tok.decode([t for t in out[1:].tolist() if t not in (tok.eot_id, 0)])
    got = t2t(text, max_new_tokens=8)[0]["generated_text"]
    assert got == expected and not got.startswith(" ")


@pytest.mark.e2e
def test_t5_fine_tunes_from_an_hf_folder_with_its_own_tokenizer(tmp_path):
    """python -m train init_from=hf:<folder> data.tokenizer=model: the data is tokenized with the model's
    SentencePiece vocabulary, and seq2seq training runs from the pretrained weights."""
    from train_helpers import compose_train, tiny_run_overrides

    from train.loop import run

    t5_folder(tmp_path / "hf", "v1.1")
    words = ["hello", "world", "a", "b", "the", "cat"]
    lines = [json.dumps({"input": f"{a} {b}", "target": f"{b} {a}"}) for a in words for b in words]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    overrides = tiny_run_overrides(
        tmp_path, tmp_path / "pairs.jsonl", init_from=f"hf:{tmp_path / 'hf'}", task="seq2seq", data="pairs",
        **{"data.tokenizer": "model", "model": "t5-tiny", "samples.eval_pairs": 2, "task.max_new_tokens": 4,
           "samples.prompts": "[]"},
    )  # fmt: skip
    result = run(compose_train(overrides))
    assert result["step"] == 8
    model, tokenizer = load_model(tmp_path / "run")
    assert tokenizer.name == "hf" and model.config.vocab_size == 32 and model.config.n_embd == 32


# ----------------------------------------------------------------------------------------------------------------
# per-token scores against transformers' compute_transition_scores


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_output_scores_equal_transformers_transition_scores(tmp_path, mode):
    """generate(output_scores=True): each token's log-probability under the distribution it was chosen from, as
    transformers' compute_transition_scores(normalize_logits=True) on the same weights; greedy with a repetition
    penalty (transformers generates the same tokens), sampling with temperature and top-k (transformers' warpers
    applied to its own logits along our sampled tokens)."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    V = 50
    hf = gpt2_folder(tmp_path, "safetensors", n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=V)
    (tmp_path / "tokenizer.json").write_text(wordlevel_json(V))
    model, tok = load_model(f"hf:{tmp_path}")
    controls = {"do_sample": False, "repetition_penalty": 1.3}
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3)])
    if mode == "sample":
        controls = {"do_sample": True, "temperature": 0.7, "top_k": 5, "seed": 3}
        processors = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(5)])
    (c,) = generate(model, tok, "w1 w2 w3", max_new_tokens=10, output_scores=True, top_logprobs=3, **controls)[0]
    prompt = torch.tensor([tok.encode("w1 w2 w3")])
    seq = torch.cat([prompt, torch.tensor([c.token_ids])], dim=1)
    with torch.no_grad():
        logits = hf(seq).logits[0, prompt.size(1) - 1 : -1]  # (N, V): the logits each new token was chosen from
    scores = tuple(processors(seq[:, : prompt.size(1) + t], logits[t : t + 1]) for t in range(len(c.token_ids)))
    expected = hf.compute_transition_scores(seq, scores, normalize_logits=True)[0]
    assert len(c.logprobs) == len(c.token_ids) == len(c.top_logprobs) > 0
    torch.testing.assert_close(torch.tensor(c.logprobs), expected, rtol=1e-4, atol=1e-4)
    for t, top in enumerate(c.top_logprobs):
        values, ids = torch.log_softmax(scores[t][0].float(), -1).topk(3)
        assert list(top) == ids.tolist() and list(top.values()) == pytest.approx(values.tolist(), abs=1e-4)
    if mode == "greedy":  # transformers' own generate chooses the same tokens
        out = hf.generate(prompt, max_new_tokens=len(c.token_ids), do_sample=False, repetition_penalty=1.3,
                          eos_token_id=None, pad_token_id=0)  # fmt: skip
        assert out[0, prompt.size(1) :].tolist() == c.token_ids


# T0 (bigscience/T0, T0_3B, T0pp) is T5 v1.1 LM-adapted: gated-GELU, untied head, more heads x d_kv than d_model
# may hold, 32 buckets up to distance 128, decoder start 0. The same shape at toy size, with odd widths and a
# vocabulary that is not a multiple of 64.
T0_SHAPED = dict(vocab_size=37, d_model=24, d_kv=10, d_ff=56, num_layers=3, num_decoder_layers=2, num_heads=3,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=32,
                 relative_attention_max_distance=128, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                 decoder_start_token_id=0)  # fmt: skip


def test_a_t0_shaped_folder_matches_transformers_greedy_and_beams(tmp_path):
    from sample.generate import beam_search

    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**T0_SHAPED)).eval()
    hf.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(t5_tokenizer_json())
    model, tok = load_model(f"hf:{tmp_path}")
    c = model.config
    assert (c.mlp, c.tie_embeddings, c.n_head * c.head_size, c.vocab_size) == ("gated-gelu", False, 30, 37)
    enc = torch.tensor([tok.encode("the cat sat on the mat") + [tok.eot_id]])
    dec = torch.randint(2, 23, (1, 6))
    with torch.no_grad():
        expected = hf(input_ids=enc, decoder_input_ids=dec)
        enc_out = model.encode(enc)
        torch.testing.assert_close(enc_out, expected.encoder_last_hidden_state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode(dec, enc_out), expected.logits, rtol=1e-5, atol=1e-5)
        greedy = hf.generate(enc, max_new_tokens=12, do_sample=False, num_beams=1, min_new_tokens=12)
        beams = hf.generate(enc, max_new_tokens=12, do_sample=False, num_beams=3, num_return_sequences=3,
                            length_penalty=1.0, early_stopping=True, output_scores=True,
                            return_dict_in_generate=True)  # fmt: skip
    ours = torch.stack(list(generate_tokens(model, enc, 12, temperature=0.0)), dim=1)
    assert ours[0].tolist() == greedy[0, 1:].tolist()
    hyps = beam_search(model, enc, 12, num_beams=3, num_return_sequences=3, length_penalty=1.0, early_stopping=True,
                       eos_token_id=1)[0]  # fmt: skip
    assert [tokens for tokens, _ in hyps] == [row[1:].tolist() for row in beams.sequences]  # after the start id
    assert [score for _, score in hyps] == pytest.approx(beams.sequences_scores.tolist(), abs=1e-5)
