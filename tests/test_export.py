"""Export to transformers: random nanoloom models, exported, load without key warnings and compute the same thing.

transformers is a test dependency; everything is random-initialised and written to tmp_path, so no network is used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from data.tokenizer import BPETokenizer, CharTokenizer, get_tokenizer, gpt2_files, tokenizer_files
from model import GPT, T5, GPTConfig, T5Config
from model.checkpoint import save_model
from model.export import export_hf, hf_architecture, main
from sample.generate import complete

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "héllo wörld 🙂 naïve café, 東京\n\n\tend  ",
    "it's 1234 don't   spaces\n \n<|endoftext|> is text",
]
GPT2_OPTS = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, dropout=0.0)
LLAMA_OPTS = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, dropout=0.0, pos="rope", norm="rmsnorm", mlp="swiglu")


def _gpt(tokenizer, **kwargs) -> GPT:
    torch.manual_seed(2)  # a seed whose greedy byte text mixes ASCII and invalid UTF-8
    # a larger init than training's gives decisive logits, so greedy tokens do not hinge on float rounding
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, init_std=0.3, **kwargs)).eval()


def _t5(tokenizer, **kwargs) -> T5:
    torch.manual_seed(1)  # a seed whose greedy v1.1 text holds a sentinel
    config = T5Config(
        vocab_size=tokenizer.vocab_size, n_encoder_layer=2, n_decoder_layer=2, n_head=2, n_embd=16,
        intermediate_size=32, block_size=32, dropout=0.0, decoder_start_id=tokenizer.eot_id,
        pad_id=tokenizer.eot_id, **kwargs,
    )  # fmt: skip
    return T5(config).eval()


def _export(tmp_path: Path, model, tokenizer) -> Path:
    ckpt = save_model(model, tmp_path / "ckpt", tokenizer.spec())
    return export_hf(ckpt, tmp_path / "hf")


def _assert_clean_load(info: dict) -> None:
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def _assert_pipeline_greedy_equals_ours(out, ours, tok) -> None:
    """transformers' text-generation pipeline on the export writes our greedy completion of a prompt."""
    prompt = "Once upon a time"
    generate = transformers.pipeline("text-generation", model=str(out))
    got = generate(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    expected = complete(ours, tok, prompt, max_new_tokens=12, temperature=0.0)[0]
    assert expected and got == prompt + expected


@pytest.mark.parametrize("tok_name", ["byte", "gpt2"])
def test_gpt2_export_loads_cleanly_with_equal_logits_and_greedy_text(tmp_path, tok_name):
    tok = get_tokenizer(tok_name)
    ours = _gpt(tok, **GPT2_OPTS)
    assert ours.config.padded_vocab_size > tok.vocab_size  # byte: 257 -> 320; gpt2: 50257 -> 50304
    out = _export(tmp_path, ours, tok)
    hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    _assert_clean_load(info)
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.config.vocab_size == tok.vocab_size

    idx = torch.randint(0, tok.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-5, atol=1e-5)

    _assert_pipeline_greedy_equals_ours(out, ours, tok)


def test_gpt2_export_untied_head(tmp_path):
    tok = get_tokenizer("byte")
    ours = _gpt(tok, tie_embeddings=False, **GPT2_OPTS)
    hf, info = AutoModelForCausalLM.from_pretrained(_export(tmp_path, ours, tok), output_loading_info=True)
    _assert_clean_load(info)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    idx = torch.randint(0, tok.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [dict(n_kv_head=1), dict(n_kv_head=2, tie_embeddings=False), dict(n_kv_head=1, bias=True)],
    ids=["mqa-tied", "gqa-untied", "bias"],
)
def test_modern_gpt_exports_to_llama_with_equal_logits_and_greedy_tokens(tmp_path, options):
    tok = get_tokenizer("byte")
    ours = _gpt(tok, **LLAMA_OPTS, **options)
    hf, info = AutoModelForCausalLM.from_pretrained(_export(tmp_path, ours, tok), output_loading_info=True)
    _assert_clean_load(info)
    assert type(hf).__name__ == "LlamaForCausalLM"

    idx = torch.randint(0, tok.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-5, atol=1e-5)

    # cached decoding (rotary angles at absolute positions) agrees too; generate() stops at end-of-text as we do
    hf_tok, prompt = AutoTokenizer.from_pretrained(tmp_path / "hf"), "Once upon"
    inputs = hf_tok(prompt, return_tensors="pt")
    ids = hf.generate(**inputs, max_new_tokens=16, do_sample=False)[0, inputs["input_ids"].size(1) :]
    expected = complete(ours, tok, prompt, max_new_tokens=16, temperature=0.0)[0]
    assert expected and hf_tok.decode(ids, skip_special_tokens=True) == expected


@pytest.mark.parametrize(
    "options",
    [dict(mlp="relu", tie_embeddings=True), dict(mlp="gated-gelu", tie_embeddings=False, head_size=12)],
    ids=["v1.0", "v1.1"],
)
def test_t5_export_loads_cleanly_with_equal_logits_and_greedy_text(tmp_path, options):
    tok = get_tokenizer("byte", sentinels=8)  # 265 ids, padded to 320
    ours = _t5(tok, **options)
    out = _export(tmp_path, ours, tok)
    hf, info = AutoModelForSeq2SeqLM.from_pretrained(out, output_loading_info=True)
    _assert_clean_load(info)
    tied = hf.lm_head.weight.data_ptr() == hf.shared.weight.data_ptr()
    assert tied == options["tie_embeddings"]

    enc, dec = torch.randint(0, tok.vocab_size, (2, 12)), torch.randint(0, tok.vocab_size, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(
            hf(input_ids=enc, decoder_input_ids=dec).logits, ours(enc, dec)[0], rtol=1e-5, atol=1e-5
        )

    hf_tok = AutoTokenizer.from_pretrained(out)
    prompt = "def add(a, b): <extra_id_0>"
    inputs = hf_tok(prompt, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == tok.encode(prompt) + [tok.eot_id]  # encoder inputs end with eot
    ids = hf.generate(**inputs, max_new_tokens=12, do_sample=False)
    expected = complete(ours, tok, prompt, max_new_tokens=12, temperature=0.0)[0]
    assert expected and hf_tok.decode(ids[0], skip_special_tokens=True) == expected


@pytest.mark.parametrize(
    "options, named, target",
    [
        (dict(bias=False), ["model.bias=false"], "GPT-2"),
        (dict(pos="rope"), ["model.norm=layernorm", "model.mlp=gelu"], "Llama"),
        (dict(norm="rmsnorm"), ["model.norm=rmsnorm"], "GPT-2"),
        (dict(mlp="relu2", n_kv_head=1), ["model.mlp=relu2", "model.n_kv_head=1"], "GPT-2"),
        (dict(pos="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True), ["model.qk_norm=true"], "Llama"),
        (dict(pos="rope", norm="rmsnorm", mlp="gelu"), ["model.mlp=gelu"], "Llama"),
    ],
)
def test_unsupported_option_mixes_name_the_options(options, named, target):
    config = GPTConfig(vocab_size=257, **{**GPT2_OPTS, "n_head": 2, **options})
    with pytest.raises(ValueError) as e:
        hf_architecture(config)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in named) and f"no {target} equivalent" in msg, msg


def test_supported_mixes_pick_gpt2_or_llama():
    assert hf_architecture(GPTConfig(vocab_size=257, **GPT2_OPTS)) == "gpt2"
    assert hf_architecture(GPTConfig(vocab_size=257, **LLAMA_OPTS, n_kv_head=2)) == "llama"
    assert hf_architecture(T5Config(vocab_size=257)) == "t5"


def test_unsupported_export_writes_nothing(tmp_path):
    tok = get_tokenizer("byte")
    ckpt = save_model(_gpt(tok, bias=False, **GPT2_OPTS), tmp_path / "ckpt", tok.spec())
    with pytest.raises(ValueError, match="model.bias=false"):
        export_hf(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.mark.e2e
def test_cli_missing_checkpoint_is_one_error_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "model.export", f"checkpoint={tmp_path / 'nope'}", f"out={tmp_path / 'hf'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    assert not (tmp_path / "hf").exists()


def test_cli_writes_the_files_and_refuses_to_clobber(tmp_path, capsys):
    tok = get_tokenizer("byte")
    ckpt = save_model(_gpt(tok, **GPT2_OPTS), tmp_path / "run" / "checkpoints" / "step_1", tok.spec())
    (ckpt.parent / "latest").write_text("step_1\n")
    out = tmp_path / "hf"
    main([f"checkpoint={tmp_path / 'run'}", f"out={out}", "dtype=bfloat16"])  # a run dir: its latest
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "README.md"}  # fmt: skip
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("transformer.wte.weight").dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tok.eot_id
    assert "nanoloom" in (out / "README.md").read_text()

    capsys.readouterr()
    for args in ([f"out={out}"], ["outt=x"], [f"out={tmp_path / 'run'}", "overwrite=true"]):  # the last: the run
        with pytest.raises(SystemExit) as e:
            main([f"checkpoint={ckpt}", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert "overwrite=true" in err or "(did you mean out?)" in err or "run" in err
    main([f"checkpoint={ckpt}", f"out={out}", "overwrite=true"])
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert (ckpt / "model.json").exists()


def _load_tokenizer(tmp_path: Path, files: dict[str, str]):
    tmp_path.mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return AutoTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["gpt", "t5"])
@pytest.mark.parametrize("tok_name", ["byte", "gpt2", "char"])
def test_exported_tokenizer_encodes_and_decodes_like_ours(tmp_path, tok_name, kind):
    if tok_name == "char":
        tok = CharTokenizer.from_texts([*TEXTS, "<extra_id_4>"])  # an out-of-range sentinel is text
    else:
        tok = get_tokenizer(tok_name)
    texts = list(TEXTS)
    if kind == "t5":
        tok = tok.with_sentinels(4)
        texts.append(f"{TEXTS[0][:5]}<extra_id_0>{TEXTS[1][:4]}<extra_id_3><extra_id_1> <extra_id_4>")
    hf_tok = _load_tokenizer(tmp_path / "tok", tokenizer_files(tok.spec(), kind, block_size=64))
    assert hf_tok.eos_token_id == tok.eot_id and len(hf_tok) == tok.vocab_size
    for text in texts:
        ids = tok.encode(text)
        assert hf_tok(text)["input_ids"] == ids + ([tok.eot_id] if kind == "t5" else [])
        assert hf_tok.decode(ids + [tok.eot_id]) == tok.decode(ids + [tok.eot_id])
    if tok_name == "gpt2":
        vocab_bpe, encoder_json = gpt2_files()
        assert (tmp_path / "tok" / "vocab.json").read_bytes() == encoder_json.read_bytes()
        assert (tmp_path / "tok" / "merges.txt").read_bytes() == vocab_bpe.read_bytes()


@pytest.mark.parametrize("tok_name", ["byte", "gpt2"])
def test_exported_tokenizer_keeps_fill_in_the_middle_ids(tmp_path, tok_name):
    tok = get_tokenizer(tok_name).with_sentinels(2).with_fim()  # sentinels first, then the FIM ids
    hf_tok = _load_tokenizer(tmp_path / "tok", tokenizer_files(tok.spec(), "gpt", block_size=64))
    assert len(hf_tok) == tok.vocab_size
    assert hf_tok.convert_ids_to_tokens(list(tok.fim_ids)) == ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
    ids = [tok.fim_ids[0], *tok.encode("a = 1"), tok.fim_ids[2], tok.fim_ids[1], tok.sentinel_id(1)]
    assert hf_tok.decode(ids) == tok.decode(ids)


def test_embedded_tokenizer_json_is_written_as_is(tmp_path):
    embedded = tokenizer_files(get_tokenizer("byte").spec(), "gpt", 64)["tokenizer.json"]
    ours = get_tokenizer("hf", tokenizer_json=embedded)
    files = tokenizer_files(ours.spec(), "gpt", block_size=64)
    assert files["tokenizer.json"] == embedded
    hf_tok = _load_tokenizer(tmp_path, files)
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok(TEXTS[0])["input_ids"] == ours.encode(TEXTS[0])
    with pytest.raises(ValueError, match="'sentencepiece' tokenizer"):
        tokenizer_files({"name": "sentencepiece", "vocab_size": 10}, "gpt", block_size=64)


@pytest.mark.parametrize("kind", ["gpt", "t5"])
def test_embedded_tokenizer_json_gets_nanoloom_sentinels_and_end_of_text(tmp_path, kind):
    # a tokenizer.json whose post-processor appends end-of-text, used by a GPT (which appends nothing) or by a
    # T5 with sentinels appended after its vocabulary
    embedded = tokenizer_files(get_tokenizer("byte").spec(), "t5", 64)["tokenizer.json"]
    ours = get_tokenizer("hf", tokenizer_json=embedded)
    ours = ours.with_sentinels(3) if kind == "t5" else ours
    hf_tok = _load_tokenizer(tmp_path, tokenizer_files(ours.spec(), kind, block_size=64))
    text = TEXTS[0] + ("<extra_id_2> x<extra_id_0><extra_id_3>" if kind == "t5" else "")
    assert hf_tok(text)["input_ids"] == ours.encode(text) + ([ours.eot_id] if kind == "t5" else [])


# ----------------------------------------------------------------------------------------------------------------
# bpe: a vocabulary trained on the user's corpus exports as a GPT-2-format byte-level BPE

BPE_TEXTS = [
    *TEXTS,
    "emoji 👍🏽 👨‍👩‍👧 🇫🇷 日本語の文章 Ελληνικά   runs\t\t of\n\n\n   whitespace   ",
    "class Box:\n    def __init__(self):\n        self.items = []\n\n    def add(self, x):\n\t\treturn  x\n",
    "<|endoftext|>literal end-of-text text<|endoftext|> and <|fim_prefix|> <fim_middle> stay text\r\n\x1b[0m",
]


def _bpe() -> BPETokenizer:
    corpus = [
        "Once upon a time, there was a little cat who liked the sun. 🙂 naïve café\n",
        "def add(a, b):\n    return a + b\n\n\nclass Box:\n    def __init__(self):\n        self.items = []\n",
    ] * 8
    return BPETokenizer.train(corpus, 360)


@pytest.mark.parametrize("variant", ["plain", "fim", "t5"])
def test_bpe_export_gives_our_ids_exactly(tmp_path, variant):
    tok = _bpe()
    kind = "t5" if variant == "t5" else "gpt"
    if variant == "fim":  # data.fim_rate > 0 (with sentinels too): the FIM ids follow the sentinels
        tok = tok.with_sentinels(2).with_fim()
    elif variant == "t5":
        tok = tok.with_sentinels(4)
    model = _t5(tok) if kind == "t5" else _gpt(tok, **GPT2_OPTS)
    out = _export(tmp_path, model, tok)
    names = {p.name for p in out.iterdir()}
    # bpe splits text with its own regex, which the slow GPT2Tokenizer would not: no vocab.json / merges.txt for it
    assert {"tokenizer.json", "tokenizer_config.json"} <= names and not {"vocab.json", "merges.txt"} & names
    texts = list(BPE_TEXTS)
    if variant != "plain":
        texts.append(f"{TEXTS[0][:6]}<extra_id_0>  code<extra_id_1>\n<extra_id_{tok.num_sentinels}>")
    end = [tok.eot_id] if kind == "t5" else []  # T5 encoder inputs end with end-of-text
    for hf_tok in (AutoTokenizer.from_pretrained(out), transformers.PreTrainedTokenizerFast.from_pretrained(out)):
        assert len(hf_tok) == tok.vocab_size and hf_tok.eos_token_id == tok.eot_id
        assert hf_tok.convert_ids_to_tokens(tok.eot_id) == "<|endoftext|>"
        for text in texts:
            ids = tok.encode(text)
            assert hf_tok(text)["input_ids"] == ids + end, text
            assert hf_tok.decode(ids + [tok.eot_id]) == tok.decode(ids + [tok.eot_id]) == text + "<|endoftext|>"
        if tok.fim_ids is not None:
            names = hf_tok.convert_ids_to_tokens(list(tok.fim_ids))
            assert names == ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
            ids = [tok.fim_ids[0], *tok.encode("x = 1\n"), tok.fim_ids[2], tok.fim_ids[1], tok.sentinel_id(1)]
            assert hf_tok.decode(ids) == tok.decode(ids)
        if tok.num_sentinels:
            assert hf_tok.convert_ids_to_tokens([tok.sentinel_id(i) for i in range(tok.num_sentinels)]) == [
                f"<extra_id_{i}>" for i in range(tok.num_sentinels)
            ]


def test_bpe_export_generates_like_nanoloom(tmp_path):
    tok = _bpe()
    ours = _gpt(tok, **GPT2_OPTS)
    out = _export(tmp_path, ours, tok)
    _assert_pipeline_greedy_equals_ours(out, ours, tok)


@pytest.mark.e2e
def test_bpe_run_fine_tunes_with_tokenizer_model_and_exports(tmp_path):
    """data.tokenizer=bpe trains a vocabulary; init_from=<that run> data.tokenizer=model keeps it; the export encodes
    with it exactly."""
    from train_helpers import compose_train, tiny_run_overrides, zen_of_python

    from model.checkpoint import load_model
    from train.loop import run

    corpus = zen_of_python(tmp_path)
    steps = {"trainer.max_steps": 2, "trainer.eval_interval": 2, "trainer.save_interval": 2}
    run(compose_train(tiny_run_overrides(tmp_path, corpus, "bpe", **{"data.tokenizer": "bpe",
                                                                     "data.vocab_size": 300, **steps})))  # fmt: skip
    _, source = load_model(tmp_path / "bpe")
    assert source.name == "bpe" and source.vocab_size <= 300
    tuned = tiny_run_overrides(tmp_path, corpus, "tuned", init_from=str(tmp_path / "bpe"),
                               **{"data.tokenizer": "model", **steps})  # fmt: skip
    assert run(compose_train(tuned))["step"] == 2
    _, tokenizer = load_model(tmp_path / "tuned")
    assert tokenizer.spec() == source.spec()

    main([f"checkpoint={tmp_path / 'tuned'}", f"out={tmp_path / 'hf'}"])
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = corpus.read_text()[:400] + BPE_TEXTS[-1]
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text)


def test_export_shows_its_conversion_on_a_terminal_only(tmp_path, monkeypatch):
    """The tensors' conversion draws a bar on stderr when it is a terminal (a large model takes a while); the
    exported files are the same either way."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tok = get_tokenizer("byte")
    ckpt = save_model(_gpt(tok, **GPT2_OPTS), tmp_path / "ckpt", tok.spec())
    for name, stream in (("quiet", io.StringIO()), ("terminal", Terminal())):
        monkeypatch.setattr(sys, "stderr", stream)
        export_hf(ckpt, tmp_path / name)
        assert ("converting" in stream.getvalue()) == (name == "terminal")
    quiet, shown = ((tmp_path / n / "model.safetensors").read_bytes() for n in ("quiet", "terminal"))
    assert quiet == shown
