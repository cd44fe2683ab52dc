"""One set of decoding defaults per checkpoint: training records its task preset in model.json (meta.generation);
the pipeline, `python -m sample`, in-training samples and the exported generation_config.json use it; the
pipeline generates 256 new tokens when no length is given, whatever the prompt's length."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from train_helpers import compose_train, run_sample_main, tiny_run_overrides, zen_of_python

from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import read_generation_defaults, read_model_json, save_model
from model.export import export_hf
from sample.pipeline import pipeline
from sample.sampling import GenerationConfig
from train import loop, periodic

pipeline_module = importlib.import_module("sample.pipeline")  # sample.pipeline is also the function's name
pytestmark = pytest.mark.filterwarnings("ignore:prompt of 40 tokens is longer")  # cropped, and then not limiting
BYTE = get_tokenizer("byte")
EOT = BYTE.eot_id
PROMPT_40 = "The quick brown fox jumps over the dog. "  # 40 byte tokens, more than the context of 32


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=257)).eval()


@pytest.fixture(scope="module")
def code_run(tmp_path_factory) -> Path:
    """A tiny run trained with task=code; the controls its in-training samples used are kept in CAPTURED."""
    tmp = tmp_path_factory.mktemp("code")
    real = periodic.generate

    def spy(model, tokenizer, prompts, config=None, **kwargs):
        CAPTURED.append(config)
        return real(model, tokenizer, prompts, config, **kwargs)

    periodic.generate = spy
    try:
        loop.run(compose_train(tiny_run_overrides(tmp, zen_of_python(tmp), **{"task": "code"})))
    finally:
        periodic.generate = real
    return tmp / "run"


CAPTURED: list[GenerationConfig] = []


@pytest.fixture
def pipeline_configs(monkeypatch) -> list[GenerationConfig]:
    """The GenerationConfig of every generate() call the pipeline makes."""
    seen, real = [], pipeline_module.generate

    def spy(model, tokenizer, prompts, config=None, **kwargs):
        seen.append(config)
        return real(model, tokenizer, prompts, config, **kwargs)

    monkeypatch.setattr(pipeline_module, "generate", spy)
    return seen


def test_pipeline_generates_256_new_tokens_after_any_prompt():
    assert len(BYTE.encode(PROMPT_40)) == 40
    generator = pipeline("text-generation", model=tiny_gpt(), tokenizer=BYTE)
    [out] = generator(PROMPT_40, return_tensors=True, seed=0)
    ids = out["generated_token_ids"][40:]  # the prompt's ids come first, as in transformers' generated sequence
    assert len(ids) == 256 or (ids[-1] == EOT and len(ids) < 256)
    [out] = generator(PROMPT_40, return_tensors=True, seed=0, suppress_tokens=[EOT])
    assert len(out["generated_token_ids"]) == 40 + 256  # no end-of-text: exactly the default


def test_pipeline_explicit_max_length_counts_the_prompt(tmp_path):
    generator = pipeline("text-generation", model=tiny_gpt(), tokenizer=BYTE)
    kw = dict(return_tensors=True, seed=0, suppress_tokens=[EOT])
    assert len(generator(PROMPT_40, max_length=50, **kw)[0]["generated_token_ids"]) == 50  # the prompt's 40 too
    assert len(generator(PROMPT_40, max_new_tokens=7, **kw)[0]["generated_token_ids"]) == 40 + 7
    # a recorded max_new_tokens never beats an explicit max_length
    ckpt = save_model(tiny_gpt(), tmp_path / "ckpt", BYTE.spec(), meta={"generation": {"max_new_tokens": 100}})
    generator = pipeline("text-generation", model=ckpt)
    assert len(generator(PROMPT_40, max_length=45, **kw)[0]["generated_token_ids"]) == 45
    assert len(generator(PROMPT_40, **kw)[0]["generated_token_ids"]) == 40 + 100


@pytest.mark.e2e
def test_training_records_the_task_preset_and_samples_with_it(code_run):
    record = read_model_json(code_run)["meta"]["generation"]
    assert record["name"] == "code" and record["temperature"] == 0.2 and record["top_p"] == 0.95
    assert record["top_k"] == 0 and record["stop_at_top_level"] is True and record["max_new_tokens"] == 256
    assert CAPTURED and all(c.temperature == 0.2 and c.top_p == 0.95 and c.top_k == 0 for c in CAPTURED)
    assert all(c.stop_at_top_level and c.max_new_tokens == 8 for c in CAPTURED)  # samples.max_new_tokens: a budget


def test_samples_overrides_beat_the_task():
    cfg = compose_train(["task=code", "samples.temperature=0", "samples.top_k=5"])
    assert cfg.samples.overrides() == {"max_new_tokens": 64, "temperature": 0.0, "top_k": 5, "do_sample": False}
    assert compose_train(["task=story", "samples.max_new_tokens=null"]).samples.overrides() == {}


def test_pipeline_uses_the_recorded_task_and_a_call_overrides_it(code_run, pipeline_configs):
    generator = pipeline("text-generation", model=code_run)
    generator("def f(x):", seed=0, max_new_tokens=4)
    generator("def f(x):", seed=0, max_new_tokens=4, temperature=0.7, top_k=10)
    generator("def f(x):", seed=0, max_new_tokens=4, do_sample=False)
    recorded, overridden, greedy = pipeline_configs
    assert recorded.do_sample and recorded.temperature == 0.2 and recorded.top_p == 0.95 and recorded.top_k == 0
    assert recorded.stop_at_top_level
    assert overridden.temperature == 0.7 and overridden.top_k == 10 and overridden.top_p == 0.95
    assert not greedy.do_sample
    generator("def f(x):", seed=0)
    assert pipeline_configs[-1].max_new_tokens == 256  # the code preset's length
    explicit = pipeline("text-generation", model=code_run, generation_config=GenerationConfig(temperature=0.3))
    explicit("x", max_new_tokens=2, seed=0)
    assert pipeline_configs[-1].temperature == 0.3 and pipeline_configs[-1].top_k == 50


def test_pipeline_without_a_record_keeps_its_defaults(tmp_path, pipeline_configs):
    ckpt = save_model(tiny_gpt(), tmp_path / "old", BYTE.spec(), meta={"step": 0})  # written before the record
    assert read_generation_defaults(ckpt) is None
    pipeline("text-generation", model=ckpt)("Once", seed=0, max_new_tokens=2)
    [config] = pipeline_configs
    assert config.do_sample and config.temperature == 1.0 and config.top_k == 50


def sample_records(capsys, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "samples.jsonl"
    out.unlink(missing_ok=True)
    code, _, err = run_sample_main(capsys, *args, "prompt=def f(x):", "max_new_tokens=3", "seed=0", f"out={out}")
    assert code == 0, err
    return {"err": err, **json.loads(out.read_text().splitlines()[0])}


def test_cli_uses_the_recorded_task_unless_overridden(code_run, capsys, tmp_path):
    ckpt = f"checkpoint={code_run}"
    recorded = sample_records(capsys, tmp_path, ckpt)
    assert "task=code (recorded in the checkpoint)" in recorded["err"] and recorded["task"] == "code"
    assert recorded["generation"]["temperature"] == 0.2 and recorded["generation"]["top_p"] == 0.95
    assert recorded["generation"]["stop_at_top_level"] is True
    control = sample_records(capsys, tmp_path, ckpt, "temperature=0.7")
    assert control["generation"]["temperature"] == 0.7 and control["generation"]["top_p"] == 0.95
    edited = sample_records(capsys, tmp_path, ckpt, "task.top_p=0.5")
    assert edited["task"] == "code" and edited["generation"]["top_p"] == 0.5
    assert edited["generation"]["temperature"] == 0.2
    story = sample_records(capsys, tmp_path, ckpt, "task=story")
    assert story["task"] == "story" and story["generation"]["temperature"] == 0.8
    assert "recorded in the checkpoint" not in story["err"]


def test_cli_falls_back_to_the_story_preset_without_a_record(capsys, tmp_path):
    ckpt = save_model(tiny_gpt(), tmp_path / "old", BYTE.spec(), meta={"step": 0})
    old = sample_records(capsys, tmp_path, f"checkpoint={ckpt}")
    assert old["task"] == "story" and old["generation"]["temperature"] == 0.8
    assert "recorded in the checkpoint" not in old["err"]


def test_export_writes_the_recorded_sampling_defaults(code_run, tmp_path):
    out = export_hf(code_run, tmp_path / "hf")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["do_sample"] is True and gen["temperature"] == 0.2 and gen["top_p"] == 0.95 and gen["top_k"] == 0
    assert gen["max_new_tokens"] == 256 and gen["eos_token_id"] == EOT
    transformers = pytest.importorskip("transformers")
    config = transformers.GenerationConfig.from_pretrained(out)
    assert config.temperature == 0.2 and config.top_k == 0 and config.do_sample


def test_export_of_a_greedy_preset_writes_no_sampling_controls(tmp_path):
    record = {"name": "seq2seq", "do_sample": False, "temperature": 1.0, "top_k": 50, "max_new_tokens": 128}
    ckpt = save_model(tiny_gpt(), tmp_path / "ckpt", BYTE.spec(), meta={"generation": record})
    gen = json.loads((export_hf(ckpt, tmp_path / "hf") / "generation_config.json").read_text())
    assert gen["do_sample"] is False and gen["max_new_tokens"] == 128
    assert not {"temperature", "top_k", "top_p"} & set(gen)


def test_hf_folder_generation_config_is_read(tmp_path):
    folder = tmp_path / "hf_model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert read_generation_defaults(f"hf:{folder}") is None
    hf = {"do_sample": True, "temperature": 0.6, "max_length": 20, "early_stopping": "never", "eos_token_id": 50256}
    (folder / "generation_config.json").write_text(json.dumps({**hf, "transformers_version": "4.0"}))
    assert read_generation_defaults(f"hf:{folder}") == {"do_sample": True, "temperature": 0.6, "eos_token_id": 50256}


def test_every_scalar_decoding_control_is_a_command_line_override_of_the_preset():
    """The sampler's and training's override keys are GenerationConfig's own int/float/bool fields (no hand-kept
    list): each one, set on the command line, reaches the decoding config; the list-valued controls stay a preset's."""
    import dataclasses

    from sample.config import SampleConfig, TaskConfig
    from sample.sampling import scalar_controls

    controls = scalar_controls()
    generation_fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    assert set(controls) == generation_fields - {
        "num_return_sequences", "bad_words_ids", "suppress_tokens", "eos_token_id", "stop_strings"
    }  # fmt: skip
    changed = {"max_new_tokens": 7, "max_length": 30, "min_new_tokens": 2, "do_sample": True, "temperature": 0.5,
               "top_k": 3, "top_p": 0.9, "min_p": 0.05, "typical_p": 0.8, "repetition_penalty": 1.2,
               "presence_penalty": 0.1, "frequency_penalty": 0.2, "no_repeat_ngram_size": 3, "num_beams": 1,
               "length_penalty": 0.5, "early_stopping": True, "stop_at_top_level": True,
               "prompt_lookup_num_tokens": 4, "max_matching_ngram_size": 3, "num_assistant_tokens": 5,
               "forced_bos_token_id": 0, "forced_eos_token_id": 2}  # fmt: skip
    assert set(changed) == set(controls)
    settings = SampleConfig(checkpoint="x", prompt="p", task=TaskConfig(), **changed).settings()
    assert {k: getattr(settings, k) for k in changed} == changed
    train = compose_train([f"samples.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changed.items()])
    assert train.samples.overrides() == changed
