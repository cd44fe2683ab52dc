"""Wrong inputs to sample.pipeline: each is a TypeError or ValueError naming the argument, what was passed and what
it takes, raised before anything is generated; the command line's rules (seeds, None as "not given") hold here too."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from sample import pipeline
from sample.sampling import GenerationConfig

STRINGS = "a string or a non-empty list of strings"


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=257)).eval()
    return pipeline("text-generation", model=model, tokenizer="byte")


@pytest.mark.parametrize(
    "text_inputs, error, message",
    [
        (123, TypeError, f"text_inputs must be {STRINGS}, got int 123"),
        (None, TypeError, f"text_inputs must be {STRINGS}, got NoneType None"),
        (12.5, TypeError, "got float 12.5"),
        ({"text": "Once"}, TypeError, "got dict {'text': 'Once'}"),  # not its keys as prompts
        (b"Once", TypeError, "text_inputs is bytes b'Once'; decode it to a str"),
        ([], ValueError, f"text_inputs is an empty list; pass {STRINGS}"),
        (["Once", 7], TypeError, f"text_inputs[1] is int 7; text_inputs must be {STRINGS}"),
        ([["Once"]], TypeError, "text_inputs[0] is list ['Once']"),
        # a chat needs a model tuned for chat: this one's tokenizer has no chat ids
        ([{"role": "user", "content": "hi"}], ValueError, "the byte tokenizer has no chat ids"),
        ({"role": "user", "content": "hi"}, ValueError, "fine-tune it with task=instruct"),
        ([[{"role": "user", "content": "hi"}]], ValueError, "has no chat ids"),
    ],
    ids=["int", "none", "float", "dict", "bytes", "empty", "int-in-list", "nested-list", "chat", "message", "chats"],
)
def test_wrong_text_inputs_name_what_was_passed(generator, text_inputs, error, message):
    with pytest.raises(error) as raised:
        generator(text_inputs, max_new_tokens=1)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(max_new_tokens="10"), TypeError, "max_new_tokens takes a whole number, got str '10'"),
        (dict(max_new_tokens=2.0), TypeError, "max_new_tokens takes a whole number, got float 2.0"),
        (dict(temperature="0.7"), TypeError, "temperature takes a number, got str '0.7'"),
        (dict(temperature=True), TypeError, "temperature takes a number, got bool True"),
        (dict(temperature=float("nan")), ValueError, "temperature=nan must be a finite number"),
        (dict(top_p=float("inf")), ValueError, "top_p=inf must be a finite number"),
        (dict(top_k="5"), TypeError, "top_k takes a whole number, got str '5'"),
        (dict(num_beams="abc"), TypeError, "num_beams takes a whole number, got str 'abc'"),
        (dict(early_stopping=1), TypeError, "early_stopping takes True or False, got int 1"),
        (dict(stop_strings=[1]), TypeError, "stop_strings takes a string or a list of strings, got list [1]"),
        (dict(suppress_tokens=5), TypeError, "suppress_tokens takes a list of token ids, got int 5"),
        (dict(bad_words_ids=5), TypeError, "bad_words_ids takes a list of lists of token ids, got int 5"),
        (dict(do_sample="no"), TypeError, "do_sample must be True, False or None, got str 'no'"),
        (dict(return_full_text="no"), TypeError, "return_full_text must be True, False or None, got str 'no'"),
        (dict(return_text="yes"), TypeError, "return_text must be True, False or None, got str 'yes'"),
        (dict(batch_size="2"), TypeError, "batch_size must be a whole number >= 1"),
        (dict(batch_size=0), ValueError, "batch_size=0 must be >= 1"),
        (dict(seed="1"), TypeError, "seed must be a whole number between 0 and 2**63 - 1 (or None: drawn), got str"),
        (dict(seed=-1), ValueError, "seed=-1 is out of range; a seed must be between 0 and 2**63 - 1"),
        (dict(seed=99999999999999999999), ValueError, "seed=99999999999999999999 is out of range"),
        (dict(seed=2**63), ValueError, f"seed={2**63} is out of range"),
    ],
    ids=lambda v: "-".join(f"{k}={v[k]!r}" for k in v) if isinstance(v, dict) else "",
)
def test_wrong_arguments_name_the_argument(generator, kwargs, error, message):
    with pytest.raises(error) as raised:
        generator("Once", **{"max_new_tokens": 1, **kwargs})
    assert message in str(raised.value)


def test_none_means_not_given_and_numpy_numbers_are_numbers(generator):
    """temperature=None, top_p=None ...: the default, as null on the command line; a string stop_strings is one stop
    string (transformers); numpy scalars work as the Python numbers they hold."""
    plain = generator("Once", max_new_tokens=3, seed=5)
    nones = generator(
        "Once", max_new_tokens=3, seed=5, temperature=None, top_p=None, num_beams=None, min_new_tokens=None
    )
    assert nones == plain
    numpy = generator("Once", max_new_tokens=np.int64(3), seed=np.int64(5), temperature=np.float32(1.0))
    assert numpy == plain
    assert generator("Once", max_new_tokens=3, seed=2**63 - 1)[0]["generated_text"].startswith("Once")
    text = generator("abc", max_new_tokens=8, do_sample=False, return_full_text=False)[0]["generated_text"]
    stop = text[2:4]
    cut = generator("abc", max_new_tokens=8, do_sample=False, return_full_text=False, stop_strings=stop)
    assert cut[0]["generated_text"] == text[: text.index(stop)]


def test_iterables_of_strings_are_prompts(generator):
    listed = generator(["Once", "Then"], max_new_tokens=2, seed=0)
    assert generator(("Once", "Then"), max_new_tokens=2, seed=0) == listed
    assert generator(iter(["Once", "Then"]), max_new_tokens=2, seed=0) == listed


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(tokenizer=123), TypeError, "tokenizer must be a nanoloom Tokenizer or a tokenizer name"),
        (dict(device=True), TypeError, "device must be a name ('cpu', 'cuda:0', 'auto'), an int or a torch.device"),
        (dict(device=1.5), TypeError, "got float 1.5"),
        (dict(generation_config=5), TypeError, "generation_config must be a GenerationConfig, a dict or None, got int"),
        (dict(generation_config={"temperature": "hot"}), TypeError,
         "generation_config: temperature takes a number, got str 'hot'"),
        (dict(generation_config={"top_p": float("nan")}), ValueError, "generation_config: top_p=nan must be a finite"),
        (dict(generation_config={"num_beams": 4, "do_sample": True}), ValueError,
         "generation_config: do_sample=true with num_beams=4 asks for beam sampling"),
        (dict(generation_config={"do_sample": "yes"}), TypeError, "generation_config: do_sample must be True or False"),
        (dict(generation_config={"bad_words": "word"}), TypeError,
         "generation_config['bad_words'] takes a list of strings, got str 'word'"),
    ],
    ids=["tokenizer", "device-bool", "device-float", "config-int", "config-type", "config-nan", "config-beams",
         "config-do-sample", "config-bad-words"],
)  # fmt: skip
def test_wrong_pipeline_arguments_are_refused_when_building_it(kwargs, error, message):
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=257))
    with pytest.raises(error) as raised:
        pipeline("text-generation", model=model, **{"tokenizer": "byte", **kwargs})
    assert message in str(raised.value)


def test_generation_config_keys_nanoloom_does_not_use_are_named_once():
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=257))
    with pytest.warns(UserWarning, match="generation_config: ignoring keys nanoloom does not use: pad_token_id, temp"):
        generator = pipeline("text-generation", model=model, tokenizer="byte",
                             generation_config={"temp": 0.5, "pad_token_id": 0, "max_new_tokens": 2})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = generator("ab", seed=0, return_tensors=True)
    assert 1 <= len(out[0]["generated_token_ids"]) - 2 <= 2  # the prompt's 2 ids, then the config's max_new_tokens
    assert pipeline("text-generation", model=model, tokenizer="byte", generation_config=GenerationConfig())
