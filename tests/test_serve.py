"""The OpenAI-compatible server (sample/serve.py), run in a subprocess on a free port of 127.0.0.1 and called over
HTTP by the official openai client and by httpx: completions (streamed and not) and chat equal the pipeline's for
the same seed, concurrent clients get their solo outputs, and bad requests are OpenAI-shaped errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import save_model
from sample.pipeline import pipeline

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, checkpoint) of a server on a tiny chat-capable GPT (random weights, byte tokens + chat ids)."""
    ckpt = tmp_path_factory.mktemp("serve") / "tiny"
    tok = get_tokenizer("byte").with_chat()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=64, pos="rope",
                          norm="rmsnorm"))  # fmt: skip
    save_model(model, ckpt, tokenizer_spec=tok.spec(), meta={"step": 0})
    port = free_port()
    args = [f"checkpoint={ckpt}", f"port={port}", "max_batch_size=4", "max_queue=64"]
    proc = subprocess.Popen([sys.executable, "-m", "sample.serve", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
    yield url, ckpt
    proc.terminate()
    proc.wait(10)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


@pytest.mark.e2e
def test_a_seeded_completion_is_the_pipelines_streamed_or_not(served):
    url, ckpt = served
    api = client(url)
    out = api.completions.create(model="tiny", prompt="Once upon", max_tokens=12, temperature=0.8, seed=7, n=2)
    pipe = pipeline("text-generation", model=ckpt)
    want = pipe("Once upon", max_new_tokens=12, temperature=0.8, seed=7, num_return_sequences=2, return_full_text=False)
    assert [c.text for c in out.choices] == [w["generated_text"] for w in want]
    assert out.usage.prompt_tokens == len(pipe.tokenizer.encode("Once upon")) and out.model == "tiny"
    assert all(c.finish_reason in ("stop", "length") for c in out.choices)
    chunks = list(api.completions.create(model="tiny", prompt="Once upon", max_tokens=12, temperature=0.8, seed=7,
                                         stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason
    extra = {"top_k": 3, "repetition_penalty": 1.3, "min_new_tokens": 2}  # nanoloom's controls by their names
    out = api.completions.create(model="tiny", prompt="Once", max_tokens=10, seed=2, extra_body=extra)
    [want] = pipe("Once", max_new_tokens=10, seed=2, return_full_text=False, **extra)
    assert out.choices[0].text == want["generated_text"]
    head = "def f(x):\n    y = x\n"
    top_level = {"stop_at_top_level": True}  # code: the output ends with the prompt's block, as task=code's
    code = [api.completions.create(model="tiny", prompt=head, max_tokens=30, seed=s, extra_body=top_level)
            for s in range(4)]  # fmt: skip
    want = [pipe(head, max_new_tokens=30, seed=s, stop_at_top_level=True, return_full_text=False)[0] for s in range(4)]
    assert [c.choices[0].text for c in code] == [w["generated_text"] for w in want]
    echoed = api.completions.create(model="tiny", prompt="Once upon", max_tokens=4, seed=1, echo=True)
    assert echoed.choices[0].text.startswith("Once upon")


def test_chat_completions_answer_as_the_pipelines_chat(served):
    url, ckpt = served
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    out = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0.5, seed=3)
    [want] = pipeline("text-generation", model=ckpt)(messages, max_new_tokens=8, temperature=0.5, seed=3,
                                                       return_full_text=False)  # fmt: skip
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == want["generated_text"]
    streamed = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0.5,
                                                   seed=3, stream=True)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == want["generated_text"]


@pytest.mark.e2e
def test_sixteen_concurrent_clients_get_their_solo_outputs(served):
    url, _ = served
    prompts = [f"Story {i}: the" + " cat" * (i % 5) for i in range(16)]

    def ask(i: int) -> str:
        out = client(url).completions.create(model="tiny", prompt=prompts[i], max_tokens=10 + i % 7, seed=100 + i,
                                             temperature=1.0)  # fmt: skip
        return out.choices[0].text

    solo = [ask(i) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, range(16)))
    assert together == solo


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ("{not json", 400, None),
        ({"model": "tiny", "prompt": 5}, 400, "prompt"),
        ({"model": "tiny", "prompt": "a", "colour": "red"}, 400, "colour"),
        ({"model": "tiny", "prompt": "a", "n": 99}, 400, "n"),
        ({"model": "tiny", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "a", "max_tokens": 500}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "x" * 70, "max_tokens": 1}, 400, "prompt"),
        ({"model": "tiny", "prompt": ""}, 400, "prompt"),
        ({"model": "tiny", "prompt": "a", "temperature": "hot"}, 400, "temperature"),
        ({"model": "gpt-4", "prompt": "a"}, 404, "model"),
        ({"model": "tiny", "prompt": "a", "top_k": -1}, 400, "top_k"),
        ({"model": "tiny", "prompt": "a", "repetition_penalty": "high"}, 400, "repetition_penalty"),
    ],
)
def test_bad_requests_are_openai_errors_naming_the_field_and_the_server_keeps_serving(served, body, status, param):
    url, _ = served
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(f"{url}/v1/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_models_lists_the_served_model(served):
    url, _ = served
    assert [m.id for m in client(url).models.list()] == ["tiny"]


@pytest.mark.e2e
def test_the_playground_streams_a_completion_in_a_real_browser(served, tmp_path):
    """The page at / in headless chromium (Debian's, driven by Playwright): type a prompt, press Generate, the text
    streams in (several updates) and ends as the pipeline's completion for the same controls and seed."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("the playground's browser test needs Debian's chromium: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    url, ckpt = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.goto(f"{url}/")
            page.wait_for_function("document.getElementById('model').textContent.startsWith('model: tiny')")
            assert page.is_enabled("#chat-option")  # a chat model: the chat preset is offered
            page.fill("#prompt", "Once upon")
            page.fill("#max_tokens", "24")
            page.fill("#seed", "5")
            # every rendering of the output is counted (an observer callback batches the mutations of one task: a
            # fast model's whole stream can arrive in one network read, rendered piece by piece)
            page.evaluate("""() => { window.updates = 0; new MutationObserver((records) => {
                window.updates += records.filter((m) => m.addedNodes.length).length;
            }).observe(document.getElementById('output'), {childList: true, subtree: true}); }""")
            page.click("#generate")
            page.wait_for_function("document.getElementById('status').textContent.includes('finished')", timeout=30000)
            text = page.inner_text("#output")
            assert page.evaluate("window.updates") >= 3  # streamed: the output changed piece by piece
            assert "tokens/s" in page.inner_text("#status") and not page.inner_text("#error")
            page.screenshot(path=str(tmp_path / "playground.png"))
        finally:
            browser.close()
    [want] = pipeline("text-generation", model=ckpt)("Once upon", max_new_tokens=24, temperature=0.8, top_p=0.95,
                                                      seed=5)  # fmt: skip
    assert text == want["generated_text"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: checkpoint= is required"),
        (["checkpoint=x", "port=99999"], "error: port=99999 must be in 0..65535"),
        (["checkpoint=x", "max_batch_sise=4"], "max_batch_sise"),
    ],
)
@pytest.mark.slow
def test_bad_server_settings_are_one_error_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "sample.serve", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


def test_logprobs_are_the_pipelines_streamed_or_not(served):
    """logprobs=k: each token's log-probability and the k likeliest alternatives, as pipeline(..., logprobs=k)
    scores them; a stream carries each chunk's tokens, which add up to the whole."""
    url, ckpt = served
    api = client(url)
    out = api.completions.create(model="tiny", prompt="Once", max_tokens=8, temperature=0.9, seed=4, logprobs=3)
    [want] = pipeline("text-generation", model=ckpt)("Once", max_new_tokens=8, temperature=0.9, seed=4, logprobs=3)
    got = out.choices[0].logprobs
    assert got.token_logprobs == pytest.approx([t["logprob"] for t in want["logprobs"]], abs=1e-5)
    assert got.tokens == [t["token"] for t in want["logprobs"]] and all(len(top) <= 3 for top in got.top_logprobs)
    assert got.text_offset[0] == 0 and got.text_offset == sorted(got.text_offset)
    chunks = list(api.completions.create(model="tiny", prompt="Once", max_tokens=8, temperature=0.9, seed=4,
                                         logprobs=3, stream=True))  # fmt: skip
    streamed = [lp for c in chunks if c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(got.token_logprobs, abs=1e-6)


def test_a_full_queue_is_429_with_retry_after(tmp_path):
    """max_queue waiting requests: the next one is refused at once (the engine is not stepping here)."""
    from fastapi.testclient import TestClient

    from sample.generate import prompt_ids
    from sample.serve import ServeConfig, Server, create_app

    tok = get_tokenizer("byte")
    save_model(GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32)),
               tmp_path / "m", tokenizer_spec=tok.spec(), meta={"step": 0})  # fmt: skip
    server = Server(ServeConfig(checkpoint=str(tmp_path / "m"), max_queue=1, max_batch_size=1))
    server.submit(prompt_ids(tok, "a", "gpt"), server.pipe.generation_config({"max_new_tokens": 2}), seed=0)
    r = TestClient(create_app(server)).post("/v1/completions", json={"model": "m", "prompt": "b", "max_tokens": 2})
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "server_busy"
    server.engine.close()


def test_a_client_gone_mid_stream_cancels_its_row(served):
    url, _ = served
    before = httpx.get(f"{url}/health").json()["finished"].get("cancelled", 0)
    body = {"model": "tiny", "prompt": "a", "max_tokens": 60, "stream": True, "seed": 0}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))  # the first piece, then hang up
    for _ in range(100):
        health = httpx.get(f"{url}/health").json()
        if health["finished"].get("cancelled", 0) > before:
            break
        time.sleep(0.05)
    assert health["finished"].get("cancelled", 0) == before + 1 and health["running"] == 0
