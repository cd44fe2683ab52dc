"""Continuous batching (sample/engine.py): requests that join and leave a running batch each get exactly what a
one-prompt generate() call gives them, whatever else runs."""

from __future__ import annotations

import threading

import pytest
import torch

from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from sample.engine import Engine
from sample.generate import generate, prompt_ids
from sample.sampling import GenerationConfig

PROMPTS = ["Once upon", "a", "The dog ran to the park and", "def f(x):", "zz", "Lily said hello to"]


def tiny_gpt(pos: str = "rope", block_size: int = 48) -> GPT:
    torch.manual_seed(0)
    options = {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu"} if pos == "rope" else {}
    return GPT(GPTConfig(vocab_size=257, n_layer=2, n_head=2, n_embd=32, block_size=block_size, **options)).eval()


def configs() -> list[GenerationConfig]:
    tok = get_tokenizer("byte")
    base = dict(eos_token_id=[tok.eot_id])
    return [
        GenerationConfig(do_sample=True, temperature=1.0, max_new_tokens=20, **base),
        GenerationConfig(do_sample=False, max_new_tokens=12, **base),
        GenerationConfig(do_sample=True, top_p=0.9, repetition_penalty=1.3, max_new_tokens=18, **base),
        GenerationConfig(
            do_sample=True, top_k=20, max_new_tokens=9, stop_strings=["e"], stop_at_top_level=True, **base
        ),
        GenerationConfig(do_sample=True, temperature=0.7, frequency_penalty=0.5, max_new_tokens=25, **base),
        GenerationConfig(do_sample=True, min_p=0.05, max_new_tokens=15, **base),
    ]


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_rows_joining_and_leaving_get_what_they_get_alone(pos):
    model, tok = tiny_gpt(pos), get_tokenizer("byte")
    alone = [generate(model, tok, [p], c, seed=10 + i)[0][0] for i, (p, c) in enumerate(zip(PROMPTS, configs()))]
    engine = Engine(model, tok, max_batch_size=3)  # fewer slots than requests: some wait for a free one
    jobs = []
    for i, (p, c) in enumerate(zip(PROMPTS, configs())):
        jobs.append(engine.submit(prompt_ids(tok, p, "gpt"), c, seed=10 + i, prompt=p))
        for _ in range(i % 3):  # later requests join a batch already running, at different columns
            engine.step()
    while any(not j.done.is_set() for j in jobs):
        engine.step()
    engine.close()
    for job, ref in zip(jobs, alone):
        got = job.wait(0)
        assert (got.text, got.token_ids, got.finish_reason) == (ref.text, ref.token_ids, ref.finish_reason)
    assert engine.shifts[0] > 0 and engine.shifts[1] > 0  # the cache filled up, and a long prompt made room


def test_streamed_pieces_make_the_text_and_a_cancelled_job_frees_its_slot():
    model, tok = tiny_gpt(), get_tokenizer("byte")
    engine = Engine(model, tok, max_batch_size=1)
    pieces: list[str] = []
    cfg = GenerationConfig(do_sample=True, max_new_tokens=30, eos_token_id=[tok.eot_id])
    first = engine.submit(prompt_ids(tok, "Once", "gpt"), cfg, seed=1, on_text=pieces.append)
    second = engine.submit(prompt_ids(tok, "a", "gpt"), cfg, seed=2)
    engine.step()
    engine.step()
    first.cancel()
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert second.wait(30).text == generate(model, tok, ["a"], cfg, seed=2)[0][0].text  # got the one slot
        assert first.wait(1).finish_reason == "cancelled" and "".join(pieces) == first.result.text
        assert 1 <= len(first.result.token_ids) < 30
    finally:
        stop.set()
        thread.join(5)


def test_what_cannot_be_served_is_refused_at_once():
    model, tok = tiny_gpt(block_size=16), get_tokenizer("byte")
    engine = Engine(model, tok, max_batch_size=2)
    with pytest.raises(ValueError, match=r"exceed the model's context of 16 tokens"):
        engine.submit(list(range(10)), GenerationConfig(max_new_tokens=8), seed=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.submit([], GenerationConfig(max_new_tokens=2), seed=0)


def test_a_failing_step_fails_its_rows_and_the_engine_keeps_serving(monkeypatch):
    model, tok = tiny_gpt(), get_tokenizer("byte")
    engine = Engine(model, tok, max_batch_size=2)
    cfg = GenerationConfig(do_sample=True, max_new_tokens=6, eos_token_id=[tok.eot_id])
    broken = engine.submit(prompt_ids(tok, "a", "gpt"), cfg, seed=0)
    forward = model.forward
    calls = iter([forward, lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))])
    monkeypatch.setattr(model, "forward", lambda *a, **k: next(calls, forward)(*a, **k))  # the first step fails
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            broken.wait(30)
        healthy = engine.submit(prompt_ids(tok, "b", "gpt"), cfg, seed=1)
        assert healthy.wait(30).text == generate(model, tok, ["b"], cfg, seed=1)[0][0].text
    finally:
        stop.set()
        thread.join(5)
