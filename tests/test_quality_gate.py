"""The quality gate: the CPU demo config trains on its real corpus for a fixed number of steps, must reach a
documented val loss, and then must write English.

Unit tests check pieces against each other; this one checks the result. A silent regression in the model (a
wrong mask, init or norm), the optimizer (a schedule, weight decay or clipping bug) or the data code (shuffled
targets, a bad split, a broken tokenizer) moves the val loss out of the band below, or makes the samples noise.

The corpus is the demo's: the TinyStories subset shipped with nanoloom and the functions of Python's standard library,
with the demo's 4,096-id BPE trained on them at preparation, so the test needs no network and no files of its own.
"""

from __future__ import annotations

import pytest
from train_helpers import compose_train

from bench.quality import english_words
from model.registry import build_model
from sample import pipeline
from sample.quality import dictionary_words
from train.loop import run

STEPS = 100
SEED = 1337  # the default trainer.seed
# Where the band comes from: `python -m train experiment=demo trainer.max_steps=100 trainer.max_time=null
# trainer.eval_interval=0 trainer.save_interval=0 trainer.seed=<s>` on 2 AMD Zen 4 cores with torch 2.13 (CPU,
# bf16 autocast, the demo's default dtype here), 2026-12-05, with the demo's corpora of that day (stories x2,
# module-level functions x2, methods x1). Val loss (nats/token, the demo's 20 fixed val batches of stories and
# functions) at step 100:
#   seed 1337: 4.669 | seeds 0-3: 4.745, 4.740, 4.731, 4.685 (mean of the five 4.714, sd 0.035)
# Dictionary words (bench/quality.py's dictionary) in 4 story samples: 0.964 to 0.988 trained, 0.46 to 0.51 for the
# same model untrained (random tokens of an English BPE spell many short words).
# The untrained model scores about ln(4096) = 8.3; the full 700-step demo reaches about 3.2.
# CEILING is the worst seed plus 0.26: room for another CPU's rounding (fp32 where bf16 is slow) and thread count,
# not for a regression. FLOOR is well under what 100 steps of this recipe can reach: a loss below it means the model
# sees the tokens it predicts (a broken causal mask or shifted targets). A change that really improves the demo
# recipe moves both: measure again and update the numbers here. Checked when the band was set: at a tenth of the
# learning rate the run ends at 6.651 (over CEILING).
CEILING = 5.0
FLOOR = 3.0
WORDS = 0.9  # the share of dictionary words in the trained model's story samples must exceed this ...
NOISE_WORDS = 0.75  # ... and the untrained model's stays under this one


def completions(generator, prompt: str, n: int = 3, tokens: int = 100, seed: int = 0) -> list[str]:
    """n sampled continuations (temperature 0.8, top-p 0.95: the story preset) of prompt, the prompt left out.

    Every control is pinned, so the band does not move with the checkpoint's recorded preset.
    """
    outputs = generator(prompt, max_new_tokens=tokens, num_return_sequences=n, do_sample=True, temperature=0.8,
                        top_k=0, top_p=0.95, seed=seed, return_full_text=False)  # fmt: skip
    return [o["generated_text"] for o in outputs]


def word_share(texts: list[str]) -> float:
    found, total = dictionary_words(texts, english_words())
    return found / max(total, 1)


@pytest.mark.slow
def test_demo_config_reaches_its_val_loss_then_writes_text(tmp_path):
    overrides = [
        "experiment=demo",
        f"trainer.max_steps={STEPS}",
        "trainer.max_time=null",  # the fixed step count decides, not the machine's speed
        "trainer.eval_interval=0",  # one evaluation, at the end
        "trainer.save_interval=0",
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
    stories = completions(generator, "Once upon a time,", n=4)
    assert len(set(stories)) == 4 and all(t.strip() for t in stories), stories
    assert word_share(stories) > WORDS, stories  # English words, not subword soup
    code = completions(generator, "def fibonacci(n):\n", n=2)
    assert all("\n" in t for t in code), code  # it writes lines of code, not one run-on line

    # the word check fails for the same model untrained: it tells a model that learned from one that did not
    model = build_model(generator.model.config)
    noise = pipeline("text-generation", model=model, tokenizer=generator.tokenizer, device="cpu")
    assert word_share(completions(noise, "Once upon a time,", n=4)) < NOISE_WORDS
