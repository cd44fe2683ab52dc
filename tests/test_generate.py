"""Tests of sample/generate.py: KV-cached decoding equals a naive loop, eos, stop-string holdback, UTF-8 streaming."""

import io
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from sample.generate import complete, generate_tokens, stream

BYTE = get_tokenizer("byte")
EOT = BYTE.eot_id


class ScriptedLM(nn.Module):
    """A stand-in model with GPT's generation API whose sampled tokens follow a script, one list per row."""

    def __init__(self, scripts: list[list[int]], block_size: int = 256, vocab_size: int = 257) -> None:
        super().__init__()
        self.config = SimpleNamespace(kind="gpt", block_size=block_size, vocab_size=vocab_size)
        self.scripts = scripts
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.forward_calls = 0
        self.cache_set = False

    def set_kv_cache(self, batch_size, max_seq_len=None, device=None, dtype=None):
        assert batch_size == len(self.scripts)
        self.cache_set, self.forward_calls = True, 0

    def clear_kv_cache(self):
        self.cache_set = False

    def forward(self, idx, targets=None, input_pos=None, logits_to_keep=0):
        assert self.cache_set and input_pos is not None
        B, T = idx.shape
        logits = torch.full((B, T, self.config.vocab_size), -1e4)
        for b, script in enumerate(self.scripts):
            step = self.forward_calls
            logits[b, -1, script[step] if step < len(script) else EOT] = 0.0
        self.forward_calls += 1
        return logits, None


def scripted(text: str, *, end: bool = True) -> ScriptedLM:
    return ScriptedLM([BYTE.encode(text) + ([EOT] if end else [])])


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=257)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


@pytest.mark.parametrize(
    "overrides", [{}, dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1)], ids=["gpt2", "modern"]
)
def test_cached_generation_equals_naive_loop(overrides):
    model = tiny_gpt(**overrides)
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    cached = torch.stack(list(generate_tokens(model, prompt, 20, temperature=0.0)), dim=1)  # (B, 20)
    idx = prompt
    with torch.no_grad():
        for _ in range(20):  # no cache: re-run the whole sequence every step
            logits, _ = model(idx)
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(cached, idx[:, 5:])


def test_gpt_reorder_cache_keeps_the_chosen_rows():
    model = tiny_gpt(pos="rope", n_kv_head=1)
    g = torch.Generator().manual_seed(2)
    prompts, token = torch.randint(0, 256, (3, 6), generator=g), torch.randint(0, 256, (3, 1), generator=g)
    rows = torch.tensor([2, 0, 0])  # one row dropped, one duplicated: what beam search does
    with torch.no_grad():
        model.set_kv_cache(batch_size=3, max_seq_len=8)
        model(prompts, input_pos=torch.arange(6))
        model.reorder_cache(rows)
        cached, _ = model(token, input_pos=torch.tensor([6]))
        model.clear_kv_cache()
        full, _ = model(torch.cat([prompts[rows], token], dim=1))  # no cache: the reordered prompts from scratch
    torch.testing.assert_close(cached[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)


def test_generation_stops_when_every_row_has_produced_eos():
    model = ScriptedLM([[1, EOT, 5, 5, 5, 5], [1, 2, 3, EOT, 9, 9]])
    steps = list(generate_tokens(model, torch.zeros(2, 3, dtype=torch.long), 10, temperature=0.0, eos_token_id=EOT))
    assert torch.stack(steps, dim=1).tolist() == [[1, EOT, EOT, EOT], [1, 2, 3, EOT]]  # finished rows repeat eos
    assert not model.cache_set


def test_without_eos_generation_runs_to_max_new_tokens():
    model = scripted("ab")  # the script ends in eot, which is just another token without eos_id
    steps = list(generate_tokens(model, torch.zeros(1, 1, dtype=torch.long), 7, temperature=0.0))
    assert len(steps) == 7
    assert model.forward_calls == 7  # prefill + 6 decodes: no forward for a token nobody reads


def test_early_close_clears_cache_and_restores_train_mode():
    model = tiny_gpt().train()
    tokens = generate_tokens(model, torch.zeros(1, 4, dtype=torch.long), 10)
    next(tokens)
    assert all(block.attn.kv_cache is not None for block in model.transformer.h)
    assert not model.training  # eval while generating: no dropout
    tokens.close()
    assert all(block.attn.kv_cache is None for block in model.transformer.h)
    assert model.mask_cache is None and model.training


def test_complete_stops_at_eot_and_excludes_the_prompt():
    assert complete(scripted("Hello world"), BYTE, "Say:", max_new_tokens=50) == ["Hello world"]


def test_complete_returns_num_samples_rows():
    model = ScriptedLM([BYTE.encode("one") + [EOT], BYTE.encode("two!") + [EOT]])
    assert complete(model, BYTE, "x", num_return_sequences=2, max_new_tokens=10, do_sample=True) == ["one", "two!"]


def test_stop_string_spanning_tokens_is_held_back_and_never_yielded():
    # "<END>" is five byte tokens; "<EN" is a false start that must come out in full once it cannot match
    model = scripted("once <EN there was <END> after the end")
    pieces = list(stream(model, BYTE, "Tell:", max_new_tokens=100, temperature=0.0, stop_strings=["<END>"]))
    assert "".join(pieces) == "once <EN there was "
    assert not any("<END" in p for p in pieces)
    assert "<EN " in pieces  # held back while it could begin "<END>", released whole once it could not
    assert len(pieces) > 1  # text streams out before the stop, it is not all held to the end
    assert model.forward_calls == len("once <EN there was <END>")  # generation ended at the stop string
    assert not model.cache_set


def test_holdback_with_several_stop_strings_and_overlaps():
    model = scripted("a\n\nb\n\n\nc\ndef f")
    stops = ["\ndef ", "\n\n\n"]
    assert "".join(stream(model, BYTE, "", max_new_tokens=100, stop_strings=stops)) == "a\n\nb"
    model = scripted("x = 1\ndefault = 2\ndef g")  # "\ndef" without the space is not a stop
    assert complete(model, BYTE, "", max_new_tokens=100, stop_strings=stops) == ["x = 1\ndefault = 2"]


def test_held_back_text_is_released_at_the_end():
    model = scripted("ends with <EN", end=False)
    out = complete(model, BYTE, "x", max_new_tokens=len("ends with <EN"), stop_strings=["<END>"])
    assert out == ["ends with <EN"]  # max_new_tokens reached: the partial match is ordinary text


def test_stream_never_splits_multibyte_characters():
    text = "café → naïve ✓ 🙂!"
    pieces = list(stream(scripted(text), BYTE, "x", max_new_tokens=100))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "→" in pieces and "🙂" in pieces  # released whole, as soon as the last byte arrives


def test_stream_never_splits_multibyte_characters_gpt2():
    gpt2 = get_tokenizer("gpt2")
    text = "naïve → 🙂🙃 日本語"
    ids = gpt2.encode(text)
    assert any("\ufffd" in gpt2.decode([i]) for i in ids)  # some character really spans several tokens
    model = ScriptedLM([ids + [gpt2.eot_id]], vocab_size=gpt2.vocab_size)
    pieces = list(stream(model, gpt2, "x", max_new_tokens=100))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_prompt_longer_than_context_is_cropped_from_the_left():
    model = tiny_gpt()
    prompt = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="dropped the first 13 prompt tokens"):
        cropped = list(generate_tokens(model, prompt, 5, temperature=0.0))
    expected = list(generate_tokens(model, prompt[:, 13:], 5, temperature=0.0))  # the last 27 tokens
    assert torch.equal(torch.stack(cropped), torch.stack(expected))


def test_max_new_tokens_is_not_capped_by_the_context():
    model = tiny_gpt()  # block_size 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt that fits is never cropped, and nothing is capped: no warning
        assert len(list(generate_tokens(model, torch.zeros(1, 3, dtype=torch.long), 100, temperature=0.0))) == 100
        assert len(list(generate_tokens(model, torch.zeros(1, 32, dtype=torch.long), 50, temperature=0.0))) == 50
    with pytest.warns(UserWarning, match=r"dropped the first 32 prompt tokens \(kept the last 16\)") as record:
        steps = list(generate_tokens(model, torch.zeros(1, 32 + 16, dtype=torch.long), 100, temperature=0.0))
    assert len(steps) == 100 and len(record) == 1


def test_seeded_completions_are_reproducible():
    model = tiny_gpt()
    a = complete(model, BYTE, "Once upon a time,", max_new_tokens=10, do_sample=True, num_return_sequences=3, seed=7)
    b = complete(model, BYTE, "Once upon a time,", max_new_tokens=10, do_sample=True, num_return_sequences=3, seed=7)
    assert a == b
    assert (
        "".join(stream(model, BYTE, "def fibonacci(n):", max_new_tokens=8, do_sample=True, seed=3))
        == complete(model, BYTE, "def fibonacci(n):", max_new_tokens=8, do_sample=True, seed=3)[0]
    )  # one core: the streamed sample is the completed one


def test_empty_prompt_starts_from_end_of_text():
    model = scripted("hi")
    assert complete(model, BYTE, "", max_new_tokens=5) == ["hi"]


def test_argument_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="temperature"):
        complete(model, BYTE, "x", temperature=-1.0)
    with pytest.raises(ValueError, match="num_return_sequences"):
        complete(model, BYTE, "x", num_return_sequences=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(generate_tokens(model, torch.zeros(1, 2, dtype=torch.long), -1))
    with pytest.raises(ValueError, match="meta"):
        complete(model, BYTE, "x", device="meta")


# ----------------------------------------------------------------------------------------------------------------
# what generation costs: the prefill's output head, compiled decoding, memory


def test_prefill_projects_only_the_last_position():
    model = tiny_gpt()
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[1]))
    prompt = torch.randint(0, 256, (2, 11))
    tokens = torch.stack(list(generate_tokens(model, prompt, 4)), dim=1)  # (2, 4)
    assert rows == [1, 1, 1, 1]  # prefill (11 prompt tokens) and three steps: one position each through the head
    # and the tokens are those of the full-logits forward
    idx = prompt
    for _ in range(4):
        idx = torch.cat([idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, idx[:, 11:])


def test_logits_to_keep_refuses_targets():
    model = tiny_gpt()
    idx = torch.randint(0, 256, (1, 5))
    assert model(idx, logits_to_keep=2)[0].shape == (1, 2, 257)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(idx, targets=idx, logits_to_keep=1)


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile as generation calls it, on dynamo's eager backend (graphs traced, guarded and counted as real
    compilation does, without inductor's minutes); yields the frames it compiled."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": counter}))
    torch._dynamo.reset()
    yield counter
    torch._dynamo.reset()


def test_compiled_decoding_compiles_once_for_prompts_of_many_lengths(eager_compile):
    model = tiny_gpt(block_size=256)
    outputs = {}
    for length in (3, 9, 17, 30, 45, 51, 60, 2, 12):  # nine cache lengths before bucketing: past the limit of 8
        prompt = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(length))
        compiled = torch.cat(list(generate_tokens(model, prompt, 4, compile=True)), dim=0)
        eager = torch.cat(list(generate_tokens(model, prompt, 4)), dim=0)
        outputs[length] = torch.equal(compiled, eager)
    assert all(outputs.values()), outputs
    assert eager_compile.frame_count == 1  # one graph: every cache fits the 64-slot bucket


def test_cache_length_buckets():
    from sample.generate import cache_length

    assert [cache_length(n, 256, False) for n in (1, 63, 200)] == [1, 63, 200]  # eager: exactly what is needed
    assert [cache_length(n, 256, True) for n in (1, 64, 65, 129, 256)] == [64, 64, 128, 256, 256]
    assert cache_length(40, 32, True) == 32  # never past the model's block_size
    assert cache_length(300, None, True) == 512  # t5: no limit


def test_a_compiled_model_is_freed_when_its_user_drops_it(eager_compile):
    import gc
    import weakref

    model = tiny_gpt()
    list(generate_tokens(model, torch.randint(0, 256, (1, 5)), 3, compile=True))
    assert eager_compile.frame_count == 1
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # the compiled-step cache must not keep the model (weights, KV cache) alive


def test_bf16_inference_keeps_the_rope_table_in_fp32():
    from nanoloom.device import inference_dtype

    model = tiny_gpt(pos="rope")
    table = model.rope.clone()
    model.to(torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16 and model.rope.dtype == torch.float32
    assert torch.equal(model.rope, table)
    assert len(list(generate_tokens(model, torch.randint(0, 256, (2, 5)), 3))) == 3  # a bf16 model generates
    assert inference_dtype("cpu") is None  # CPUs keep the stored fp32 weights


@pytest.mark.parametrize("capability, expected", [((7, 5), None), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_a_gpu_with_bf16_tensor_cores_loads_the_model_in_bf16(monkeypatch, capability, expected):
    from nanoloom.device import inference_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert inference_dtype("cuda") == expected
    assert inference_dtype(torch.device("cuda", 1)) == expected


def test_gpt_generate_is_nanogpts_method_on_the_generation_core():
    """model.generate(idx, max_new_tokens, temperature, top_k) as nanoGPT's: the prompt followed by the new tokens,
    never stopping at end-of-text; top_k=1 is the argmax a cache-less forward per step gives; torch.manual_seed
    seeds it."""
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 40, (2, 5))
    out = model.generate(idx, 20, top_k=1)  # past block_size: the window slides
    assert out.shape == (2, 25) and torch.equal(out[:, :5], idx)
    by_hand = idx
    for _ in range(6):  # nanoGPT's loop, no cache, while the context fits
        logits, _ = model(by_hand[:, -16:])
        by_hand = torch.cat([by_hand, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out[:, :11], by_hand)
    torch.manual_seed(1)
    a = model.generate(idx, 8, temperature=0.8, top_k=5)
    torch.manual_seed(1)
    assert torch.equal(a, model.generate(idx, 8, temperature=0.8, top_k=5))
    logits, _ = model(idx)
    assert int(a[0, 5]) in logits[0, -1].topk(5).indices.tolist()  # the first new token is among the top 5


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("on_a_terminal", [True, False])
def test_long_waits_show_a_progress_bar_on_a_terminal_only(monkeypatch, on_a_terminal):
    """Multi-sample generation, beam search and scoring draw a tqdm bar on stderr when asked and stderr is a
    terminal (as data preparation does), and never otherwise; the results are the same either way."""
    from data.tokenizer import ByteTokenizer
    from model import GPT, GPTConfig
    from sample.generate import generate
    from train.scoring import score_tokens

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    tok = ByteTokenizer()
    err = _Terminal() if on_a_terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    controls = {"do_sample": True, "num_return_sequences": 3, "max_new_tokens": 6, "seed": 1}
    sampled = generate(model, tok, "ab", progress=True, **controls)
    beams = generate(model, tok, "ab", num_beams=2, max_new_tokens=6, progress=True)
    scored = score_tokens(model, torch.arange(60) % 200, 16, progress=True)
    shown = sys.stderr.getvalue()
    assert ("generating 3 rows" in shown and "beam search" in shown and "scoring" in shown) == on_a_terminal
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert generate(model, tok, "ab", **controls) == sampled
    assert generate(model, tok, "ab", num_beams=2, max_new_tokens=6) == beams
    assert score_tokens(model, torch.arange(60) % 200, 16) == scored
    assert sys.stderr.getvalue() == ""  # not asked: no bar even on a terminal


def test_an_inference_models_head_is_laid_out_for_decoding_and_still_saves(tmp_path):
    """Generating from an eval-mode CPU model stores its (tied) fp32 head column-major: the same values and
    outputs; a checkpoint written afterwards is contiguous and loads equal. A training model is left as it is."""
    from data.tokenizer import get_tokenizer
    from model.checkpoint import load_model, save_model

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=257))
    before = [int(t) for t in generate_tokens(model, torch.tensor([[1, 2, 3]]), 8)]  # training mode: untouched
    assert model.lm_head.weight.is_contiguous()
    model.eval()
    weights = model.lm_head.weight.detach().clone()
    after = [int(t) for t in generate_tokens(model, torch.tensor([[1, 2, 3]]), 8)]
    w = model.lm_head.weight
    assert w.stride() == (1, w.size(0)) and w is model.transformer.wte.weight and torch.equal(w, weights)
    assert after == before
    loaded, _ = load_model(save_model(model, tmp_path / "m", get_tokenizer("byte").spec()))
    assert torch.equal(loaded.lm_head.weight, weights)


def test_compiled_one_token_step_reads_each_weight_as_dot_products(monkeypatch):
    """Under torch.compile the one-token step writes each fp32 one-row linear as dot products (sum(w * x, -1)), a
    loop inductor reads the weights in at the memory roofline, and lays the weights out row-major for it; the tokens
    stay the eager ones. Decoding that feeds several rows (assisted decoding's verification) lays the head
    column-major again (MKL's fast order)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": record}))
    torch._dynamo.reset()
    try:
        model = tiny_gpt(block_size=64).eval()
        weights = model.lm_head.weight.detach().clone()
        prompt = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
        eager = torch.cat(list(generate_tokens(model, prompt, 6)))
        assert model.lm_head.weight.stride() == (1, model.lm_head.weight.size(0))
        compiled = torch.cat(list(generate_tokens(model, prompt, 6, compile=True)))
        assert model.lm_head.weight.is_contiguous() and torch.equal(model.lm_head.weight, weights)
        assert torch.equal(compiled, eager)
        assert len(graphs) == 1
        targets = {str(node.target) for node in graphs[0].graph.nodes if node.op in ("call_function", "call_method")}
        assert not any("linear" in t or "matmul" in t or t.endswith(".mm") for t in targets), targets
        assert any("sum" in t for t in targets), targets
        list(generate_tokens(model, prompt, 4, compile=True, prompt_lookup_num_tokens=3))  # verifies several rows
        assert model.lm_head.weight.stride() == (1, model.lm_head.weight.size(0))
        assert torch.equal(torch.cat(list(generate_tokens(model, prompt, 6, compile=True))), eager)
    finally:
        torch._dynamo.reset()


def test_compile_reaches_generation_from_generate_stream_the_pipeline_and_the_sample_command(
    tmp_path, capsys, eager_compile
):
    """compile=True (generate, stream, infill; pipeline(compile=True); python -m sample compile=true, which the
    chat command shares) decodes through the compiled one-token step, with the eager step's tokens."""
    from train_helpers import run_sample_main

    from model.checkpoint import save_model
    from sample import generate, infill, pipeline

    byte = get_tokenizer("byte")
    path = save_model(tiny_gpt(block_size=64), tmp_path / "m", tokenizer_spec=byte.spec())
    model = tiny_gpt(block_size=64)
    greedy = dict(max_new_tokens=12, do_sample=False)
    plain = generate(model, byte, ["def f(x):", "Once"], seed=0, **greedy)
    assert eager_compile.frame_count == 0
    assert generate(model, byte, ["def f(x):", "Once"], seed=0, compile=True, **greedy) == plain
    assert eager_compile.frame_count == 1
    assert "".join(stream(model, byte, "def f(x):", compile=True, **greedy)) == plain[0][0].text
    assert eager_compile.frame_count == 2  # batch 1: another shape
    fim, fim_model = get_tokenizer("byte", fim=True), tiny_gpt(block_size=64, vocab_size=300)
    filled = infill(fim_model, fim, "def f(", "):", seed=0, **greedy)
    torch._dynamo.reset()
    frames = eager_compile.frame_count
    assert infill(fim_model, fim, "def f(", "):", seed=0, compile=True, **greedy) == filled
    assert eager_compile.frame_count > frames
    pipe = pipeline("text-generation", model=path, device="cpu", dtype="float32", compile=True)
    torch._dynamo.reset()  # a model of the same shapes would reuse the step compiled above
    frames = eager_compile.frame_count
    out = pipe("def f(x):", **greedy)
    assert out[0]["generated_text"] == "def f(x):" + plain[0][0].text and eager_compile.frame_count > frames
    with pytest.raises(TypeError, match="compile"):
        pipeline("text-generation", model=path, compile="yes")
    torch._dynamo.reset()
    frames = eager_compile.frame_count
    code, printed, _ = run_sample_main(capsys, f"checkpoint={path}", "prompt=def f(x):", "max_new_tokens=12",
                                       "do_sample=false", "compile=true", "device=cpu")  # fmt: skip
    assert code == 0 and plain[0][0].text in printed and eager_compile.frame_count > frames
