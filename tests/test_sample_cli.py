"""Tests of `python -m sample`: a subprocess smoke run, config composition, overrides and one-line user errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import run_sample_main

from data.tokenizer import get_tokenizer
from model import GPT, T5, GPTConfig, T5Config
from model.checkpoint import save_model
from sample.__main__ import load_config
from sample.config import TaskConfig

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Once upon a time,"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=257))
    path = tmp_path_factory.mktemp("run") / "checkpoint"
    return str(save_model(model, path, tokenizer_spec=get_tokenizer("byte").spec(), meta={"step": 0}))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sample", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.e2e
def test_cli_prints_two_samples(checkpoint):
    result = run_cli(f"checkpoint={checkpoint}", f"prompt={PROMPT}", "max_new_tokens=5", "num_samples=2", "seed=0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"--- sample 1/2 ---\n{PROMPT}")
    assert f"\n--- sample 2/2 ---\n{PROMPT}" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_cli_missing_checkpoint_is_one_line_error(tmp_path):
    result = run_cli(f"checkpoint={tmp_path / 'missing'}", "prompt=hi")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "missing" in result.stderr


def test_unknown_key_names_the_key(capsys, checkpoint):
    code, _, err = run_sample_main(capsys, f"checkpoint={checkpoint}", "prompt=hi", "tempreature=0.5")
    assert code == 2 and "'tempreature'" in err and "did you mean temperature?" in err


def test_free_text_values_skip_the_override_grammar():
    cfg = load_config(["checkpoint=runs/a b,c=d", "prompt=def f(n, m=${x}):\n  return 'it'"])
    assert cfg.checkpoint == "runs/a b,c=d" and cfg.prompt == "def f(n, m=${x}):\n  return 'it'"
    assert load_config(["checkpoint=c", 'prompt="Once upon a time,"']).prompt == "Once upon a time,"


def test_cfg_prints_the_composed_config(capsys):
    code, out, _ = run_sample_main(capsys, "--cfg", "task=code", "prompt=(x)")
    assert code == 0 and "name: code" in out and "prompt: (x)" in out and "checkpoint: ???" in out


TASKS = sorted(p.stem for p in (ROOT / "configs" / "task").glob("*.yaml"))


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes(task):
    cfg = load_config(["checkpoint=some/run", "prompt=x", f"task={task}"])
    assert cfg.task.name == task and cfg.settings() == cfg.task
    assert cfg.task.objective == {"story": "causal", "code": "causal"}.get(task, task)
    if task == "code":
        assert cfg.task.stop_at_top_level and cfg.task.check_syntax and cfg.task.temperature == 0.2
    if task in ("seq2seq", "span_corruption"):
        assert cfg.task.greedy and not cfg.task.do_sample and cfg.task.num_beams == 1


def test_task_config_validates_the_new_fields():
    task = TaskConfig()
    assert (task.objective, task.noise_density, task.mean_span_length) == ("causal", 0.15, 3.0)
    assert (task.num_beams, task.length_penalty, task.early_stopping) == (1, 1.0, False)
    for bad, message in [
        (dict(objective="mlm"), "task.objective='mlm' is not one of causal, instruct, span_corruption, seq2seq"),
        (dict(noise_density=0.0), "task.noise_density=0.0 must be in (0, 1)"),
        (dict(noise_density=1.0), "task.noise_density=1.0"),
        (dict(mean_span_length=0.5), "task.mean_span_length=0.5 must be >= 1"),
        (dict(num_beams=0), "task.num_beams=0 must be >= 1"),
        (dict(length_penalty=float("nan")), "task.length_penalty=nan"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            TaskConfig(**bad)


def test_top_level_values_override_the_task():
    cfg = load_config(["checkpoint=c", "prompt=x", "task=code", "temperature=0", "max_new_tokens=7", "top_k=5"])
    s = cfg.settings()
    assert (s.temperature, s.max_new_tokens, s.top_k, s.top_p) == (0.0, 7, 5, 0.95) and s.greedy
    assert s.stop_strings == cfg.task.stop_strings and s.stop_at_top_level
    cfg = load_config(["checkpoint=c", "prompt=x", "num_beams=3", "length_penalty=0.5", "early_stopping=true"])
    s = cfg.settings()
    assert (s.num_beams, s.length_penalty, s.early_stopping) == (3, 0.5, True) and cfg.task.num_beams == 1


def test_stream_prints_the_same_sample_as_batch(capsys, checkpoint):
    args = [f"checkpoint={checkpoint}", "prompt=def fibonacci(n):", "task=code", "max_new_tokens=8", "seed=3"]
    code, batch, _ = run_sample_main(capsys, *args)
    assert code == 0
    code, streamed, _ = run_sample_main(capsys, *args, "stream=true")
    assert code == 0 and streamed == batch and batch.startswith("--- sample 1/1 ---\ndef fibonacci(n):")


def test_prompt_file(capsys, checkpoint, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time, é")
    code, out, _ = run_sample_main(capsys, f"checkpoint={checkpoint}", f"prompt_file={prompt}", "max_new_tokens=3")
    assert code == 0 and out.startswith("--- sample 1/1 ---\nOnce upon a time, é")


def test_long_prompt_is_cropped_with_a_warning(capsys, checkpoint):
    code, out, err = run_sample_main(capsys, f"checkpoint={checkpoint}", f"prompt={'a' * 40}", "max_new_tokens=4")
    assert code == 0 and "--- sample 1/1 ---" in out
    assert "warning: prompt of 40 tokens" in err and "dropped the first 12" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["prompt=x"], "checkpoint is required"),
        (["checkpoint={ckpt}"], "no prompt"),
        (
            ["checkpoint={ckpt}", "prompt=x", "task=poem"],
            "unknown task 'poem'; choose one of code, instruct, seq2seq, span_corruption, story",
        ),
        (["checkpoint={ckpt}", "prompt=x", "num_beams=0"], "num_beams=0 must be >= 1"),
        (["checkpoint={ckpt}", "prompt=x", "num_beams=2", "num_samples=3"], "num_samples=3 > num_beams=2"),
        (["checkpoint={ckpt}", "prompt=x", "num_beams=2", "stream=true"], "stream=true cannot show beam search"),
        (["checkpoint={ckpt}", "prompt=x", "task.objective=mlm"], "task.objective='mlm' is not one of"),
        (["checkpoint={ckpt}", "prompt=x", "task.noise_density=2"], "task.noise_density=2.0 must be in (0, 1)"),
        (["checkpoint={ckpt}", "prompt=x", "temperature=-1"], "temperature"),
        (["checkpoint={ckpt}", "prompt=x", "top_p=1.5"], "top_p"),
        (["checkpoint={ckpt}", "prompt=x", "num_samples=0"], "num_samples"),
        (["checkpoint={ckpt}", "prompt=x", "top_k=many"], "top_k"),
        (["checkpoint={ckpt}", "prompt=x", "+colour=red"], "colour"),
        (["checkpoint={ckpt}", "prompt_file=/does/not/exist"], "prompt_file"),
        (["checkpoint={ckpt}/..", "prompt=x"], "no checkpoint"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(capsys, checkpoint, args, message):
    code, out, err = run_sample_main(capsys, *[a.format(ckpt=checkpoint) for a in args])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = T5(T5Config(n_encoder_layer=2, n_decoder_layer=2, n_head=2, n_embd=16, intermediate_size=32,
                        block_size=32, vocab_size=257, dropout=0.0))  # fmt: skip
    path = tmp_path_factory.mktemp("t5run") / "checkpoint"
    return str(save_model(model, path, tokenizer_spec=get_tokenizer("byte").spec()))


def test_t5_checkpoint_prints_the_output_alone(capsys, t5_checkpoint):
    args = [f"checkpoint={t5_checkpoint}", f"prompt={PROMPT}", "max_new_tokens=6"]
    code, out, err = run_sample_main(capsys, *args, "num_samples=2", "seed=0")
    assert code == 0, err
    assert out.startswith("--- output 1/2 ---\n") and "\n--- output 2/2 ---\n" in out
    assert PROMPT not in out  # the prompt is the encoder input, not the start of the output
    assert "t5" in err and "printed alone" in err
    code, greedy, _ = run_sample_main(capsys, *args, "task=seq2seq")
    code2, streamed, _ = run_sample_main(capsys, *args, "task=seq2seq", "stream=true")
    assert code == code2 == 0 and greedy == streamed and greedy.startswith("--- output 1/1 ---\n")


def test_beam_search_from_the_command_line(capsys, t5_checkpoint, checkpoint):
    args = ["prompt=hello", "task=seq2seq", "max_new_tokens=6", "num_beams=3", "num_samples=2"]
    code, out, err = run_sample_main(capsys, f"checkpoint={t5_checkpoint}", *args)
    assert code == 0, err
    assert out.startswith("--- beam 1/2 ---\n") and "\n--- beam 2/2 ---\n" in out and "3 beams" in err
    code, out, err = run_sample_main(capsys, f"checkpoint={checkpoint}", *args, "temperature=0.5")
    assert code == 0 and out.startswith("--- beam 1/2 ---\nhello")  # gpt: prompt + completion, as always
    assert "warning: num_beams=3: beam search is deterministic" in err


def test_incomplete_checkpoint_is_a_user_error(capsys, checkpoint, tmp_path):
    (tmp_path / "model.json").write_text((Path(checkpoint) / "model.json").read_text())
    code, _, err = run_sample_main(capsys, f"checkpoint={tmp_path}", "prompt=x")
    assert code == 2 and "incomplete checkpoint" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------------------------
# provenance: out= writes JSONL records, replay= regenerates them exactly


def test_samples_are_recorded_and_replay_exactly(capsys, checkpoint, tmp_path):
    out = tmp_path / "samples.jsonl"
    args = [f"checkpoint={checkpoint}", "prompt=Once", "max_new_tokens=12", "num_samples=3", "temperature=1.2",
            "repetition_penalty=1.3", "no_repeat_ngram_size=3", f"out={out}"]  # fmt: skip
    code, printed, err = run_sample_main(capsys, *args)  # no seed: one is drawn, printed and recorded
    assert code == 0 and "seed=" in err and f"wrote 3 sample record(s) to {out}" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seed"] for r in records] == [records[0]["seed"] + i for i in range(3)]
    first = records[0]
    assert first["checkpoint"] == str(Path(checkpoint).resolve()) and first["step"] == 0
    assert len(first["weights_sha256"]) == 64 and first["tokenizer"]["name"] == "byte"
    assert first["generation"]["repetition_penalty"] == 1.3 and first["generation"]["do_sample"] is True
    assert first["prompt"] == "Once" and first["completion"] in printed and first["finish_reason"] == "length"
    code, replayed, err = run_sample_main(capsys, f"replay={out}")
    assert code == 0 and "3 reproduced exactly" in err
    assert [r["completion"] for r in records] == re.findall(r"---\n(.*?)\n(?=---|\Z)", replayed, re.S)


def test_replay_reports_a_sample_that_differs(capsys, checkpoint, tmp_path):
    out = tmp_path / "samples.jsonl"
    run_sample_main(capsys, f"checkpoint={checkpoint}", "prompt=ab", "max_new_tokens=6", "seed=1", f"out={out}")
    record = json.loads(out.read_text())
    record["completion"] = "not what the model wrote"
    out.write_text(json.dumps(record) + "\n")
    code, _, err = run_sample_main(capsys, f"replay={out}")
    assert code == 1 and "0 reproduced exactly" in err


def test_replay_refuses_changed_weights(capsys, tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=257))
    path = save_model(model, tmp_path / "ckpt", tokenizer_spec=get_tokenizer("byte").spec())
    out = tmp_path / "samples.jsonl"
    run_sample_main(capsys, f"checkpoint={path}", "prompt=ab", "max_new_tokens=4", "seed=1", f"out={out}")
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    save_model(model, path, tokenizer_spec=get_tokenizer("byte").spec())
    code, _, err = run_sample_main(capsys, f"replay={out}")
    assert code == 2 and "weights" in err and "changed" in err and err.count("\n") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    code, _, err = run_sample_main(capsys, f"replay={bad}")
    assert code == 2 and "not a nanoloom sample record" in err


def test_code_task_reports_whether_the_sample_parses(capsys, checkpoint):
    code, out, err = run_sample_main(
        capsys, f"checkpoint={checkpoint}", "prompt=def f(:", "task=code", "max_new_tokens=3"
    )
    assert code == 0 and "does not parse as Python: SyntaxError" in err and "[ended: " in err


def test_infill_from_the_command_line(capsys, tmp_path):
    torch.manual_seed(0)
    fim = get_tokenizer("byte").with_fim()
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=32, vocab_size=fim.vocab_size))
    path = save_model(model, tmp_path / "fim", tokenizer_spec=fim.spec())
    args = (f"checkpoint={path}", "prefix=def f(x):\n    return ", "suffix=\n", "seed=0", "max_new_tokens=4")
    code, out, err = run_sample_main(capsys, *args)
    assert code == 0 and "fill in the middle" in err
    assert out.startswith("--- sample 1/1 ---\ndef f(x):\n    return ") and out.endswith("\n\n")
    code, _, err = run_sample_main(capsys, f"checkpoint={path}", "prefix=a", "prompt=b")
    assert code == 2 and "prefix/suffix (infill) and prompt are both set" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["top_p=1.5"], "top_p=1.5 must be in (0, 1]"),
        (["temperature=-1"], "temperature=-1.0 must be >= 0"),
        (["typical_p=0"], "typical_p=0.0 must be in (0, 1]"),
        (["min_p=2"], "min_p=2.0 must be in [0, 1]"),
        (["repetition_penalty=0"], "repetition_penalty=0.0 must be > 0"),
        (["do_sample=false", "num_samples=2"], "greedy decoding (do_sample=false) gives 2 identical sequences"),
        (["num_beams=2", "do_sample=true"], "beam sampling"),
        (["min_new_tokens=9", "max_new_tokens=3"], "min_new_tokens=9 > max_new_tokens=3"),
    ],
)
def test_contradictory_or_out_of_range_controls(capsys, checkpoint, args, message):
    code, _, err = run_sample_main(capsys, f"checkpoint={checkpoint}", "prompt=x", *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_logprobs_prints_and_records_each_tokens_log_probability(capsys, checkpoint, tmp_path):
    """logprobs=k: after each sample, a line per generated token with its log-probability and k alternatives; the
    same numbers go to out= records; the samples themselves do not change."""
    args = [f"checkpoint={checkpoint}", f"prompt={PROMPT}", "max_new_tokens=6", "seed=2", "top_k=0"]
    code, plain, _ = run_sample_main(capsys, *args)
    out = tmp_path / "s.jsonl"
    code, scored, _ = run_sample_main(capsys, *args, "logprobs=3", f"out={out}")
    assert code == 0 and scored.startswith(plain.rstrip("\n").split("\n[ended")[0].rstrip("\n"))
    block = scored.split("--- logprobs 1/1 ---\n")[1].splitlines()
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(block) == len(record["token_ids"]) == len(record["logprobs"]) == len(record["top_logprobs"])
    for line, lp, top in zip(block, record["logprobs"], record["top_logprobs"]):
        assert f"{lp:8.3f}" in line and len(top) == 3 and lp <= max(v for _, v in top) + 1e-6
    code, _, err = run_sample_main(capsys, f"checkpoint={checkpoint}", 'prefix="a"', 'suffix="b"', "logprobs=2")
    assert code == 2 and "logprobs=2 scores completions of a prompt, not infills" in err
