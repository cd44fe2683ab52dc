"""Generation speed: tokens/s of nanoloom's cached sampler vs transformers' GPT-2 and a no-cache loop, same weights.

One GPT (gpt-mini by default: 6 layers, 6 heads, 384 wide, 256 context, GPT-2's 50257-token vocabulary; random
weights from --seed, or --checkpoint) generates --new-tokens (200) tokens after each prompt, at every --batch-sizes
(1 and 8), greedy and top-k (k=50, temperature 1). Prompts: random --prompt-tokens (56) ids, so the last token sees
the full 256-token context; with --checkpoint the batch-1 rows complete --num-prompts (4) held-out texts instead
(--prompts code: function heads of installed packages' code, as bench/quality.py picks them; stories: openings of
the validation stories), one after another. Rows:
  nanoloom                sample.generate.generate_tokens: KV cache, prefill then one token per step (float32, a
                          bfloat16 copy of the weights, and weight-only int8: model.quant)
  nanoloom-prompt-lookup  assisted decoding with --prompt-lookup (10) tokens drafted from the context (batch 1)
  nanoloom-assisted       assisted decoding with the --draft checkpoint drafting (batch 1)
  nanoloom-compiled       compile=True: the one-token step under torch.compile (compiled in the warm-up; a copy of
                          the model, its weights laid out for it); and nanoloom-prompt-lookup-compiled, prompt
                          lookup whose rounds without a draft take it
  transformers            GPT2LMHeadModel.generate, our weights converted by model/export.py (checked: same logits);
                          LlamaForCausalLM for a rotary checkpoint
  no-cache                nanoGPT's generate loop: the whole (cropped) sequence through the blocks every step and the
                          head on the last position only, as nanoGPT's inference forward; timed once, no warm-up
Each other row is one warm-up run, then the median of --repeats timed ones (time.perf_counter, inference mode; the
rows of one batch size and mode take turns, so other work on the machine slows them alike); tokens/s = new tokens
over seconds. A greedy row is `exact` when its tokens equal nanoloom float32's. The machine's memory bandwidth is
measured in the same run (bench.common.memory_bandwidth: a 512 MB read); a batch-1 row that reads all its weights
once per token gets weight bytes/s and their share of that bandwidth (the roofline of batch-1 decoding). With
--checkpoint, the int8 model's held-out bits per byte (--quality-stories validation stories) is set beside float32's.
Run from the repo root, on CPU, on an otherwise idle machine (a few minutes):
    python bench/generate.py [--batch-sizes 1 8] [--checkpoint runs/demo [--draft runs/demo_draft]] [--out f.json]
The last stdout line is one JSON object: speedup_vs_transformers and speedup_vs_no_cache (nanoloom float32 tokens/s
over the other's, batch 1, greedy; > 1 means nanoloom is faster), speedup_vs_transformers_batch8; roofline_share
(the batch-1 float32 greedy row nearest the roofline, named by roofline_method; roofline_share_eager: the plain
eager row's) and bandwidth_gb_per_s; speedup_vs_transformers_best_exact with best_exact_method (the
fastest batch-1 greedy float32 row whose tokens equal plain greedy's) and speedup_vs_no_cache_best_exact;
int8_speedup_vs_float32 and int8_quality; `results` with every row (impl, dtype, batch, mode, tokens_per_s, seconds
= median, seconds_all, identical_to_greedy, weight_gb_per_s, roofline_share). Skipped rows give null.
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

from bench.common import emit_json, machine_info, median, memory_bandwidth, time_interleaved  # noqa: E402
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
    weight_bytes: int | None = None  # bytes of weights one forward reads (None: not one forward per token)
    batch1: bool = False  # assisted decoding: batch-1 rows only


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


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights one decoding step reads: every parameter and buffer but the embedding tables (a lookup
    reads one row per token), the output head counted once when it is tied to the token embedding."""
    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


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


def load_gpt(args: argparse.Namespace) -> tuple[GPT, Any, int, str]:
    """(fp32 GPT in eval mode, its tokenizer or None, end-of-text id, description): a checkpoint, or a preset with
    random weights."""
    if args.checkpoint is not None:
        from model.checkpoint import load_model

        model, tokenizer = load_model(args.checkpoint)
        if not isinstance(model, GPT):
            raise SystemExit(f"error: {args.checkpoint} holds a {type(model).__name__}; this benchmark runs GPTs")
        eot_id = getattr(tokenizer, "eot_id", None)
        return model.float().eval(), tokenizer, eot_id if eot_id is not None else 0, str(args.checkpoint)
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig.from_name(args.model, vocab_size=50257, block_size=256))
    return model.eval(), None, 50256, f"{args.model} (random init, seed {args.seed})"  # 50256: GPT-2's eot


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
    from model.quant import quantize_int8
    from sample.generate import decoding_layout

    seed = args.seed
    decoding_layout(model)  # as generation does for an eval-mode model: counted before the first timed run
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    size = weight_bytes(model)
    impls = [
        Impl("nanoloom", "float32", partial(nanoloom_generate, model, seed=seed), weight_bytes=size),
        Impl("nanoloom", "bfloat16", partial(nanoloom_generate, bf16, seed=seed), weight_bytes=weight_bytes(bf16)),
    ]
    if not args.skip_int8:
        int8 = quantize_int8(copy.deepcopy(model))
        quantized = partial(nanoloom_generate, int8, seed=seed)
        impls.append(Impl("nanoloom", "int8", quantized, weight_bytes=weight_bytes(int8)))
    if args.prompt_lookup:
        lookup = partial(nanoloom_generate, model, seed=seed, prompt_lookup_num_tokens=args.prompt_lookup)
        impls.append(Impl("nanoloom-prompt-lookup", "float32", lookup, batch1=True))
    if args.draft is not None:
        from model.checkpoint import load_model

        draft, _ = load_model(args.draft)
        draft = draft.float().eval()
        if draft.config.vocab_size != model.config.vocab_size:
            raise SystemExit(f"error: --draft {args.draft} has another vocabulary than the model; use its tokenizer")
        assisted = partial(nanoloom_generate, model, seed=seed, assistant_model=draft)
        impls.append(Impl("nanoloom-assisted", "float32", assisted, batch1=True))
    if not args.skip_compile:
        # its own copy: compiled batch-1 decoding lays the weights out row-major (sample.generate.decoding_layout),
        # the other rows column-major; one model shared by them would be relaid between rows
        fast = copy.deepcopy(model)
        decoding_layout(fast, compiled=True)
        compiled = partial(nanoloom_generate, fast, seed=seed, compile=True)
        impls.append(Impl("nanoloom-compiled", "float32", compiled, weight_bytes=size))
        if args.prompt_lookup:  # several rows per verification: the eager layout (model's)
            lookup = partial(
                nanoloom_generate, model, seed=seed, compile=True, prompt_lookup_num_tokens=args.prompt_lookup
            )
            impls.append(Impl("nanoloom-prompt-lookup-compiled", "float32", lookup, batch1=True))
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
            hf = partial(transformers_generate, hf_model, eot_id, seed=seed)
            impls.append(Impl("transformers", "float32", hf, weight_bytes=weight_bytes(hf_model)))
    if args.skip_no_cache:
        print("note: --skip-no-cache: no no-cache rows")
    else:
        impls.append(Impl("no-cache", "float32", partial(no_cache_generate, model, seed=seed), slow=True))
    return impls


# ----------------------------------------------------------------------------------------------------------------
# the benchmark


def measure(
    impls: list[Impl], prompts: list[torch.Tensor], new_tokens: int, mode: Mode, repeats: int, bandwidth: float
) -> list[dict[str, Any]]:
    """One row per impl: a warm-up each, then the median of `repeats` runs (each generating after every prompt of
    `prompts`, (B, T) each), the impls taking turns. A greedy row whose outputs equal the first row's (nanoloom
    float32) is marked exact; a row with a weight size gets its weight bytes/s and their share of the bandwidth."""
    outputs: dict[Impl, list[torch.Tensor]] = {}

    def run(impl: Impl) -> None:
        outs = [impl.generate(idx, new_tokens, mode) for idx in prompts]
        for idx, out in zip(prompts, outs):
            assert out.shape == (idx.size(0), new_tokens), f"{impl.name} made {tuple(out.shape)} tokens"
        outputs[impl] = outs

    rows = []
    fast = [impl for impl in impls if not impl.slow]
    timings = dict(zip(fast, time_interleaved([partial(run, impl) for impl in fast], repeats)))
    for impl in impls:
        if impl.slow:
            timings[impl] = time_interleaved([partial(run, impl)], 1, warmup=False)[0]
    batch, tokens = prompts[0].size(0), sum(idx.size(0) for idx in prompts) * new_tokens
    for impl, seconds in ((impl, timings[impl]) for impl in impls):
        t = median(seconds)
        row = {"impl": impl.name, "dtype": impl.dtype, "batch": batch, "mode": mode.name}
        row |= {"tokens_per_s": round(tokens / t, 2), "seconds": round(t, 4)}
        if mode.temperature == 0:
            same = all(torch.equal(a, b) for a, b in zip(outputs[impl], outputs[impls[0]]))
            row["identical_to_greedy"] = same
        if impl.weight_bytes is not None and batch == 1:
            achieved = impl.weight_bytes * tokens / t
            row |= {"weight_gb_per_s": round(achieved / 1e9, 2), "roofline_share": round(achieved / bandwidth, 3)}
        rows.append(row | {"seconds_all": [round(s, 4) for s in seconds]})
    return rows


def find(results: list[dict], impl: str, batch: int, mode: str = "greedy", dtype: str = "float32") -> float | None:
    """tokens/s of one row, or None when it was not measured."""
    for r in results:
        if (r["impl"], r["dtype"], r["batch"], r["mode"]) == (impl, dtype, batch, mode):
            return r["tokens_per_s"]
    return None


def best_roofline(results: list[dict]) -> dict[str, Any]:
    """The batch-1 greedy float32 nanoloom row nearest the memory roofline (highest roofline_share), or {}."""
    rows = [r for r in results if r["batch"] == 1 and r["mode"] == "greedy" and "roofline_share" in r
            and r["impl"].startswith("nanoloom") and r["dtype"] == "float32"]  # fmt: skip
    return max(rows, key=lambda r: r["roofline_share"], default={})


def best_exact(results: list[dict]) -> tuple[str | None, float | None]:
    """The fastest batch-1 greedy nanoloom row whose outputs equal plain greedy's: (impl, tokens/s)."""
    exact = [r for r in results if r["batch"] == 1 and r["mode"] == "greedy" and r.get("identical_to_greedy")
             and r["impl"].startswith("nanoloom") and r["dtype"] == "float32"]  # fmt: skip
    best = max(exact, key=lambda r: r["tokens_per_s"], default=None)
    return (best["impl"], best["tokens_per_s"]) if best is not None else (None, None)


def text_prompts(kind: str, tokenizer: Any, n: int, seed: int, room: int) -> list[torch.Tensor]:
    """n prompts (1, T) the model never trained on, each leaving `room` tokens of the context: held-out function
    heads (def line + docstring) of installed packages' code, or held-out stories' first sentences (bench/quality.py
    picks them the same way)."""
    from bench.quality import (
        CODE_PACKAGES,
        code_texts,
        default_stories,
        first_sentence,
        installed_packages,
        pick_heads,
        read_story_file,
    )
    from sample.generate import prompt_ids

    if kind == "code":
        texts = pick_heads(code_texts(installed_packages(CODE_PACKAGES)), 10 * n, seed)
    else:
        texts = [first_sentence(s) for s in read_story_file(default_stories())[: 10 * n]]
    ids = [i for i in (prompt_ids(tokenizer, t, "gpt") for t in texts) if 0 < len(i) <= room][:n]
    if len(ids) < n:
        raise SystemExit(f"error: only {len(ids)} {kind} prompts fit the context; lower --new-tokens or --num-prompts")
    return [torch.tensor([i]) for i in ids]


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
    p.add_argument("--skip-int8", action="store_true", help="no weight-only int8 rows")
    p.add_argument("--prompts", choices=("random", "code", "stories"), default=None,
                   help="batch-1 prompts: random ids (default without --checkpoint), held-out function heads (default "
                   "with one) or story openings; larger batches take random ids")  # fmt: skip
    p.add_argument("--num-prompts", type=int, default=4, help="text prompts per batch-1 run")
    p.add_argument("--prompt-lookup", type=int, default=10, help="prompt_lookup_num_tokens of its row (0: no row)")
    p.add_argument("--draft", default=None, help="a smaller checkpoint with the model's tokenizer: assisted decoding")
    p.add_argument("--quality-stories", type=int, default=200,
                   help="held-out stories the int8 bits-per-byte change is scored on (with --checkpoint)")  # fmt: skip
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    for name in ("new_tokens", "prompt_tokens", "repeats", "threads", "num_prompts"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.batch_sizes) < 1:
        p.error("--batch-sizes must be >= 1")
    return args


ROW = "{:<31} {:<9} {:>5}  {:<7} {:>10}  {:>6}"


def run_rows(
    impls: list[Impl], prompts: dict[int, list[torch.Tensor]], new_tokens: int, repeats: int, bandwidth: float
) -> list[dict]:
    """Measure every (batch, mode, impl) row, printing the table lines of a (batch, mode) as soon as it is done."""
    print("ratio = nanoloom float32 tokens/s / this row's, same batch and mode (> 1: nanoloom float32 is faster);")
    print(f"roofline = the row's weight bytes/s over the memory bandwidth ({bandwidth / 1e9:.1f} GB/s, batch 1)")
    print(ROW.format("impl", "dtype", "batch", "mode", "tokens/s", "ratio") + "  roofline  exact")
    results = []
    with torch.inference_mode():
        for batch, idx in prompts.items():
            for mode in MODES:
                rows = measure([i for i in impls if batch == 1 or not i.batch1], idx, new_tokens, mode, repeats,
                               bandwidth)  # fmt: skip
                results += rows
                base = find(results, "nanoloom", batch, mode.name)
                for row in rows:
                    ratio = f"{base / row['tokens_per_s']:.2f}" if base is not None else "-"
                    line = ROW.format(row["impl"], row["dtype"], batch, mode.name, f"{row['tokens_per_s']:.1f}", ratio)
                    share = f"{row['roofline_share']:.0%}" if "roofline_share" in row else "-"
                    print(f"{line}  {share:>8}  {row.get('identical_to_greedy', '-')!s:>5}")
                sys.stdout.flush()
    return results


def int8_quality(model: GPT, tokenizer: Any, n_stories: int) -> dict[str, Any]:
    """Held-out bits per byte of the float32 model and of its int8 copy (the first n validation stories)."""
    from bench.quality import default_stories, read_story_file, story_bpb
    from model.quant import quantize_int8

    stories = read_story_file(default_stories())[:n_stories]
    fp32 = story_bpb(model, tokenizer, stories, None)["bpb"]
    int8 = story_bpb(quantize_int8(copy.deepcopy(model)), tokenizer, stories, None)["bpb"]
    return {"stories": len(stories), "bpb_float32": round(fp32, 4), "bpb_int8": round(int8, 4),
            "bpb_relative_change": round(int8 / fp32 - 1, 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and the JSON line; return the JSON object."""
    args = parse_args(argv)
    start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tokenizer, eot_id, source = load_gpt(args)
    kind = args.prompts or ("code" if tokenizer is not None else "random")
    if kind != "random" and tokenizer is None:
        raise SystemExit(f"error: --prompts {kind} needs a --checkpoint (its tokenizer encodes them)")
    if args.prompt_tokens + args.new_tokens > model.config.block_size:
        raise SystemExit(
            f"error: --prompt-tokens {args.prompt_tokens} + --new-tokens {args.new_tokens} exceeds the model's "
            f"context of {model.config.block_size} tokens; lower one of them"
        )
    vocab_size, gen = model.config.vocab_size, torch.Generator().manual_seed(args.seed)
    prompts = {b: [torch.randint(0, vocab_size, (b, args.prompt_tokens), generator=gen)] for b in args.batch_sizes}
    if kind != "random" and 1 in prompts:
        room = model.config.block_size - args.new_tokens
        prompts[1] = text_prompts(kind, tokenizer, args.num_prompts, args.seed, room)
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
    bandwidth = memory_bandwidth()
    results = run_rows(impls, prompts, args.new_tokens, args.repeats, bandwidth)
    method, fastest = best_exact(results)
    nearest = best_roofline(results)
    hf = find(results, "transformers", 1)
    plain = next((r for r in results if (r["impl"], r["dtype"], r["batch"], r["mode"]) ==
                  ("nanoloom", "float32", 1, "greedy")), {})  # fmt: skip
    int8 = find(results, "nanoloom", 1, dtype="int8")
    scored = tokenizer is not None and not args.skip_int8  # held-out text needs the checkpoint's tokenizer
    quality = int8_quality(model, tokenizer, args.quality_stories) if scored else None
    result = {
        "benchmark": "generate",
        "speedup_vs_transformers": speedup(results, "transformers", 1),
        "speedup_vs_no_cache": speedup(results, "no-cache", 1),
        "speedup_vs_transformers_batch8": speedup(results, "transformers", 8),
        "roofline_share": nearest.get("roofline_share"),
        "roofline_method": nearest.get("impl"),
        "roofline_share_eager": plain.get("roofline_share"),
        "bandwidth_gb_per_s": round(bandwidth / 1e9, 2),
        "speedup_vs_transformers_best_exact": round(fastest / hf, 3) if fastest and hf else None,
        "best_exact_method": method,
        "speedup_vs_no_cache_best_exact": (
            round(fastest / find(results, "no-cache", 1), 3) if fastest and find(results, "no-cache", 1) else None
        ),
        "int8_speedup_vs_float32": round(int8 / plain["tokens_per_s"], 3) if int8 and plain else None,
        "int8_quality": quality,
        "model": {"source": source, "params": model.num_params(), "config": model.config.to_dict()},
        "settings": {
            "batch_sizes": args.batch_sizes,
            "prompts": kind,
            "num_prompts": len(prompts.get(1, [])),
            "prompt_lookup_num_tokens": args.prompt_lookup,
            "draft": args.draft,
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
