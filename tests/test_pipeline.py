"""Tests of sample/pipeline.py: transformers-shaped outputs, max_length semantics, return_full_text, seeds."""

import pytest
import torch

from data.tokenizer import get_tokenizer
from model import GPT, T5, GPTConfig, T5Config
from model.checkpoint import save_model
from sample import Text2TextGenerationPipeline, TextGenerationPipeline, pipeline

BYTE = get_tokenizer("byte")


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=257)).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_model(tiny_gpt(), tmp_path_factory.mktemp("ckpt") / "model", tokenizer_spec=BYTE.spec())


@pytest.fixture
def ascii_pipeline():
    """A pipeline whose greedy model only ever picks ASCII bytes: one token = one character, and never eot."""
    model = tiny_gpt()
    with torch.no_grad():
        w = model.lm_head.weight  # (padded V, C), tied with wte
        w[128:] = 0.0  # non-ASCII bytes and eot get logit 0 ...
        w[ord("b")] = -w[ord("a")]  # ... and one of "a", "b" always has a logit > 0
    return pipeline("text-generation", model=model, tokenizer=BYTE)


def test_pipeline_from_checkpoint_one_prompt(checkpoint):
    generator = pipeline("text-generation", model=str(checkpoint), device="cpu")
    assert isinstance(generator, TextGenerationPipeline)
    out = generator("Once upon a time,", max_new_tokens=5, seed=0)
    assert isinstance(out, list) and len(out) == 1
    assert list(out[0]) == ["generated_text"] and out[0]["generated_text"].startswith("Once upon a time,")


def test_list_of_prompts_gives_a_list_per_prompt(checkpoint):
    generator = pipeline("text-generation", model=checkpoint)
    out = generator(["Once upon a time,", "def fibonacci(n):"], max_new_tokens=4, num_return_sequences=3, seed=0)
    assert len(out) == 2 and all(len(per_prompt) == 3 for per_prompt in out)
    assert all(d["generated_text"].startswith("def fibonacci(n):") for d in out[1])


def test_max_length_counts_prompt_tokens(ascii_pipeline):
    out = ascii_pipeline("abc", max_length=10, do_sample=False, return_full_text=False)
    assert len(out[0]["generated_text"]) == 10 - 3
    assert len(ascii_pipeline("abc", do_sample=False, return_full_text=False)[0]["generated_text"]) == 256  # default
    out = ascii_pipeline("abc", max_new_tokens=10, do_sample=False, return_full_text=False)
    assert len(out[0]["generated_text"]) == 10
    with pytest.warns(UserWarning, match="max_new_tokens wins"):
        out = ascii_pipeline("abc", max_length=5, max_new_tokens=6, do_sample=False, return_full_text=False)
    assert len(out[0]["generated_text"]) == 6
    with pytest.raises(ValueError, match="max_new_tokens"):
        ascii_pipeline("a prompt longer than max_length", max_length=8)


def test_return_full_text(ascii_pipeline):
    full = ascii_pipeline("abc", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    new = ascii_pipeline("abc", max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert full == "abc" + new and len(new) == 6


def test_seed_reproducibility(checkpoint):
    generator = pipeline("text-generation", model=checkpoint)
    kwargs = dict(max_new_tokens=8, num_return_sequences=4, top_k=None, return_full_text=False)
    a, b = generator("The", seed=1, **kwargs), generator("The", seed=1, **kwargs)
    assert a == b
    assert generator("The", seed=2, **kwargs) != a
    many = generator(["The", "The"], seed=1, **kwargs)
    assert many[0] == a and many[1] != a  # each prompt of a list draws its own stream


def test_greedy_ignores_the_seed(checkpoint):
    generator = pipeline("text-generation", model=checkpoint)
    outs = [generator("The", max_new_tokens=6, do_sample=False, seed=s) for s in (0, 1)]
    assert outs[0] == outs[1]


def test_stop_strings_in_the_pipeline(ascii_pipeline):
    full = ascii_pipeline("abc", max_new_tokens=12, do_sample=False, return_full_text=False)[0]["generated_text"]
    stop = full[4:6]
    cut = ascii_pipeline("abc", max_new_tokens=12, do_sample=False, return_full_text=False, stop_strings=[stop])
    assert cut[0]["generated_text"] == full[: full.index(stop)]


def test_pipeline_errors(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="text-generation"):
        pipeline("summarization", model=checkpoint)
    with pytest.raises(ValueError, match="tokenizer"):
        pipeline("text-generation", model=tiny_gpt())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipeline("text-generation", model=tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="vocabulary|tokens"):
        pipeline("text-generation", model=tiny_gpt(), tokenizer="gpt2")


def test_transformers_habits_are_accepted(tmp_path):
    from model import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=257))
    generator = pipeline("text-generation", model=model, tokenizer="byte", device=-1)  # -1: the CPU
    with pytest.warns(UserWarning, match="ignoring arguments nanoloom does not use: pad_token_id, truncation"):
        out = generator("ab", max_new_tokens=2, pad_token_id=0, truncation=True, seed=0)
    assert out[0]["generated_text"].startswith("ab")
    with pytest.raises(ValueError, match="identical sequences"):
        generator("ab", max_new_tokens=2, do_sample=False, num_return_sequences=2)


def test_text_generation_accepts_num_beams(checkpoint):
    generator = pipeline("text-generation", model=checkpoint)
    out = generator("The", max_new_tokens=5, num_beams=3, num_return_sequences=2)  # do_sample=None: beam search
    assert len(out) == 2 and all(d["generated_text"].startswith("The") for d in out)
    with pytest.raises(ValueError, match="beam sampling"):
        generator("The", max_new_tokens=5, num_beams=3, do_sample=True)
    with pytest.raises(ValueError, match="num_return_sequences=4 > num_beams=3"):
        generator("The", max_new_tokens=5, num_beams=3, num_return_sequences=4)


# ------------------------------------------------------------------------------------------------------------------
# text2text-generation (T5)


def tiny_t5(**overrides) -> T5:
    torch.manual_seed(0)
    config = dict(n_encoder_layer=2, n_decoder_layer=2, n_head=2, n_embd=16, intermediate_size=32, block_size=32,
                  vocab_size=257, dropout=0.0)  # fmt: skip
    return T5(T5Config(**{**config, **overrides})).eval()


@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory):
    return save_model(tiny_t5(), tmp_path_factory.mktemp("t5") / "model", tokenizer_spec=BYTE.spec())


def test_text2text_output_shapes(t5_checkpoint):
    t2t = pipeline("text2text-generation", model=t5_checkpoint, device="cpu")
    assert isinstance(t2t, Text2TextGenerationPipeline) and "Text2TextGenerationPipeline" in repr(t2t)
    out = t2t("summarize: a cat sat", max_new_tokens=5)
    assert isinstance(out, list) and len(out) == 1 and list(out[0]) == ["generated_text"]
    assert not out[0]["generated_text"].startswith("summarize")  # the output alone, never the input
    many = t2t(["one", "two", "three"], max_new_tokens=4, num_beams=3, num_return_sequences=2)
    assert len(many) == 3 and all(len(per_input) == 2 for per_input in many)
    sampled = t2t(["one", "two"], max_new_tokens=4, do_sample=True, num_return_sequences=3, seed=0)
    assert [len(per_input) for per_input in sampled] == [3, 3]
    assert sampled == t2t(["one", "two"], max_new_tokens=4, do_sample=True, num_return_sequences=3, seed=0)


def test_text2text_is_greedy_by_default(t5_checkpoint):
    t2t = pipeline("text2text-generation", model=t5_checkpoint)
    assert t2t("hello", max_new_tokens=6, seed=0) == t2t("hello", max_new_tokens=6, seed=1)
    assert t2t("hello", max_new_tokens=6) == t2t("hello", max_new_tokens=6, num_beams=1, temperature=0.0)


def test_text2text_max_length_counts_the_decoder_start_not_the_input():
    model = tiny_t5(mlp="gated-gelu", tie_embeddings=False)  # an untied head: its rows can be edited alone
    with torch.no_grad():
        w = model.lm_head.weight
        w[128:] = 0.0  # non-ASCII bytes and eot get logit 0 ...
        w[ord("b")] = -w[ord("a")]  # ... and one of "a", "b" always has a logit > 0: one character per token
    t2t = pipeline("text2text-generation", model=model, tokenizer=BYTE)
    long_input = "an input longer than max_length"  # 31 tokens: fits the context of 32
    assert len(t2t(long_input, max_length=10)[0]["generated_text"]) == 10 - 1  # as transformers: start counted
    assert len(t2t(long_input)[0]["generated_text"]) == 20 - 1
    assert len(t2t(long_input, max_new_tokens=6)[0]["generated_text"]) == 6
    beams = t2t(long_input, max_new_tokens=6, num_beams=2, num_return_sequences=2)
    assert [len(b["generated_text"]) for b in beams] == [6, 6]


def test_kind_mismatch_is_a_one_line_error_naming_the_right_task(checkpoint, t5_checkpoint):
    with pytest.raises(ValueError, match=r"text2text-generation needs an encoder-decoder \(t5\) model but got a "
                       r"decoder-only \(gpt\) model; use pipeline\(\"text-generation\", ...\)$"):  # fmt: skip
        pipeline("text2text-generation", model=checkpoint)
    with pytest.raises(ValueError, match=r"text-generation needs a decoder-only \(gpt\).*\"text2text-generation\""):
        pipeline("text-generation", model=t5_checkpoint)
    with pytest.raises(ValueError, match="text2text-generation"):
        pipeline("text-generation", model=tiny_t5(), tokenizer="byte")
    with pytest.raises(ValueError, match="unknown task 'summarization'; nanoloom supports: text-generation, "
                       "text2text-generation"):  # fmt: skip
        pipeline("summarization", model=t5_checkpoint)


def test_text2text_argument_errors(t5_checkpoint):
    t2t = pipeline("text2text-generation", model=t5_checkpoint)
    with pytest.raises(ValueError, match="identical sequences"):
        t2t("hi", max_new_tokens=2, num_return_sequences=2)
    with pytest.raises(ValueError, match="beam sampling"):
        t2t("hi", max_new_tokens=2, num_beams=2, do_sample=True)
    with pytest.warns(UserWarning, match="ignoring arguments nanoloom does not use: truncation"):
        t2t("hi", max_new_tokens=2, truncation=True)


def test_batches_return_full_text_and_token_ids(checkpoint):
    generator = pipeline("text-generation", model=checkpoint)
    prompts = ["Once upon", "a", "The cat sat on the"]
    kwargs = dict(max_new_tokens=6, num_return_sequences=2, seed=3, top_k=20)
    together = generator(prompts, **kwargs)
    assert generator(prompts, batch_size=1, **kwargs) == together  # row j samples with seed + j in any batch
    assert generator(prompts, batch_size=2, **kwargs) == together
    assert [len(outs) for outs in together] == [2, 2, 2]
    assert all(o["generated_text"].startswith(p) for p, outs in zip(prompts, together) for o in outs)
    new_only = generator(prompts, return_full_text=False, **kwargs)
    assert [[p + o["generated_text"] for o in outs] for p, outs in zip(prompts, new_only)] == [
        [o["generated_text"] for o in outs] for outs in together
    ]
    ids = generator(prompts, return_tensors=True, **kwargs)
    assert ids[0][0]["generated_token_ids"][: len("Once upon")] == BYTE.encode("Once upon")
    assert BYTE.decode(ids[1][1]["generated_token_ids"]) == together[1][1]["generated_text"]
    with pytest.raises(ValueError, match="`return_full_text` is mutually exclusive with `return_tensors`"):
        generator(prompts, return_tensors=True, return_full_text=False, **kwargs)  # as transformers refuses it
