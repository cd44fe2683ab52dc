"""Smoke test of bench/generate.py on a tiny model: it runs, and its last stdout line is the JSON it promises.

Timing numbers are not checked (benchmarks are never part of pass/fail); transformers is skipped for speed
(the export parity it relies on is tested in test_export.py), and so is torch.compile.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
    impls = {("nanoloom", "float32"), ("nanoloom", "bfloat16"), ("nanoloom", "int8"), ("no-cache", "float32")}
    lookup = {("nanoloom-prompt-lookup", "float32", 1, m) for m in ("greedy", "top-k")}  # assisted: batch 1 only
    assert rows == {(*i, b, m) for i in impls for b in (1, 2) for m in ("greedy", "top-k")} | lookup
    assert all(r["tokens_per_s"] > 0 and len(r["seconds_all"]) == 1 for r in result["results"])
    assert sum(line.startswith(("nanoloom", "no-cache ")) for line in lines) == len(rows)  # one table line per row
    assert result["bandwidth_gb_per_s"] > 0 and 0 < result["roofline_share"]
    assert result["best_exact_method"] in ("nanoloom", "nanoloom-prompt-lookup")
    exact = {r["impl"]: r["identical_to_greedy"] for r in result["results"] if r["mode"] == "greedy"}
    assert exact["nanoloom-prompt-lookup"] is True
    assert result["int8_speedup_vs_float32"] > 0 and result["int8_quality"] is None  # random weights: no held-out text


@pytest.mark.e2e
def test_generate_bench_completes_held_out_code_with_a_draft_checkpoint(capsys, tmp_path):
    """The headline's shape: a checkpoint completing held-out function heads, prompt lookup and a draft model
    exact, int8's held-out bits per byte beside float32's."""
    from data.tokenizer import get_tokenizer
    from model import GPT, GPTConfig
    from model.checkpoint import save_model

    byte = get_tokenizer("byte").spec()
    torch.manual_seed(0)
    target = save_model(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=256, vocab_size=257)),
                        tmp_path / "target", tokenizer_spec=byte)  # fmt: skip
    draft = save_model(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=256, vocab_size=257)),
                       tmp_path / "draft", tokenizer_spec=byte)  # fmt: skip
    argv = ["--checkpoint", str(target), "--draft", str(draft), "--batch-sizes", "1", "--new-tokens", "8",
            "--num-prompts", "2", "--repeats", "1", "--skip-transformers", "--skip-compile", "--skip-no-cache",
            "--quality-stories", "3"]  # fmt: skip
    result = main(argv)
    assert result["settings"]["prompts"] == "code" and result["settings"]["num_prompts"] == 2
    greedy = {r["impl"] + "/" + r["dtype"]: r for r in result["results"] if r["mode"] == "greedy"}
    assert greedy["nanoloom-assisted/float32"]["identical_to_greedy"] is True
    assert greedy["nanoloom-prompt-lookup/float32"]["identical_to_greedy"] is True
    assert "roofline_share" not in greedy["nanoloom-assisted/float32"]  # fewer forwards than tokens
    quality = result["int8_quality"]
    assert quality["stories"] == 3 and quality["bpb_int8"] > 0
    assert quality["bpb_relative_change"] == pytest.approx(quality["bpb_int8"] / quality["bpb_float32"] - 1, abs=1e-3)


@pytest.mark.slow
def test_train_bench_compares_with_the_reference_and_prints_json(capsys, tmp_path):
    from bench.train import main as train_main

    argv = ["--models", "gpt-nano", "--batch", "2", "--block", "32", "--profile", "--out", str(tmp_path / "t.json")]
    result = train_main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result == json.loads((tmp_path / "t.json").read_text())
    assert [(r["impl"], r["model"]) for r in result["results"]] == [("reference", "gpt-nano"), ("nanoloom", "gpt-nano")]
    assert result["results"][0]["dtype"] == "float32"  # nanoGPT's CPU recipe
    assert result["speedup_vs_reference"] > 0 and 0 < result["mfu"] < 1 and result["rss_ratio_vs_reference"] > 0
    assert all(r["peak_gflops"] > 0 for r in result["results"])  # each MFU beside the peak it divides by
    shares = result["results"][1]["time_shares"]  # --profile: where nanoloom's step time goes
    assert {"matmul", "optimizer"} <= set(shares) and abs(sum(shares.values()) - 1) < 0.01
    assert "time_shares" not in result["results"][0]  # the reference is not profiled


@pytest.mark.e2e
def test_train_bench_reference_builds_the_demo_shape():
    """The `demo` row's reference trains the architecture `make demo` trains, with its vocabulary."""
    from bench.train import composed, reference_worker

    cfg = composed(["experiment=demo"])
    result = reference_worker("demo", 1, 16)
    c = cfg.model
    assert (c.n_layer, c.n_embd, c.pos, cfg.data.vocab_size) == (4, 256, "rope", 4096)
    from model import GPT

    expected = GPT(type(c)(**{**c.to_dict(), "vocab_size": 4096, "block_size": 16})).num_params()
    assert result["params"] == expected and result["step_seconds"] > 0


@pytest.mark.slow
def test_resume_memory_bench_reports_each_ranks_peak_against_one_process(capsys, tmp_path):
    from bench.resume_memory import main as memory_main

    result = memory_main(["--model", "gpt-nano", "--block", "32", "--out", str(tmp_path / "m.json")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result == json.loads((tmp_path / "m.json").read_text())
    peaks = result["peak_rss"]
    assert [len(peaks["single"][p]) for p in ("train_and_save", "resume_and_save")] == [1, 1]
    assert [len(peaks["fsdp"][p]) for p in ("train_and_save", "resume_and_save")] == [2, 2]
    assert all(0 < r < 5 for ratios in result["rank_over_single"].values() for r in ratios)
    assert result["state_bytes"] == 12 * result["params"]


@pytest.mark.slow
def test_speedrun_races_both_recipes_on_whole_val_curves(capsys, tmp_path):
    from bench.speedrun import best_within, time_to
    from bench.speedrun import main as speedrun_main

    text = tmp_path / "plays.txt"
    text.write_text(
        "".join(f"ROMEO {i}:\nWhat light through yonder window breaks? It is the east.\n" for i in range(400))
    )
    argv = ["--text", str(text), "--repeats", "1", "--reference-iters", "4", "--eval-every", "2", "--target", "100",
            "--plot", str(tmp_path / "race.png"), "trainer.max_steps=4", "trainer.eval_interval=2"]  # fmt: skip
    result = speedrun_main(argv)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    for name in ("reference", "nanoloom"):
        curve = result["curves"][name][0]
        assert [p["step"] for p in curve] == [0, 2, 4]  # both evaluated at the same steps, the whole val split
        assert curve[0]["time"] == 0.0 < curve[-1]["time"]  # the clock counts training steps only
        assert result["recipes"][name]["reached_target"] == [True]  # any loss is below 100: at the first eval
    assert result["time_ratio_vs_reference"] is None  # both at 0 s: no ratio to give
    assert (tmp_path / "race.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "n_layer: 3" in result["nanoloom_config"]  # the shipped recipe ran, with the overrides on top

    curve = [{"time": 0.0, "val_loss": 4.0}, {"time": 5.0, "val_loss": 2.0}, {"time": 9.0, "val_loss": 1.8}]
    assert time_to(curve, 1.9) == 9.0 and time_to(curve, 1.0) is None
    assert best_within(curve, 6.0) == 2.0


def test_quality_bench_scores_a_checkpoint_and_prints_json(capsys, tmp_path):
    from bench.quality import main as quality_main
    from data.corpora import read_stories
    from data.tokenizer import BPETokenizer
    from model import GPT, GPTConfig
    from model.checkpoint import save_model

    stories = read_stories(Path(__file__).resolve().parents[1] / "data/assets/tinystories/valid.txt.xz")[:6]
    tokenizer = BPETokenizer.train(stories, 400)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.vocab_size))
    save_model(model, tmp_path / "ckpt", tokenizer_spec=tokenizer.spec(), meta={"step": 0})
    (tmp_path / "stories.txt").write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))
    code = tmp_path / "lib.py"
    code.write_text("".join(f'def f{i}(x):\n    """Times {i}."""\n    return x * {i}\n\n' for i in range(4)))
    argv = ["--checkpoint", str(tmp_path / "ckpt"), "--stories", str(tmp_path / "stories.txt"), "--code", str(code)]
    result = quality_main([*argv, "--heads", "3", "--prompts", "2", "--out", str(tmp_path / "q.json")])

    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result == json.loads((tmp_path / "q.json").read_text())
    assert result["story_count"] == 6 and result["prompts"] == 2 and result["heads"] == 3
    assert result["story_bpb"] > 1.5  # an untrained model: bits per byte near log2(vocab) / bytes per token
    assert 0 <= result["story_dictionary_words"] <= 1 and 0 <= result["code_function_rate"] <= 1
    assert set(result["met"]) == set(result["targets"]) and result["met"]["story_bpb"] is False


def test_instruct_bench_asks_each_kind_of_checkpoint_and_prints_json(capsys, tmp_path):
    """A base GPT (plain prompt), a chat GPT (messages) and a T5 (text2text) are each asked the held-out items."""
    from bench.instruct import main as instruct_main
    from data.tokenizer import get_tokenizer
    from model import GPT, T5, GPTConfig, T5Config
    from model.checkpoint import save_model

    byte = get_tokenizer("byte")
    for name, tokenizer in (("base", byte), ("chat", byte.with_chat())):
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=128, vocab_size=tokenizer.vocab_size))
        save_model(model, tmp_path / name, tokenizer_spec=tokenizer.spec(), meta={"step": 0})
    t5_tok = byte.with_sentinels(4)
    t5 = T5(T5Config(n_encoder_layer=1, n_decoder_layer=1, n_head=2, n_embd=16, intermediate_size=32,
                     block_size=128, vocab_size=t5_tok.vocab_size, decoder_start_id=t5_tok.eot_id,
                     pad_id=t5_tok.eot_id))  # fmt: skip
    save_model(t5, tmp_path / "t5", tokenizer_spec=t5_tok.spec(), meta={"step": 0})
    argv = [arg for name in ("base", "chat", "t5") for arg in ("--checkpoint", str(tmp_path / name))]
    result = instruct_main([*argv, "--limit", "12", "--out", str(tmp_path / "i.json")])

    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result == json.loads((tmp_path / "i.json").read_text())
    asked = [result["results"][str(tmp_path / n)]["asked_as"] for n in ("base", "chat", "t5")]
    assert asked == ["completion", "chat", "text2text"] and result["items"] == 12
    for r in result["results"].values():  # an untrained model answers (almost) nothing right
        assert 0 <= r["accuracy"]["all"] <= 1 and {"seen", "unseen", "reverse", "larger"} <= set(r["accuracy"])


@pytest.mark.e2e
def test_serve_bench_loads_the_server_with_concurrent_clients_and_prints_json(capsys, tmp_path):
    from bench.serve import main as serve_main

    argv = ["--model", "gpt-nano", "--clients", "1", "3", "--requests", "1", "--max-tokens", "4"]
    result = serve_main([*argv, "--out", str(tmp_path / "s.json")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result == json.loads((tmp_path / "s.json").read_text())
    assert [r["clients"] for r in result["results"]] == [1, 3] and result["speedup_vs_baseline"]["1"] == 1.0
    assert [r["requests"] for r in result["results"]] == [1, 3]
    assert all(r["tokens"] > 0 and r["ttft_p95_s"] <= r["latency_p95_s"] for r in result["results"])
