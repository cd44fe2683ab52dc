"""Held-out quality of a story-and-code checkpoint: what `make demo` trains, scored on text it never saw.

Three numbers, each against its target:
  story bpb       bits per byte on held-out TinyStories stories (default: the validation stories shipped in
                  data/assets/tinystories/valid.txt.xz, never trained on): each story after end-of-text, as in
                  training, scored in windows of the model's context (train.evaluate.score_text); target <= 1.20
  story samples   --prompts stories' first sentences (validation stories spread evenly), completed with the story
                  preset (temperature 0.8, top-p 0.95) and 120 new tokens: the share of words in an English
                  dictionary (pyspellchecker's; real validation stories score 99.9%), target >= 0.99, and the share
                  of complete sentences that start with a capital letter (real stories: 99.98%), target >= 0.95
  code            --heads function heads (def line + docstring) of top-level functions of Python code outside the
                  standard library (default: the installed tqdm, omegaconf, hydra and huggingface_hub packages;
                  --code takes folders, .py files or a .jsonl with a "text" field), completed with the code task
                  preset as `python -m sample task=code` runs it: the share whose head + completion parses and has
                  a statement after the docstring; target >= 0.60
With --reference-seconds S, nanoGPT's README CPU recipe (characters, 4 layers, 128 wide, block 64, batch 12, AdamW
lr 1e-3 with cosine decay, fp32) is trained on the same train stories for S seconds in a fresh process and its story
bpb is measured the same way: the baseline of the ratio `story_bpb_ratio_vs_reference`.
    python bench/quality.py --checkpoint runs/demo [--code <folders, .py files or .jsonl of held-out Python>]
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package: make `bench`, `model`, `train` importable

from bench.common import emit_json, in_subprocess, machine_info  # noqa: E402

TARGETS = {"story_bpb": 1.20, "story_dictionary_words": 0.99, "story_capitalised_sentences": 0.95,
           "code_function_rate": 0.60}  # fmt: skip
STORY_NEW_TOKENS = 120  # the story preset (temperature 0.8, top-p 0.95) with a shorter length
CODE_PACKAGES = ("tqdm", "omegaconf", "hydra", "huggingface_hub")  # nanoloom's own dependencies: never trained on
REFERENCE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3, min_lr=1e-4, warmup=100,
                 beta2=0.99, weight_decay=0.1, grad_clip=1.0)  # fmt: skip


@functools.lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The lowercase words of pyspellchecker's English dictionary (inflected forms and common names included)."""
    try:
        from spellchecker import SpellChecker
    except ImportError:
        raise SystemExit("error: the dictionary-word check needs pyspellchecker: pip install -e '.[dev]'") from None
    return frozenset(SpellChecker(language="en").word_frequency.keys())


def default_stories() -> Path:
    from data.corpora import TINYSTORIES_DIR

    return TINYSTORIES_DIR / "valid.txt.xz"


def read_story_file(path: str | Path) -> list[str]:
    from data.corpora import read_stories

    stories = read_stories(Path(path))
    if not stories:
        raise SystemExit(f"error: {path} holds no stories (TinyStories layout: each followed by <|endoftext|>)")
    return stories


def first_sentence(story: str) -> str:
    from sample.quality import sentences

    found = sentences(story)
    return found[0] if found else story.split("\n")[0]


def code_texts(paths: list[str]) -> list[tuple[str, str]]:
    """(name, source) of the held-out Python files: folders (recursive), .py files, or .jsonl with a text field."""
    out = []
    for p in map(Path, paths):
        if p.suffix == ".jsonl":
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
                record = json.loads(line)
                if record.get("split", "src") == "src":  # a split field (tests/src) keeps the library code
                    out.append((f"{p.name}:{record.get('path', i)}", record["text"]))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*.py") if not {"tests", "test"} & set(f.relative_to(p).parts))
            out += [(str(f), f.read_text(encoding="utf-8", errors="replace")) for f in files]
        elif p.is_file():
            out.append((str(p), p.read_text(encoding="utf-8")))
        else:
            raise SystemExit(f"error: --code {p} is not a file or folder")
    return out


def installed_packages(names: tuple[str, ...]) -> list[str]:
    """The source folders of the installed packages among names."""
    found = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found.append(next(iter(spec.submodule_search_locations)))
    return found


def pick_heads(texts: list[tuple[str, str]], n: int, seed: int) -> list[str]:
    from sample.quality import function_heads

    heads = [h for _, text in texts for h in function_heads(text)]
    if len(heads) < n:
        raise SystemExit(f"error: the held-out code has {len(heads)} function heads with a docstring; --heads {n}")
    return random.Random(seed).sample(heads, n)


# ----------------------------------------------------------------------------------------------------------------
# scoring a nanoloom checkpoint


def story_bpb(model: Any, tokenizer: Any, stories: list[str], stride: int | None) -> dict[str, Any]:
    """Bits per byte of the stories, each after end-of-text as in training; the separators count no bytes."""
    import numpy as np

    from train.evaluate import score_text

    ids: list[int] = []
    for i, story in enumerate(stories):
        ids += ([tokenizer.eot_id] if i else []) + tokenizer.encode(story)
    num_bytes = sum(len(s.encode("utf-8")) for s in stories)
    scores = score_text(model, tokenizer, np.array(ids), num_bytes, stride, 8, None)
    return {"bpb": scores["bpb"], "loss": scores["loss"], "tokens": scores["tokens"], "bytes": num_bytes}


def task_preset(name: str, tokenizer: Any, **changes: Any) -> Any:
    """The GenerationConfig of configs/task/<name>.yaml, as `python -m sample task=<name>` composes it."""
    from omegaconf import OmegaConf

    from sample.__main__ import compose_config

    task = OmegaConf.to_object(compose_config(["checkpoint=unused", f"task={name}"]).task)
    return task.generation(tokenizer, **changes)


def story_samples(model: Any, tokenizer: Any, prompts: list[str], seed: int) -> dict[str, Any]:
    from sample.generate import generate
    from sample.quality import dictionary_words, sentences, starts_capitalised

    config = task_preset("story", tokenizer, max_new_tokens=STORY_NEW_TOKENS)
    outs = generate(model, tokenizer, prompts, config, seed=seed)
    texts = [o[0].text for o in outs]
    found, total = dictionary_words(texts, english_words())
    full = [p + t for p, t in zip(prompts, texts)]
    sents = [s for p, f in zip(prompts, full) for s in sentences(f, start=len(p))]
    capital = sum(starts_capitalised(s) for s in sents)
    return {"dictionary_words": found / max(total, 1), "words": total,
            "capitalised_sentences": capital / max(len(sents), 1), "sentences": len(sents), "texts": texts}  # fmt: skip


def code_completions(model: Any, tokenizer: Any, heads: list[str], seed: int) -> dict[str, Any]:
    from sample.generate import generate
    from sample.quality import completes_function

    config = task_preset("code", tokenizer)
    outs = generate(model, tokenizer, heads, config, seed=seed)
    texts = [o[0].text for o in outs]
    ok = [completes_function(h, t) for h, t in zip(heads, texts)]
    return {"function_rate": sum(ok) / len(ok), "heads": len(heads), "ok": ok, "texts": texts,
            "temperature": config.temperature, "repetition_penalty": config.repetition_penalty,
            "max_new_tokens": config.max_new_tokens}  # fmt: skip


def score_checkpoint(checkpoint: str, stories: list[str], heads: list[str], prompts: list[str], seed: int,
                     stride: int | None) -> dict[str, Any]:  # fmt: skip
    import torch

    from model.checkpoint import load_model, read_model_json

    torch.manual_seed(seed)
    model, tokenizer = load_model(checkpoint, device="cpu")
    info = read_model_json(checkpoint)
    t0 = time.perf_counter()
    bpb = story_bpb(model, tokenizer, stories, stride)
    samples = story_samples(model, tokenizer, prompts, seed)
    code = code_completions(model, tokenizer, heads, seed)
    return {"checkpoint": checkpoint, "step": (info.get("meta") or {}).get("step"), "tokenizer": tokenizer.name,
            "params": model.num_params(), "story": bpb, "samples": samples, "code": code,
            "seconds": time.perf_counter() - t0}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# the reference: nanoGPT's README CPU recipe on the same stories


def reference_worker(train_path: str, val_path: str, seconds: float, seed: int) -> dict[str, Any]:
    """nanoGPT's char-level CPU recipe trained on the train stories for `seconds`, scored on the val stories.

    The characters of the train stories are the vocabulary (nanoGPT's prepare.py); a val character outside it maps
    to one extra id the model never saw, which costs that character its full surprise. Stories are joined by a blank
    line. The cosine schedule spans the steps that fit in the time budget, estimated from the first 50 steps.
    """
    import torch

    from model import GPT, GPTConfig
    from train.scoring import bits_per_byte, score_tokens

    c = REFERENCE
    train_text = "\n\n".join(read_story_file(train_path))
    val_stories = read_story_file(val_path)
    chars = sorted(set(train_text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    unknown = len(chars)
    data = torch.tensor([stoi[ch] for ch in train_text])
    torch.manual_seed(1337 + seed)
    model = GPT(GPTConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], block_size=c["block_size"],
                          vocab_size=len(chars) + 1, bias=False, dropout=0.0))  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": c["weight_decay"]},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=c["lr"], betas=(0.9, c["beta2"]),
    )  # fmt: skip
    total_steps = 10**9  # until the first 50 steps are timed

    def get_lr(it: int) -> float:
        if it < c["warmup"]:
            return c["lr"] * (it + 1) / (c["warmup"] + 1)
        ratio = min((it - c["warmup"]) / max(total_steps - c["warmup"], 1), 1.0)
        return c["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c["lr"] - c["min_lr"])

    start, it = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        ix = torch.randint(len(data) - c["block_size"], (c["batch_size"],))
        x = torch.stack([data[i : i + c["block_size"]] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + c["block_size"]] for i in ix])
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        if it == 50:
            total_steps = int(seconds / ((time.perf_counter() - start) / 50))
    val_ids = []
    for story in val_stories:
        val_ids += [stoi.get(ch, unknown) for ch in "\n\n" + story]
    num_bytes = sum(len(s.encode("utf-8")) for s in val_stories)
    scores = score_tokens(model, torch.tensor(val_ids), c["block_size"])
    bpb = bits_per_byte(scores["loss"] * scores["tokens"], num_bytes)
    return {"bpb": bpb, "steps": it, "seconds": time.perf_counter() - start, "params": model.num_params()}


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run or checkpoint directory (e.g. runs/demo)")
    p.add_argument("--stories", default=None, help="held-out stories, TinyStories layout (default: shipped valid)")
    p.add_argument("--train-stories", default=None, help="the reference's train stories (default: shipped train)")
    p.add_argument("--code", nargs="*", default=None, help="held-out Python: folders, .py files or .jsonl")
    p.add_argument("--heads", type=int, default=60)
    p.add_argument("--prompts", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stride", type=int, default=None, help="overlapping scoring windows (default: the context)")
    p.add_argument("--reference-seconds", type=float, default=0.0, help="train nanoGPT's CPU recipe this long")
    p.add_argument("--show", type=int, default=2, help="print this many story and code completions")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from model.checkpoint import resolve_checkpoint

    checkpoint = str(resolve_checkpoint(args.checkpoint))
    stories_path = args.stories or str(default_stories())
    stories = read_story_file(stories_path)
    step = max(len(stories) // args.prompts, 1)
    prompts = [first_sentence(s) for s in stories[::step][: args.prompts]]
    code_paths = args.code if args.code else installed_packages(CODE_PACKAGES)
    heads = pick_heads(code_texts(code_paths), args.heads, args.seed)

    scored = score_checkpoint(checkpoint, stories, heads, prompts, args.seed, args.stride)
    result: dict[str, Any] = {
        "checkpoint": checkpoint, "step": scored["step"], "params": scored["params"],
        "story_bpb": scored["story"]["bpb"], "story_loss": scored["story"]["loss"],
        "story_dictionary_words": scored["samples"]["dictionary_words"],
        "story_capitalised_sentences": scored["samples"]["capitalised_sentences"],
        "code_function_rate": scored["code"]["function_rate"],
        "stories": stories_path, "story_count": len(stories), "story_bytes": scored["story"]["bytes"],
        "prompts": len(prompts), "words": scored["samples"]["words"], "sentences": scored["samples"]["sentences"],
        "code": code_paths, "heads": len(heads), "code_temperature": scored["code"]["temperature"],
        "code_repetition_penalty": scored["code"]["repetition_penalty"],
        "seed": args.seed, "machine": machine_info(),
    }  # fmt: skip
    result["targets"] = TARGETS
    result["met"] = {k: (result[k] <= v if k == "story_bpb" else result[k] >= v) for k, v in TARGETS.items()}
    if args.reference_seconds > 0:
        train_path = args.train_stories or str(default_stories().with_name("train.txt.xz"))
        call = f"reference_worker({train_path!r}, {stories_path!r}, {args.reference_seconds}, {args.seed})"
        ref = in_subprocess("bench.quality", call)
        result["reference"] = ref
        result["story_bpb_ratio_vs_reference"] = result["story_bpb"] / ref["bpb"]

    for i in range(min(args.show, len(prompts))):
        print(f"--- story {i + 1}: {prompts[i]}{scored['samples']['texts'][i]}\n")
    for i in range(min(args.show, len(heads))):
        verdict = "function" if scored["code"]["ok"][i] else "NOT a function"
        print(f"--- code {i + 1} ({verdict}):\n{heads[i]}{scored['code']['texts'][i]}\n")
    print(f"checkpoint {checkpoint} (step {result['step']}, {result['params'] / 1e6:.2f}M params)")
    rows = [
        ("story bits per byte", "story_bpb", f"{len(stories)} stories, {result['story_bytes']:,} bytes"),
        ("story words in dictionary", "story_dictionary_words", f"{result['words']:,} words"),
        ("story sentences capitalised", "story_capitalised_sentences", f"{result['sentences']:,} sentences"),
        ("code heads completed to a function", "code_function_rate", f"{len(heads)} heads"),
    ]
    for label, key, what in rows:
        op = "<=" if key == "story_bpb" else ">="
        met = "met" if result["met"][key] else "MISSED"
        print(f"{label:<36} {result[key]:.4f}  (target {op} {TARGETS[key]}: {met}; {what})")
    if "reference" in result:
        ref = result["reference"]
        print(f"reference (nanoGPT CPU recipe, {ref['steps']} steps in {ref['seconds']:.0f}s): story bpb "
              f"{ref['bpb']:.4f}; ratio {result['story_bpb_ratio_vs_reference']:.3f}")  # fmt: skip
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
