"""Generation speed: tokens/s of nanoloom's cached sampler vs transformers' GPT-2 and a no-cache loop, same weights.

One GPT (gpt-mini by default: 6 layers, 6 heads, 384 wide, 256 context, GPT-2's 50257-token vocabulary; random
weights from --seed, or --checkpoint) generates --new-tokens (200) tokens after a random --prompt-tokens (56) prompt,
so the last token sees the full 256-token context, at every --batch-sizes (1 and 8), greedy and top-k (k=50,
temperature 1). Rows:
  nanoloom           sample.generate.generate_tokens: KV cache, prefill then one token per step (float32, and a
                     bfloat16 copy of the weights)
  nanoloom-compiled  the same with compile=True: the one-token step under torch.compile (compiled in the warm-up)
  transformers       GPT2LMHeadModel.generate, our weights converted by model/export.py (checked: same logits);
                     LlamaForCausalLM for a rotary checkpoint
  no-cache           nanoGPT's generate loop: the whole (cropped) sequence through the blocks every step and the head
                     on the last position only, as nanoGPT's inference forward; timed once, without a warm-up
Each other row is one warm-up generation, then the median of --repeats timed ones (time.perf_counter, inference
mode; the rows of one batch size and mode take turns, so other work on the machine slows them alike);
tokens/s = batch * new_tokens / seconds. Run from the repo root, on CPU, on an otherwise idle machine (a few minutes):
    python bench/generate.py [--batch-sizes 1 8] [--repeats 3] [--checkpoint runs/demo] [--out bench/generate.json]
The last stdout line is one JSON object: speedup_vs_transformers and speedup_vs_no_cache (nanoloom float32 tokens/s
over the other's, batch 1, greedy; > 1 means nanoloom is faster), speedup_vs_transformers_batch8, and `results`
with every row (impl, dtype, batch, mode, tokens_per_s, seconds = median, seconds_all). Skipped rows give null.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

# bench/ is not an installed package: make `bench`, `model` and `sample` importable from a plain checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from bench.common import emit_json, machine_info, median, time_interleaved  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from model.config import GPT_PRESETS  # noqa: E402
from sample.generate import generate_tokens  # noqa: E402


@dataclass(frozen=True)
class Mode:
    name: str
    temperature: float  # 0 = greedy argmax
    top_k: int | None


MODES = (Mode("greedy", 0.0, None), Mode("top-k", 1.0, 50))


@dataclass(frozen=True)
class Impl:
    """A named way to generate: generate(idx (B, T), new_tokens, mode) -> (B, new_tokens) token ids."""

    name: str
    dtype: str
    generate: Callable[[torch.Tensor, int, Mode], torch.Tensor]
    slow: bool = False  # timed once without a warm-up: one run is long enough to be its own warm-up


# ----------------------------------------------------------------------------------------------------------------
# the three implementations


def nanoloom_generate(
    model: nn.Module, idx: torch.Tensor, new_tokens: int, mode: Mode, seed: int, **options: Any
) -> torch.Tensor:
    """nanoloom's sampler: the iterator consumed to the end, no eos, so exactly new_tokens steps.

    options go to generate_tokens as they are, so a variant (say compile=True) is one more Impl line.
    """
    generator = torch.Generator(idx.device).manual_seed(seed)
    sampling = dict(do_sample=mode.temperature > 0, temperature=mode.temperature, top_k=mode.top_k)
    steps = generate_tokens(model, idx, new_tokens, generator=generator, **sampling, **options)  # (B,) per step
    return torch.stack(list(steps), dim=1)  # (B, new_tokens)


def transformers_generate(
    hf_model: nn.Module, pad_id: int, idx: torch.Tensor, new_tokens: int, mode: Mode, seed: int
) -> torch.Tensor:
    """transformers' generate with its own KV cache; min_new_tokens keeps eos from ending a row early."""
    torch.manual_seed(seed)  # transformers samples from torch's global RNG
    if mode.temperature > 0:
        sampling = dict(do_sample=True, temperature=mode.temperature, top_k=mode.top_k, top_p=1.0)
    else:
        sampling = dict(do_sample=False)
    out = hf_model.generate(
        idx,
        attention_mask=torch.ones_like(idx),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad_id,
        **sampling,
    )  # (B, T + new_tokens)
    return out[:, idx.size(1) :]


def last_position_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """nanoGPT's inference forward: every position through the blocks, the head on the last one only. (B, V)"""
    T = idx.size(1)
    pos = torch.arange(T, device=idx.device)
    x = model.transformer.wte(idx)  # (B, T, C)
    if model.transformer.wpe is not None:
        x = x + model.transformer.wpe(pos)
    rope = model.rope.index_select(0, pos) if model.rope is not None else None
    for block in model.transformer.h:
        x = block(x, rope, None, None)  # causal attention over the whole sequence, no cache
    x = model.transformer.ln_f(x[:, [-1], :])  # (B, 1, C)
    return model.lm_head(x)[:, -1, : model.config.vocab_size]  # (B, V)


def no_cache_generate(model: GPT, idx: torch.Tensor, new_tokens: int, mode: Mode, seed: int) -> torch.Tensor:
    """nanoGPT's GPT.generate: re-run the whole (cropped) sequence each step, sample from the last logits."""
    generator = torch.Generator(idx.device).manual_seed(seed)
    block_size = model.config.block_size
    for _ in range(new_tokens):
        idx_cond = idx[:, -block_size:]  # (B, <= block_size)
        logits = last_position_logits(model, idx_cond)  # (B, V)
        if mode.temperature == 0:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
        else:
            logits = logits / mode.temperature
            if mode.top_k is not None:
                v, _ = torch.topk(logits, min(mode.top_k, logits.size(-1)))  # (B, k)
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = torch.softmax(logits, dim=-1)  # (B, V)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
        idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
    return idx[:, -new_tokens:]


# ----------------------------------------------------------------------------------------------------------------
# models


def load_gpt(args: argparse.Namespace) -> tuple[GPT, int, str]:
    """(fp32 GPT in eval mode, end-of-text id, description): a checkpoint, or a preset with random weights."""
    if args.checkpoint is not None:
        from model.checkpoint import load_model

        model, tokenizer = load_model(args.checkpoint)
        if not isinstance(model, GPT):
            raise SystemExit(f"error: {args.checkpoint} holds a {type(model).__name__}; this benchmark runs GPTs")
        eot_id = getattr(tokenizer, "eot_id", None)
        return model.float().eval(), eot_id if eot_id is not None else 0, str(args.checkpoint)
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig.from_name(args.model, vocab_size=50257, block_size=256))
    return model.eval(), 50256, f"{args.model} (random init, seed {args.seed})"  # 50256: GPT-2's <|endoftext|>


def to_transformers(model: GPT, eot_id: int, prompt: torch.Tensor) -> nn.Module:
    """The same weights in transformers' GPT-2 (or Llama), converted by model/export.py; asserts equal logits."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    from model.export import gpt2_config, gpt2_state_dict, hf_architecture, llama_config, llama_state_dict

    logging.set_verbosity_error()  # no generation-config chatter between the table lines
    arch = hf_architecture(model.config)  # ValueError for options transformers has no equivalent of
    to_config, to_state = {"gpt2": (gpt2_config, gpt2_state_dict), "llama": (llama_config, llama_state_dict)}[arch]
    hf_dict = to_config(model.config, eot_id, torch.float32)
    hf_model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_dict)).eval()
    state = to_state(model.state_dict(), model.config)
    if model.config.tie_embeddings:  # export leaves the tied head out; a strict load wants it under its own name
        state["lm_head.weight"] = model.lm_head.weight[: model.config.vocab_size]
    hf_model.load_state_dict(state, strict=True)
    with torch.inference_mode():
        ours, _ = model(prompt)  # (B, T, V)
        theirs = hf_model(prompt, attention_mask=torch.ones_like(prompt)).logits  # (B, T, V)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4, msg="transformers and nanoloom logits differ")
    return hf_model


def build_impls(args: argparse.Namespace, model: GPT, eot_id: int, check_prompt: torch.Tensor) -> list[Impl]:
    """Every row family, nanoloom float32 first (the ratio column divides by it). Add a variant with one line."""
    seed = args.seed
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    impls = [
        Impl("nanoloom", "float32", partial(nanoloom_generate, model, seed=seed)),
        Impl("nanoloom", "bfloat16", partial(nanoloom_generate, bf16, seed=seed)),
    ]
    if not args.skip_compile:
        impls.append(Impl("nanoloom-compiled", "float32", partial(nanoloom_generate, model, seed=seed, compile=True)))
    if args.skip_transformers:
        print("note: --skip-transformers: no transformers rows")
    else:
        try:
            hf_model = to_transformers(model, eot_id, check_prompt)
        except ImportError as e:
            print(f"note: transformers is not importable ({e}; pip install transformers): skipping its rows")
        except ValueError as e:  # a GPT option transformers has no equivalent of
            print(f"note: skipping the transformers rows: {e}")
        else:
            impls.append(Impl("transformers", "float32", partial(transformers_generate, hf_model, eot_id, seed=seed)))
    if args.skip_no_cache:
        print("note: --skip-no-cache: no no-cache rows")
    else:
        impls.append(Impl("no-cache", "float32", partial(no_cache_generate, model, seed=seed), slow=True))
    return impls


# ----------------------------------------------------------------------------------------------------------------
# the benchmark


def measure(impls: list[Impl], idx: torch.Tensor, new_tokens: int, mode: Mode, repeats: int) -> list[dict[str, Any]]:
    """One row per impl: a warm-up each, then the median of `repeats` full generations, the impls taking turns."""

    def run(impl: Impl) -> None:
        out = impl.generate(idx, new_tokens, mode)
        assert out.shape == (idx.size(0), new_tokens), f"{impl.name} made {tuple(out.shape)} tokens"

    rows = []
    fast = [impl for impl in impls if not impl.slow]
    timings = dict(zip(fast, time_interleaved([partial(run, impl) for impl in fast], repeats)))
    for impl in impls:
        if impl.slow:
            timings[impl] = time_interleaved([partial(run, impl)], 1, warmup=False)[0]
    for impl, seconds in ((impl, timings[impl]) for impl in impls):
        t = median(seconds)
        row = {"impl": impl.name, "dtype": impl.dtype, "batch": idx.size(0), "mode": mode.name}
        row |= {"tokens_per_s": round(idx.size(0) * new_tokens / t, 2), "seconds": round(t, 4)}
        rows.append(row | {"seconds_all": [round(s, 4) for s in seconds]})
    return rows


def find(results: list[dict], impl: str, batch: int, mode: str = "greedy", dtype: str = "float32") -> float | None:
    """tokens/s of one row, or None when it was not measured."""
    for r in results:
        if (r["impl"], r["dtype"], r["batch"], r["mode"]) == (impl, dtype, batch, mode):
            return r["tokens_per_s"]
    return None


def speedup(results: list[dict], other: str, batch: int) -> float | None:
    """nanoloom float32 tokens/s over `other`'s, greedy, at one batch size (None if either is missing)."""
    ours, theirs = find(results, "nanoloom", batch), find(results, other, batch)
    return round(ours / theirs, 3) if ours is not None and theirs is not None else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--prompt-tokens", type=int, default=56, help="prompt + new tokens must fit the model's context")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row, after one warm-up run")
    p.add_argument("--model", default="gpt-mini", choices=sorted(GPT_PRESETS), help="preset for random weights")
    p.add_argument("--checkpoint", default=None, help="a nanoloom checkpoint or run directory instead of --model")
    p.add_argument("--seed", type=int, default=1337, help="weights, prompt and sampling")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--skip-compile", action="store_true", help="no torch.compile row (~20 s per batch)")
    p.add_argument("--skip-no-cache", action="store_true", help="no nanoGPT-style rows (the slowest)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    for name in ("new_tokens", "prompt_tokens", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.batch_sizes) < 1:
        p.error("--batch-sizes must be >= 1")
    return args


ROW = "{:<17} {:<9} {:>5}  {:<7} {:>10}  {:>6}"


def run_rows(impls: list[Impl], prompts: dict[int, torch.Tensor], new_tokens: int, repeats: int) -> list[dict]:
    """Measure every (batch, mode, impl) row, printing the table lines of a (batch, mode) as soon as it is done."""
    print("ratio = nanoloom float32 tokens/s / this row's, same batch and mode (> 1: nanoloom float32 is faster)")
    print(ROW.format("impl", "dtype", "batch", "mode", "tokens/s", "ratio"))
    results = []
    with torch.inference_mode():
        for batch, idx in prompts.items():
            for mode in MODES:
                rows = measure(impls, idx, new_tokens, mode, repeats)
                results += rows
                base = find(results, "nanoloom", batch, mode.name)
                for row in rows:
                    ratio = f"{base / row['tokens_per_s']:.2f}" if base is not None else "-"
                    print(ROW.format(row["impl"], row["dtype"], batch, mode.name, f"{row['tokens_per_s']:.1f}", ratio))
                sys.stdout.flush()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and the JSON line; return the JSON object."""
    args = parse_args(argv)
    start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, eot_id, source = load_gpt(args)
    if args.prompt_tokens + args.new_tokens > model.config.block_size:
        raise SystemExit(
            f"error: --prompt-tokens {args.prompt_tokens} + --new-tokens {args.new_tokens} exceeds the model's "
            f"context of {model.config.block_size} tokens; lower one of them"
        )
    vocab_size, gen = model.config.vocab_size, torch.Generator().manual_seed(args.seed)
    prompts = {b: torch.randint(0, vocab_size, (b, args.prompt_tokens), generator=gen) for b in args.batch_sizes}
    impls = build_impls(
        args, model, eot_id, check_prompt=torch.randint(0, vocab_size, (2, args.prompt_tokens), generator=gen)
    )
    # transformers is imported only when its rows run
    machine = {**machine_info(), "transformers": getattr(sys.modules.get("transformers"), "__version__", None)}
    print(
        f"{source}: {model.num_params() / 1e6:.1f}M params; {args.prompt_tokens} prompt + {args.new_tokens} new "
        f"tokens; {machine['cpu']}, torch threads={machine['torch_threads']}; torch {machine['torch']}, "
        f"transformers {machine['transformers']}"
    )
    results = run_rows(impls, prompts, args.new_tokens, args.repeats)
    result = {
        "benchmark": "generate",
        "speedup_vs_transformers": speedup(results, "transformers", 1),
        "speedup_vs_no_cache": speedup(results, "no-cache", 1),
        "speedup_vs_transformers_batch8": speedup(results, "transformers", 8),
        "model": {"source": source, "params": model.num_params(), "config": model.config.to_dict()},
        "settings": {
            "batch_sizes": args.batch_sizes,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "warmup_runs": 1,
            "repeats": args.repeats,
            "modes": [asdict(m) for m in MODES],
            "seed": args.seed,
            "dtype": "float32",  # of the headline rows; the bfloat16 row is a cast copy of the same weights
        },
        "machine": machine,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "results": results,
    }
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
