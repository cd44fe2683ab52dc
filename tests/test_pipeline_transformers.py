"""The text-generation pipeline's transformers arguments, checked against transformers' own pipeline on the same
weights (a random GPT-2 folder with a word-level tokenizer.json, as tests/test_hf_import.py builds them): prefix,
return_tensors, handle_long_generation, streamer, generation_config, clean_up_tokenization_spaces; and the ones
transformers lacks or handles differently (stop_sequence, logprobs, dtype, model_kwargs, the default task)."""

from __future__ import annotations

import pytest
import torch
import transformers
from test_hf_import import gpt2_folder, wordlevel_json

from sample.pipeline import Text2TextGenerationPipeline, TextGenerationPipeline, clean_up_tokenization, pipeline

V = 40
EOT = V - 1
GREEDY = dict(do_sample=False, suppress_tokens=[EOT])  # no end-of-text: both run to the length asked
PROMPT = "w1 w2 w3"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(ours, transformers') text-generation pipelines on one random GPT-2 folder (context 32)."""
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    gpt2_folder(folder, "safetensors", n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=V)
    (folder / "tokenizer.json").write_text(wordlevel_json(V))
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), model_max_length=32)
    theirs = transformers.pipeline("text-generation", model=str(folder), tokenizer=hf_tok, device="cpu")
    return pipeline("text-generation", model=f"hf:{folder}", device="cpu"), theirs, folder


def test_return_tensors_is_the_whole_sequence_and_prefix_conditions_without_showing(pair):
    ours, theirs, _ = pair
    for kwargs in ({}, {"prefix": "w9 w8 w7 "}):
        mine = ours(PROMPT, max_new_tokens=6, return_tensors=True, **GREEDY, **kwargs)
        hf = theirs(PROMPT, max_new_tokens=6, return_tensors=True, **GREEDY, **kwargs)
        assert mine[0]["generated_token_ids"] == list(hf[0]["generated_token_ids"])
        text = ours(PROMPT, max_new_tokens=6, **GREEDY, **kwargs)[0]["generated_text"]
        # the same words; a word-level vocabulary has no spaces of its own: transformers decodes the new ids alone
        # ("w3w4"), nanoloom in the context of the prompt ("w3 w4")
        assert (
            text.split()
            == theirs(PROMPT, max_new_tokens=6, **GREEDY, **kwargs)[0]["generated_text"].replace("w3w", "w3 w").split()
        )
        assert text.startswith(PROMPT) and "w9" not in text[: len(PROMPT)]  # the prefix is the model's alone
    prefixed = ours(PROMPT, max_new_tokens=6, prefix="w9 w8 w7 ", return_tensors=True, **GREEDY)
    plain = ours(PROMPT, max_new_tokens=6, return_tensors=True, **GREEDY)
    assert prefixed[0]["generated_token_ids"][:3] == [9, 8, 7] != plain[0]["generated_token_ids"][:3]


def test_hole_keeps_the_end_of_a_prompt_too_long_for_the_new_tokens(pair):
    ours, theirs, _ = pair
    long_prompt = " ".join(f"w{i % 30}" for i in range(30))  # 30 tokens + 8 new > 32
    mine = ours(long_prompt, max_new_tokens=8, handle_long_generation="hole", return_tensors=True, **GREEDY)
    hf = theirs(long_prompt, max_new_tokens=8, handle_long_generation="hole", return_tensors=True, **GREEDY)
    assert (
        mine[0]["generated_token_ids"] == list(hf[0]["generated_token_ids"]) and len(hf[0]["generated_token_ids"]) == 32
    )
    with pytest.raises(ValueError, match="leaves no room for the prompt"):
        ours(long_prompt, max_new_tokens=32, handle_long_generation="hole")
    with pytest.raises(ValueError, match="expected None or 'hole'"):
        ours(PROMPT, handle_long_generation="crop")


def test_a_transformers_streamer_prints_what_transformers_prints(pair, capsys):
    ours, theirs, folder = pair
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    theirs(PROMPT, max_new_tokens=7, streamer=transformers.TextStreamer(tok), **GREEDY)
    printed_by_transformers = capsys.readouterr().out
    out = ours(PROMPT, max_new_tokens=7, streamer=transformers.TextStreamer(tok), **GREEDY)
    assert capsys.readouterr().out == printed_by_transformers
    assert printed_by_transformers.strip() == out[0]["generated_text"].strip().replace("w3w", "w3 w")

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.tolist())

        def end(self):
            self.ended = True

    rec = Recorder()
    ids = ours(PROMPT, max_new_tokens=5, streamer=rec, return_tensors=True, **GREEDY)[0]["generated_token_ids"]
    assert rec.puts[0] == [ids[:3]] and [p[0] for p in rec.puts[1:]] == ids[3:] and rec.ended
    with pytest.raises(ValueError, match="one prompt and one sequence"):
        ours([PROMPT, PROMPT], streamer=Recorder())


def test_generation_config_of_transformers_or_ours_sets_the_calls_defaults(pair):
    ours, theirs, _ = pair
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=5, repetition_penalty=1.5)
    mine = ours(PROMPT, generation_config=config, suppress_tokens=[EOT], return_tensors=True)
    hf = theirs(PROMPT, generation_config=config, suppress_tokens=[EOT], return_tensors=True)
    assert (
        mine[0]["generated_token_ids"] == list(hf[0]["generated_token_ids"])
        and len(mine[0]["generated_token_ids"]) == 8
    )
    kwargs = ours(PROMPT, max_new_tokens=5, repetition_penalty=1.5, return_tensors=True, **GREEDY)
    assert kwargs == mine
    assert (
        len(
            ours(PROMPT, generation_config=config, max_new_tokens=2, suppress_tokens=[EOT])[0]["generated_text"].split()
        )
        == 5
    )


def test_clean_up_tokenization_spaces_is_transformers_rule(pair):
    ours, theirs, _ = pair
    text = "Hello , world ! It 's a test . Do n't we 're ' ok ' ?"
    assert clean_up_tokenization(text) == theirs.tokenizer.clean_up_tokenization(text) != text
    assert ours(PROMPT, max_new_tokens=3, clean_up_tokenization_spaces=True, **GREEDY)[0]["generated_text"].startswith(
        PROMPT
    )


def test_return_arguments_exclude_each_other_as_in_transformers(pair):
    ours, theirs, _ = pair
    for args in ({"return_full_text": True, "return_tensors": True}, {"return_text": True, "return_tensors": True}):
        with pytest.raises(ValueError, match="mutually exclusive"):
            theirs(PROMPT, max_new_tokens=2, **args)
        with pytest.raises(ValueError, match="mutually exclusive"):
            ours(PROMPT, max_new_tokens=2, **args)
    assert ours(PROMPT, max_new_tokens=2, return_text=True, **GREEDY)[0]["generated_text"].startswith(PROMPT)


def test_stop_sequence_ends_the_text_and_logprobs_score_each_token(pair):
    ours, _, _ = pair
    sampled = dict(do_sample=True, seed=5, suppress_tokens=[EOT], max_new_tokens=12, return_full_text=False)
    full = ours(PROMPT, **sampled)[0]["generated_text"]
    words = full.split()
    stop = next(w for w in words[2:] if full.index(w) > full.index(words[1]))  # first met after two words
    cut = ours(PROMPT, stop_sequence=stop, **sampled)[0]["generated_text"]
    assert cut == full[: full.index(stop)] and len(cut.split()) >= 2  # the text ends before the stop string
    [out] = ours(PROMPT, max_new_tokens=4, logprobs=2, return_tensors=True, **GREEDY)
    scored = out["logprobs"]
    assert [s["token_id"] for s in scored] == out["generated_token_ids"][3:]
    for s in scored:  # greedy: the chosen token is the most likely one
        assert s["top_logprobs"][0]["token_id"] == s["token_id"] and s["logprob"] == pytest.approx(
            s["top_logprobs"][0]["logprob"]
        )
        assert s["logprob"] <= 0 and len(s["top_logprobs"]) == 2


def test_dtype_model_kwargs_and_the_default_task(pair, tmp_path):
    _, _, folder = pair
    for kwargs in (
        {"dtype": "bfloat16"},
        {"torch_dtype": torch.bfloat16},
        {"model_kwargs": {"torch_dtype": "bfloat16"}},
    ):
        generator = pipeline(model=f"hf:{folder}", device="cpu", **kwargs)
        assert (
            isinstance(generator, TextGenerationPipeline) and next(generator.model.parameters()).dtype == torch.bfloat16
        )
    with pytest.raises(ValueError, match="model_kwargs: nanoloom's loading takes dtype .* not device_map"):
        pipeline(model=f"hf:{folder}", model_kwargs={"device_map": "auto"})
    with pytest.raises(ValueError, match="the dtype is given twice"):
        pipeline(model=f"hf:{folder}", dtype="float32", torch_dtype=torch.float16)
    with pytest.raises(ValueError, match="is not a dtype"):
        pipeline(model=f"hf:{folder}", dtype="int4")
    with pytest.raises(ValueError, match="needs model="):
        pipeline("text-generation")
    from model import T5, T5Config

    t5 = T5(T5Config(vocab_size=300, n_encoder_layer=1, n_decoder_layer=1, n_head=2, n_embd=16, block_size=16))
    assert isinstance(pipeline(model=t5, tokenizer="byte"), Text2TextGenerationPipeline)
