"""Training speed: a nanoloom training step against nanoGPT's CPU recipe, same architecture and batch, same run.

For each of gpt-nano, gpt-mini and gpt2 (124M), GPT-2's 50257-token vocabulary, and `demo` (the shape `make demo`
trains: configs/experiment/demo.yaml's 4 x 256 rotary GPT with its 4,096-id BPE), --batch rows of --block tokens:
  nanoloom   train.loop.run with dry_run=true, as `python -m train model=<m> ... dry_run=true` runs it: its
             defaults (dtype=auto, the loss without the full logits, glibc keeping freed memory, all applied by
             nanoloom itself) on shakespeare tokenized with GPT-2's BPE; the dry run times real steps. demo: as
             `python -m train experiment=demo dry_run=true` (its corpus, Muon, no compile) at --batch x --block
  reference  nanoGPT's recipe: fp32 eager, the full (B, T, V) logits and F.cross_entropy, torch.optim.AdamW, in a
             fresh Python process that nanoloom's entry points never touched
Each measurement is its own process: one warm-up step, then the median of 3 steps (forward, backward, optimizer
step); peak RSS is the process's (ru_maxrss). MFU = training FLOPs per token (6N + attention) x tokens/s / the
measured matmul peak of the step's dtype (train.perf.peak_flops). Run from the repo root on an idle machine:
    python bench/train.py [--models gpt-nano gpt-mini gpt2 demo] [--batch 8] [--block 256] [--profile]
                          [--out bench/train.json]
--profile adds where nanoloom's step time goes (train.perf.time_breakdown: matmul, attention, compiled kernels,
optimizer, other; torch.profiler over 3 more steps in another process), printed and as each row's time_shares.
The last stdout line is one JSON object: speedup_vs_reference, mfu and rss_ratio_vs_reference (of gpt-mini, or
the first model), and `results` with every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package: make `bench`, `model`, `train` importable

from bench.common import emit_json, in_subprocess, machine_info  # noqa: E402

STEPS = 3  # timed steps after one warm-up, as the dry run does
DEMO = "demo"  # the shape `make demo` trains (configs/experiment/demo.yaml: 4 x 256, its 4,096-id BPE)


def reference_worker(model_name: str, batch: int, block: int) -> dict[str, Any]:
    """nanoGPT's CPU training step on this model, timed in this (unmodified) process."""
    import torch

    from model import GPT, GPTConfig

    torch.manual_seed(0)
    if model_name == DEMO:
        cfg = composed(["experiment=demo"])
        config = dataclasses.replace(cfg.model, vocab_size=cfg.data.vocab_size, block_size=block)
    else:
        config = GPTConfig.from_name(model_name, vocab_size=50257, block_size=block)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.randint(0, config.vocab_size, (batch, block + 1), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(1 + STEPS):
        t0 = time.perf_counter()
        _, loss = model(data[:, :-1], data[:, 1:])  # the full logits and F.cross_entropy, as nanoGPT
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_seconds": statistics.median(times[1:]), "peak_rss": rss, "dtype": "float32",
            "flops_per_token": model.flops_per_token(block), "params": model.num_params()}  # fmt: skip


def composed(overrides: list[str]) -> Any:
    """The training config `python -m train <overrides>` composes (configs/, typed)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from train.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return OmegaConf.to_object(compose("train", overrides=overrides))


def nanoloom_overrides(model_name: str, batch: int, block: int, cache_dir: str, run_dir: str) -> list[str]:
    """`python -m train`'s overrides for a bench row, dry run."""
    if model_name == DEMO:  # `make demo`'s run as it is: its corpus and BPE, optimizer, dtype and compile setting
        data = ["experiment=demo"]
    else:
        data = [f"model={model_name}", "data=shakespeare", "data.tokenizer=gpt2"]
    return [*data, f"model.block_size={block}", f"trainer.batch_size={batch}", f"paths.cache_dir={cache_dir}",
            f"paths.run_dir={run_dir}", "dry_run=true"]  # fmt: skip


def nanoloom_worker(model_name: str, batch: int, block: int, cache_dir: str, run_dir: str) -> dict[str, Any]:
    """nanoloom's training step through its own entry point (train.loop.run) in dry-run mode."""
    from train.loop import run

    result = run(composed(nanoloom_overrides(model_name, batch, block, cache_dir, run_dir)))
    return {"step_seconds": result["step_seconds"], "peak_rss": result["peak_memory"], "dtype": result["dtype"],
            "flops_per_token": result["flops_per_token"], "params": result["params"]}  # fmt: skip


def profile_worker(model_name: str, batch: int, block: int, cache_dir: str, run_dir: str) -> dict[str, float]:
    """Where nanoloom's step time goes: train.perf.time_breakdown of STEPS steps after a warm-up, the step built as
    the dry run builds it (train.dry_run.training_step, with the allocator setting train.loop.run makes first)."""
    import torch

    from train.dry_run import training_step
    from train.perf import maybe_keep_freed_memory, time_breakdown

    cfg = composed(nanoloom_overrides(model_name, batch, block, cache_dir, run_dir))
    device = torch.device("cpu")
    maybe_keep_freed_memory(cfg.trainer.keep_freed_memory, device)
    _, step, _ = training_step(cfg, device)
    step()  # warm-up: compiles
    return {kind: round(share, 3) for kind, share in time_breakdown(step, STEPS).items()}


def peak(dtype: str) -> float:
    """The measured matmul peak FLOP/s of this CPU in dtype (cached in .cache/nanoloom, as training does)."""
    import torch

    from train.perf import peak_flops

    return peak_flops(torch.device("cpu"), getattr(torch, dtype), ROOT / ".cache" / "nanoloom")


def row(impl: str, model: str, r: dict[str, Any], tokens_per_step: int) -> dict[str, Any]:
    tokens_per_s = tokens_per_step / r["step_seconds"]
    top = peak(r["dtype"])
    mfu = r["flops_per_token"] * tokens_per_s / top
    if mfu > 1.0:  # a cached peak from a busy machine: measure it again (kept when higher, cached when steady)
        import torch

        from train.perf import peak_flops

        top = max(top, peak_flops(torch.device("cpu"), getattr(torch, r["dtype"]), ROOT / ".cache" / "nanoloom", True))
        mfu = r["flops_per_token"] * tokens_per_s / top
    return {"impl": impl, "model": model, "dtype": r["dtype"], "params": r["params"], "ms_per_step":
            round(r["step_seconds"] * 1e3, 1), "tokens_per_s": round(tokens_per_s, 1), "mfu": round(mfu, 4),
            "peak_gflops": round(top / 1e9, 1), "peak_rss_gb": round(r["peak_rss"] / 1e9, 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gpt-nano", "gpt-mini", "gpt2", DEMO])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--profile", action="store_true", help="also where nanoloom's step time goes (torch.profiler)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    start = time.perf_counter()
    tokens_per_step = args.batch * args.block
    results, summary = [], {}
    fmt = "{:<9} {:<10} {:<9} {:>9} {:>10} {:>6} {:>11} {:>8}"
    print(f"batch {args.batch} x {args.block} tokens, GPT-2 vocabulary (demo: its 4,096-id BPE); median of {STEPS} "
          "steps after a warm-up")  # fmt: skip
    print(fmt.format("model", "impl", "dtype", "ms/step", "tokens/s", "MFU", "of GFLOP/s", "RSS GB"))
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(ROOT / ".cache" / "nanoloom")  # the prepared corpus is reused across runs
        for model in args.models:
            worker = f"reference_worker({model!r}, {args.batch}, {args.block})"
            ref = row("reference", model, in_subprocess("bench.train", worker), tokens_per_step)
            where = f"{model!r}, {args.batch}, {args.block}, {cache!r}, {str(Path(tmp) / 'run')!r}"
            ours = row("nanoloom", model, in_subprocess("bench.train", f"nanoloom_worker({where})"), tokens_per_step)
            for r in (ref, ours):
                print(fmt.format(model, r["impl"], r["dtype"], r["ms_per_step"], r["tokens_per_s"],
                                 f"{r['mfu']:.0%}", r["peak_gflops"], r["peak_rss_gb"]), flush=True)  # fmt: skip
            if args.profile:
                ours["time_shares"] = in_subprocess("bench.train", f"profile_worker({where})")
                print("  nanoloom's step: " + ", ".join(f"{k} {v:.0%}" for k, v in ours["time_shares"].items()))
            speedup = round(ours["tokens_per_s"] / ref["tokens_per_s"], 3)
            ratio = round(ours["peak_rss_gb"] / ref["peak_rss_gb"], 3)
            results += [ref, {**ours, "speedup_vs_reference": speedup, "rss_ratio_vs_reference": ratio}]
            summary.setdefault(model, (speedup, ours["mfu"], ratio))
    headline = summary.get("gpt-mini") or next(iter(summary.values()))
    result = {
        "benchmark": "train",
        "speedup_vs_reference": headline[0],
        "mfu": headline[1],
        "rss_ratio_vs_reference": headline[2],
        "headline_model": "gpt-mini" if "gpt-mini" in summary else args.models[0],
        "settings": {"batch": args.batch, "block": args.block, "steps": STEPS, "vocab_size": 50257},
        "machine": machine_info(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "results": results,
    }
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
