"""The CPU speedrun: wall time to val loss <= 1.886 on a character-level text, nanoGPT's recipe against nanoloom's.

On --text (tiny Shakespeare: the 1,115,394-character input.txt of nanoGPT's shakespeare_char), one token per
character, the first 90% for training and the last 10% for validation, as nanoGPT's prepare.py splits it:
  reference  nanoGPT's README CPU command for train_shakespeare_char (4 layers, 4 heads, 128 wide, block 64, batch
             12, no dropout, no biases, AdamW lr 1e-3 with betas (0.9, 0.99), weight decay 0.1 on matrices, 100
             warmup steps, cosine to 1e-4 at step 2000, clipping at 1.0; fp32 eager), reproduced step for step in a
             fresh Python process that nanoloom's entry points never touched
  nanoloom   `python -m train experiment=shakespeare_char_speedrun`, nanoloom's best CPU recipe, as a user runs it
Both are scored by the same function (train.scoring.score_tokens) on the whole val split, every character once,
in windows of the model's block size; the clock counts training steps only (the evaluations are paused out), so
how often each run evaluates does not change its time. A run's time to the target is that of its first evaluation
at or below it; a run that never gets there counts its whole training time (a lower bound: if the reference
stops short of the target, the ratio is an upper bound, in the reference's favour). Each recipe runs --repeats
times (different seeds); the medians are reported.
    python bench/speedrun.py --text ../shared/data/tiny_shakespeare/input.txt [--repeats 3] [--plot speedrun.png]
The last stdout line is one JSON object; `time_ratio_vs_reference` = nanoloom's median time to the target / the
reference's (target <= 0.25), and each recipe's best val loss within the reference's median time to the target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package: make `bench`, `model`, `train` importable

from bench.common import emit_json, in_subprocess, machine_info  # noqa: E402

TARGET = 1.886  # nanoGPT's README command ends at val 1.8857 (its 20-batch estimate) at step 2000
REFERENCE = dict(
    n_layer=4,
    n_head=4,
    n_embd=128,
    block_size=64,
    batch_size=12,
    max_iters=2000,
    lr=1e-3,
    min_lr=1e-4,
    warmup_iters=100,
    lr_decay_iters=2000,
    beta2=0.99,
    weight_decay=0.1,
    grad_clip=1.0,
)
RECIPE = "shakespeare_char_speedrun"  # configs/experiment/<RECIPE>.yaml


def char_split(text_path: str) -> tuple[list[int], list[int], int]:
    """nanoGPT's shakespeare_char/prepare.py: vocabulary = the sorted characters; train = first 90%, val = rest."""
    text = Path(text_path).read_text(encoding="utf-8")
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    ids = [stoi[ch] for ch in text]
    n = int(len(ids) * 0.9)
    return ids[:n], ids[n:], len(stoi)


def reference_worker(text_path: str, seed: int, eval_every: int, max_iters: int = 2000) -> dict[str, Any]:
    """nanoGPT's train.py with the README's CPU arguments, in this (unmodified) process; whole-split val curve.

    max_iters < 2000 stops the same run early (smoke tests); the schedule still decays towards step 2000.
    """
    import torch

    from model import GPT, GPTConfig
    from train.scoring import score_tokens

    c = REFERENCE
    train, val, vocab = char_split(text_path)
    train_data, val_data = torch.tensor(train), torch.tensor(val)
    torch.manual_seed(1337 + seed)
    model = GPT(
        GPTConfig(
            n_layer=c["n_layer"],
            n_head=c["n_head"],
            n_embd=c["n_embd"],
            block_size=c["block_size"],
            vocab_size=vocab,
            bias=False,
            dropout=0.0,
        )
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": c["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=c["lr"],
        betas=(0.9, c["beta2"]),
    )

    def get_lr(it: int) -> float:  # nanoGPT's: linear warmup, then cosine down to min_lr at lr_decay_iters
        if it < c["warmup_iters"]:
            return c["lr"] * (it + 1) / (c["warmup_iters"] + 1)
        ratio = (it - c["warmup_iters"]) / (c["lr_decay_iters"] - c["warmup_iters"])
        return c["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (c["lr"] - c["min_lr"])

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(train_data) - c["block_size"], (c["batch_size"],))
        x = torch.stack([train_data[i : i + c["block_size"]] for i in ix])
        y = torch.stack([train_data[i + 1 : i + 1 + c["block_size"]] for i in ix])
        return x, y

    curve, clock = [], 0.0
    x, y = get_batch()
    for it in range(max_iters + 1):
        if it % eval_every == 0 or it == max_iters:
            val_loss = score_tokens(model, val_data, c["block_size"])["loss"]
            curve.append({"step": it, "time": clock, "val_loss": val_loss})
        if it == max_iters:
            break
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        _, loss = model(x, y)  # the full logits and F.cross_entropy, as nanoGPT
        x, y = get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT logs every step with --log_interval=1
        clock += time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"curve": curve, "peak_rss": rss, "params": model.num_params(), "tokens_per_step": 12 * 64}


def nanoloom_run(text_path: str, seed: int, cache_dir: str, run_dir: str, extra: list[str]) -> dict[str, Any]:
    """`python -m train experiment=<RECIPE>` on the text, in its own process; its val curve from metrics.jsonl."""
    cmd = [
        sys.executable,
        "-m",
        "train",
        f"experiment={RECIPE}",
        f"data.paths=[{text_path}]",
        f"paths.cache_dir={cache_dir}",
        f"paths.run_dir={run_dir}",
        f"trainer.seed={1337 + seed}",
        *extra,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"})
    if out.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    curve = [
        {"step": r["step"], "time": r.get("train/time", 0.0), "val_loss": r["val/loss"]}
        for r in records
        if "val/loss" in r
    ]
    config = (Path(run_dir) / "config.yaml").read_text()
    return {"curve": curve, "config": config}


def time_to(curve: list[dict[str, float]], target: float) -> float | None:
    """Training seconds at the first evaluation at or below target; None if the run never got there."""
    return next((p["time"] for p in curve if p["val_loss"] <= target), None)


def best_within(curve: list[dict[str, float]], seconds: float) -> float:
    """The lowest val loss among the evaluations made within `seconds` of training."""
    return min(p["val_loss"] for p in curve if p["time"] <= seconds + 1e-9)


def plot(runs: dict[str, list[list[dict[str, float]]]], target: float, path: str) -> None:
    """Val loss against training seconds, every run of both recipes, the target as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (name, curves), color in zip(runs.items(), ("tab:gray", "tab:blue")):
        for i, curve in enumerate(curves):
            ax.plot(
                [p["time"] for p in curve],
                [p["val_loss"] for p in curve],
                color=color,
                alpha=0.8,
                lw=1.2,
                label=name if i == 0 else None,
            )
    ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target}")
    ax.set(
        xlabel="training seconds (evaluation excluded)",
        ylabel="val loss (whole split, nats/char)",
        ylim=(1.4, 3.0),
        title="CPU speedrun: tiny Shakespeare, char level",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True, help="a UTF-8 text file (tiny Shakespeare's input.txt)")
    p.add_argument("--repeats", type=int, default=3, help="runs per recipe, seeds 0..repeats-1; medians reported")
    p.add_argument("--target", type=float, default=TARGET)
    p.add_argument("--eval-every", type=int, default=50, help="reference steps between its val evaluations")
    p.add_argument("--reference-iters", type=int, default=REFERENCE["max_iters"], help="stop the reference early")
    p.add_argument("--only", choices=["reference", "nanoloom"], help="run one recipe (its ratio is then not given)")
    p.add_argument("--plot", default=None, help="write the loss-vs-time plot here (PNG)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for nanoloom's run (recipe search)")
    args = p.parse_args(argv)
    if not Path(args.text).is_file():
        raise SystemExit(f"error: --text {args.text}: no such file; give a UTF-8 text file")
    start = time.perf_counter()
    text = str(Path(args.text).resolve())
    runs: dict[str, list[list[dict[str, float]]]] = {"reference": [], "nanoloom": []}
    config = None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):  # interleaved: a burst of other work slows both recipes alike
            if args.only != "nanoloom":
                ref = in_subprocess(
                    "bench.speedrun", f"reference_worker({text!r}, {seed}, {args.eval_every}, {args.reference_iters})"
                )
                runs["reference"].append(ref["curve"])
                print(
                    f"reference seed {seed}: time to {args.target}: {time_to(ref['curve'], args.target)} s, "
                    f"final val {ref['curve'][-1]['val_loss']:.4f} at {ref['curve'][-1]['time']:.1f} s",
                    flush=True,
                )
            if args.only != "reference":
                ours = nanoloom_run(text, seed, str(Path(tmp) / "cache"), str(Path(tmp) / f"run{seed}"), args.overrides)
                runs["nanoloom"].append(ours["curve"])
                config = ours["config"]
                print(
                    f"nanoloom seed {seed}: time to {args.target}: {time_to(ours['curve'], args.target)} s, "
                    f"final val {ours['curve'][-1]['val_loss']:.4f} at {ours['curve'][-1]['time']:.1f} s",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    for name, curves in runs.items():
        if not curves:
            continue
        # A run that never reached the target needed more than its whole training time: that time is a lower bound
        # of its time to the target (for the reference, it makes the ratio an upper bound: in the reference's favour).
        times = [time_to(c, args.target) for c in curves]
        bounds = [t if t is not None else c[-1]["time"] for t, c in zip(times, curves)]
        summary[name] = {
            "seconds_to_target": [round(t, 2) for t in bounds],
            "reached_target": [t is not None for t in times],
            "median_seconds_to_target": round(statistics.median(bounds), 2),
            "final_val_loss": [round(c[-1]["val_loss"], 4) for c in curves],
            "train_seconds": [round(c[-1]["time"], 2) for c in curves],
        }
    ratio = None
    if "reference" in summary and "nanoloom" in summary:
        ref_t = summary["reference"]["median_seconds_to_target"]
        ours_t = summary["nanoloom"]["median_seconds_to_target"]
        ratio = round(ours_t / ref_t, 3) if all(summary["nanoloom"]["reached_target"]) and ref_t > 0 else None
        for name, curves in runs.items():  # the loss each reaches in the time the reference needs
            summary[name]["best_val_loss_within_reference_time"] = [round(best_within(c, ref_t), 4) for c in curves]
    if args.plot:
        plot({k: v for k, v in runs.items() if v}, args.target, args.plot)
    result = {
        "benchmark": "speedrun",
        "time_ratio_vs_reference": ratio,
        "target_val_loss": args.target,
        "text": Path(args.text).name,
        "repeats": args.repeats,
        "recipes": summary,
        "nanoloom_config": config,
        "machine": machine_info(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "curves": runs,
    }
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
