"""Does continuous batching pay? The server under 1, 4 and 16 concurrent streaming clients.

A GPT of the --model shape (gpt-mini: 6 layers, 384 wide, GPT-2's vocabulary; random weights: speed does not depend
on what the weights say) is saved and served by `python -m sample.serve` in a subprocess on a free port of
127.0.0.1 (max_batch_size 16). For each concurrency c, c client threads each send --requests streamed completions
of --max-tokens tokens (sampled, seeded) over HTTP and time them: time to the first token (TTFT) and the whole
request. Reported per c: aggregate tokens/s (tokens of every request over the wall time), p50/p95 TTFT and
p50/p95 latency. The baseline is c=1 in the same run; the ratios are each c's aggregate tokens/s over it. Targets
on the 2-core CPU: 16 clients >= 4x the aggregate tokens/s of 1, p95 TTFT < 1 s at 4 clients.
    python bench/serve.py [--model gpt-mini] [--requests 4] [--max-tokens 64]
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package: make `bench`, `model`, `sample` importable

from bench.common import emit_json, machine_info  # noqa: E402

TARGETS = {"speedup_16_vs_1": 4.0, "ttft_p95_s_at_4": 1.0}


def save_checkpoint(model_name: str, directory: Path) -> None:
    """A random-weight GPT of configs/model/<model_name>.yaml's shape with GPT-2's tokenizer."""
    import torch
    import yaml

    from data.tokenizer import get_tokenizer
    from model import GPT, GPTConfig
    from model.checkpoint import save_model

    spec = yaml.safe_load((ROOT / "configs" / "model" / f"{model_name}.yaml").read_text())
    shape = {k: v for k, v in spec.items() if k in ("n_layer", "n_head", "n_embd", "block_size")}
    tokenizer = get_tokenizer("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **shape))
    save_model(model, directory, tokenizer_spec=tokenizer.spec(), meta={"step": 0})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, max_batch_size: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    args = [f"checkpoint={checkpoint}", f"port={port}", f"max_batch_size={max_batch_size}", "model_name=bench"]
    proc = subprocess.Popen([sys.executable, "-m", "sample.serve", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the server did not start: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the server did not answer /health within 60 s")


def one_request(url: str, prompt: str, max_tokens: int, seed: int) -> dict[str, float]:
    """One streamed completion: seconds to its first text, to its end, and the pieces (tokens) it streamed."""
    import httpx

    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "seed": seed, "temperature": 1.0,
            "stream": True}  # fmt: skip
    start = time.perf_counter()
    first = None
    pieces = 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if json.loads(line[6:])["choices"][0]["text"]:
                pieces += 1
                first = first if first is not None else time.perf_counter() - start
    return {"ttft": first if first is not None else float("nan"), "latency": time.perf_counter() - start,
            "tokens": pieces}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """clients threads, each sending `requests` streamed completions one after another."""
    results: list[dict[str, float]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            out = one_request(url, f"Once upon a time, in town number {c}, there was", max_tokens, 1000 * c + r)
            with lock:
                results.append(out)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = [r["ttft"] for r in results]
    latency = [r["latency"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": round(statistics.median(ttft), 4),
        "ttft_p95_s": round(percentile(ttft, 0.95), 4),
        "latency_p50_s": round(statistics.median(latency), 4),
        "latency_p95_s": round(percentile(latency, 0.95), 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gpt-mini", help="configs/model/<name>.yaml's shape")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / args.model
        save_checkpoint(args.model, checkpoint)
        proc, url = start_server(checkpoint, args.max_batch_size)
        try:
            one_request(url, "warm up", 4, 0)  # first-call costs (allocations, lazy imports) out of the numbers
            rows = []
            for clients in args.clients:
                row = load(url, clients, args.requests, args.max_tokens)
                rows.append(row)
                ttft, latency = (row["ttft_p50_s"], row["ttft_p95_s"]), (row["latency_p50_s"], row["latency_p95_s"])
                speed = f"{clients:>3} clients: {row['tokens_per_s']:>8.1f} tokens/s aggregate"
                print(f"{speed} | TTFT p50 {ttft[0]:.3f} s p95 {ttft[1]:.3f} s | latency p50 {latency[0]:.2f} s "
                      f"p95 {latency[1]:.2f} s")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(10)
    base = rows[0]["tokens_per_s"]
    by_clients = {r["clients"]: r for r in rows}
    result: dict[str, Any] = {
        "bench": "serve",
        "model": args.model,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests,
        "results": rows,
        "baseline_clients": rows[0]["clients"],
        "speedup_vs_baseline": {str(r["clients"]): round(r["tokens_per_s"] / base, 3) for r in rows},
        "targets": TARGETS,
        "machine": machine_info(),
    }
    if 16 in by_clients and 1 in by_clients:
        result["speedup_16_vs_1"] = round(by_clients[16]["tokens_per_s"] / by_clients[1]["tokens_per_s"], 3)
    if 4 in by_clients:
        result["ttft_p95_s_at_4"] = by_clients[4]["ttft_p95_s"]
    result["met"] = {k: (result[k] >= v if k.startswith("speedup") else result[k] < v) for k, v in TARGETS.items()
                     if k in result}  # fmt: skip
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
