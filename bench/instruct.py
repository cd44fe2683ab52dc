"""Does a model follow instructions it never saw? Exact-match accuracy on the held-out instruction set.

The set is data/instructions.py's val split (600 items: six families, half asked with a phrasing training uses, half
with a phrasing it never does; no held-out item occurs in training). Each --checkpoint is asked every item greedily:
  - a GPT tuned for chat (task=instruct) through pipeline("text-generation") with the item as the user's message;
  - a GPT without the chat ids (a base model) through the same pipeline with the item and a newline as a plain
    prompt, its answer the first line of the completion (so it is scored on what it would say, not on a format it
    was never taught);
  - a T5 through pipeline("text2text-generation").
An answer counts when it equals the reference after stripping whitespace (train.scoring.exact_match). The first
checkpoint is the baseline; every other gets its gain in points over it.
    python bench/instruct.py --checkpoint runs/demo --checkpoint runs/demo_instruct [--checkpoint runs/t5-...]
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package: make `bench`, `model`, `train` importable

from bench.common import emit_json, machine_info  # noqa: E402

MAX_NEW_TOKENS = 24  # the longest answer (five words repeated or reversed) is well under this


def answers(checkpoint: str, instructions: list[str], batch_size: int) -> tuple[str, list[str]]:
    """(how the checkpoint was asked, its greedy answer to each instruction)."""
    from model.checkpoint import load_model
    from sample.pipeline import pipeline

    model, tokenizer = load_model(checkpoint)
    kind = model.config.kind
    controls = {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS, "batch_size": batch_size}
    if kind == "t5":
        pipe = pipeline("text2text-generation", model=checkpoint)
        return "text2text", [out[0]["generated_text"] for out in pipe(instructions, **controls)]
    pipe = pipeline("text-generation", model=checkpoint)
    if tokenizer.chat_ids is not None:
        chats = [[{"role": "user", "content": text}] for text in instructions]
        outputs = pipe(chats, return_full_text=False, **controls)
        return "chat", [out[0]["generated_text"] for out in outputs]
    outputs = pipe([text + "\n" for text in instructions], return_full_text=False, **controls)
    return "completion", [(out[0]["generated_text"].strip().splitlines() or [""])[0] for out in outputs]


def score(items: list[Any], predictions: list[str]) -> dict[str, Any]:
    """Accuracy overall, on seen and unseen phrasings, and per family."""
    from train.scoring import exact_match

    hits: dict[str, list[float]] = defaultdict(list)
    for item, prediction in zip(items, predictions):
        right = exact_match(prediction, item.answer)
        for key in ("all", item.phrasing, item.family):
            hits[key].append(right)
    return {key: round(sum(v) / len(v), 4) for key, v in hits.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="run or checkpoint dir (repeat)")
    parser.add_argument("--limit", type=int, default=None, help="score the first N held-out items only")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--show", type=int, default=3, help="print this many answers per checkpoint")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)

    from data.instructions import held_out

    items = held_out()[: args.limit]
    results = {}
    for checkpoint in args.checkpoint:
        start = time.perf_counter()
        asked, predictions = answers(checkpoint, [it.instruction for it in items], args.batch_size)
        scores = score(items, predictions)
        seconds = time.perf_counter() - start
        results[checkpoint] = {"asked_as": asked, "accuracy": scores, "seconds": round(seconds, 1)}
        print(f"{checkpoint} ({asked}, {seconds:.0f}s): exact match {scores['all']:.3f} "
              f"(seen phrasings {scores['seen']:.3f}, unseen {scores['unseen']:.3f})")  # fmt: skip
        families = "  ".join(f"{f} {scores[f]:.2f}" for f in dict.fromkeys(it.family for it in items))
        print(f"  {families}")
        for it, prediction in list(zip(items, predictions))[: args.show]:
            print(f"  {it.instruction!r} -> {prediction!r} (expected {it.answer!r})")
    baseline = args.checkpoint[0]
    base = results[baseline]["accuracy"]["all"]
    result = {
        "bench": "instruct",
        "items": len(items),
        "baseline": baseline,
        "results": results,
        "gain_vs_baseline_points": {c: round(100 * (r["accuracy"]["all"] - base), 1) for c, r in results.items()},
        "machine": machine_info(),
    }
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
