"""Smoke test of bench/generate.py on a tiny model: it runs, and its last stdout line is the JSON it promises.

Timing numbers are not checked (benchmarks are never part of pass/fail); transformers is skipped for speed
(the export parity it relies on is tested in test_export.py), and so is torch.compile.
"""

from __future__ import annotations

import json

from bench.generate import main


def test_generate_bench_prints_table_then_json(capsys, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--model", "gpt-nano", "--batch-sizes", "1", "2", "--new-tokens", "3", "--prompt-tokens", "5"]
    result = main([*argv, "--repeats", "1", "--skip-transformers", "--skip-compile", "--out", str(out)])

    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result == json.loads(out.read_text())
    assert result["speedup_vs_transformers"] is None and result["speedup_vs_transformers_batch8"] is None
    assert result["speedup_vs_no_cache"] > 0
    rows = {(r["impl"], r["dtype"], r["batch"], r["mode"]) for r in result["results"]}
    impls = {("nanoloom", "float32"), ("nanoloom", "bfloat16"), ("no-cache", "float32")}
    assert rows == {(*i, b, m) for i in impls for b in (1, 2) for m in ("greedy", "top-k")}
    assert all(r["tokens_per_s"] > 0 and len(r["seconds_all"]) == 1 for r in result["results"])
    assert sum(line.startswith(("nanoloom ", "no-cache ")) for line in lines) == len(rows)  # one table line per row


def test_train_bench_compares_with_the_reference_and_prints_json(capsys, tmp_path):
    from bench.train import main as train_main

    result = train_main(["--models", "gpt-nano", "--batch", "2", "--block", "32", "--out", str(tmp_path / "t.json")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result == json.loads((tmp_path / "t.json").read_text())
    assert [(r["impl"], r["model"]) for r in result["results"]] == [("reference", "gpt-nano"), ("nanoloom", "gpt-nano")]
    assert result["results"][0]["dtype"] == "float32"  # nanoGPT's CPU recipe
    assert result["speedup_vs_reference"] > 0 and 0 < result["mfu"] < 1 and result["rss_ratio_vs_reference"] > 0
