"""Host memory of saving and resuming a sharded (FSDP) run: peak RSS per rank, against one process doing the same.

A large model's training state (fp32 weights and AdamW's two moments: 12 bytes per parameter) must never be held
whole by every rank of a node at once. This benchmark trains --model for one step with `trainer.parallel=fsdp` on
--ranks CPU processes (gloo), saving at the end, then resumes that checkpoint for one more step and saves again;
each phase runs in fresh processes, and each rank reports its peak resident memory (ru_maxrss). The baseline is one
process running the same two phases, measured in the same run: it holds the whole state by definition.
    python bench/resume_memory.py [--model gpt2-medium] [--ranks 2] [--block 64] [--out bench/resume_memory.json]
The last stdout line is one JSON object: per phase, each rank's peak RSS, the single process's, their ratios, and the
full state's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package: make `bench`, `model`, `train` importable

from bench.common import emit_json, machine_info  # noqa: E402

# run as a training process (under torchrun or alone): `python -m train` with the given overrides, then one JSON
# line with this process's rank and peak RSS
WORKER = """
import atexit, json, os, resource, runpy, sys
def report():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RSS " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "peak_rss": rss}), flush=True)
atexit.register(report)
sys.argv = ["train", *sys.argv[1:]]
runpy.run_module("train", run_name="__main__", alter_sys=True)
"""


def phase(overrides: list[str], ranks: int, port: int, workdir: Path) -> list[int]:
    """Run `python -m train overrides` on `ranks` processes (1: no torchrun); peak RSS of each rank, by rank."""
    script = workdir / "worker.py"
    script.write_text(WORKER)
    if ranks == 1:
        cmd = [sys.executable, str(script), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", f"--master_port={port}",
               str(script), *overrides, "trainer.parallel=fsdp"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks))}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"error: the training run failed:\n{proc.stderr[-3000:]}")
    reports = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("RSS ")]
    return [r["peak_rss"] for r in sorted(reports, key=lambda r: r["rank"])]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2-medium")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nanoloom-resume-memory-") as tmp:
        workdir = Path(tmp)
        corpus = workdir / "corpus.txt"
        corpus.write_text((ROOT / "README.md").read_text() * 4)
        results: dict[str, dict[str, list[int]]] = {}
        for ranks, port in ((1, 0), (args.ranks, 29561)):
            name = "single" if ranks == 1 else "fsdp"
            common = [
                f"model={args.model}", "data=text", f"data.paths=[{corpus}]", "data.tokenizer=gpt2",
                f"model.block_size={args.block}", f"trainer.batch_size={args.ranks}", "trainer.dtype=float32",
                "trainer.compile=false", "trainer.eval_interval=0", "trainer.eval_batches=1", "samples.prompts=[]",
                "trainer.log_interval=1", f"paths.cache_dir={workdir / 'cache'}", f"run_name={name}",
                "trainer.keep_freed_memory=false",  # glibc would keep every freed buffer in the RSS measured
                f"paths.runs_dir={workdir / 'runs'}", f"hydra.run.dir={workdir / 'hydra' / name}",
            ]  # fmt: skip
            first = phase([*common, "trainer.max_steps=1"], ranks, port, workdir)
            resumed = phase([*common, "trainer.max_steps=2", "resume=auto"], ranks, port + 1, workdir)
            results[name] = {"train_and_save": first, "resume_and_save": resumed}
            gib = lambda values: [round(b / 2**30, 2) for b in values]  # noqa: E731
            print(f"{name:>6} ({ranks} process{'es' if ranks > 1 else ''}): peak RSS per rank, train+save "
                  f"{gib(first)} GiB, resume+save {gib(resumed)} GiB")  # fmt: skip
        params = _params(args.model, args.block)

    state_bytes = params * 12  # fp32 weights + AdamW's exp_avg and exp_avg_sq
    ratios = {
        ph: [round(b / results["single"][ph][0], 3) for b in results["fsdp"][ph]]
        for ph in ("train_and_save", "resume_and_save")
    }
    print(f"full training state {state_bytes / 2**30:.2f} GiB ({params / 1e6:.0f}M params); "
          f"per-rank peak / one process's: {ratios}")  # fmt: skip
    result = {"model": args.model, "ranks": args.ranks, "params": params, "state_bytes": state_bytes,
              "peak_rss": results, "rank_over_single": ratios, "machine": machine_info()}  # fmt: skip
    emit_json(result, args.out)
    return result


def _params(model_name: str, block: int) -> int:
    import torch

    from model import GPT, GPTConfig

    with torch.device("meta"):
        return sum(p.numel() for p in GPT(GPTConfig.from_name(model_name, block_size=block)).parameters())


if __name__ == "__main__":
    main()
