"""Tests of `python -m sample`: a subprocess smoke run, config composition, overrides and one-line user errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import save_model
from sample.__main__ import load_config, main

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


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """main() in-process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_two_samples(checkpoint):
    result = run_cli(f"checkpoint={checkpoint}", f"prompt={PROMPT}", "max_new_tokens=5", "num_samples=2", "seed=0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"--- sample 1/2 ---\n{PROMPT}")
    assert f"\n--- sample 2/2 ---\n{PROMPT}" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_missing_checkpoint_is_one_line_error(tmp_path):
    result = run_cli(f"checkpoint={tmp_path / 'missing'}", "prompt=hi")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "missing" in result.stderr


def test_unknown_key_names_the_key(capsys, checkpoint):
    code, _, err = run_main(capsys, f"checkpoint={checkpoint}", "prompt=hi", "tempreature=0.5")
    assert code == 2 and "'tempreature'" in err and "did you mean temperature?" in err


def test_free_text_values_skip_the_override_grammar():
    cfg = load_config(["checkpoint=runs/a b,c=d", "prompt=def f(n, m=${x}):\n  return 'it'"])
    assert cfg.checkpoint == "runs/a b,c=d" and cfg.prompt == "def f(n, m=${x}):\n  return 'it'"
    assert load_config(["checkpoint=c", 'prompt="Once upon a time,"']).prompt == "Once upon a time,"


def test_cfg_prints_the_composed_config(capsys):
    code, out, _ = run_main(capsys, "--cfg", "task=code", "prompt=(x)")
    assert code == 0 and "name: code" in out and "prompt: (x)" in out and "checkpoint: ???" in out


@pytest.mark.parametrize("task", ["story", "code"])
def test_every_task_composes(task):
    cfg = load_config(["checkpoint=some/run", "prompt=x", f"task={task}"])
    assert cfg.task.name == task and cfg.settings() == cfg.task
    if task == "code":
        assert "\ndef " in cfg.task.stop and cfg.task.temperature == 0.2


def test_top_level_values_override_the_task():
    cfg = load_config(["checkpoint=c", "prompt=x", "task=code", "temperature=0", "max_new_tokens=7", "top_k=5"])
    s = cfg.settings()
    assert (s.temperature, s.max_new_tokens, s.top_k, s.top_p, s.stop) == (0.0, 7, 5, 0.95, cfg.task.stop)


def test_stream_prints_the_same_sample_as_batch(capsys, checkpoint):
    args = [f"checkpoint={checkpoint}", "prompt=def fibonacci(n):", "task=code", "max_new_tokens=8", "seed=3"]
    code, batch, _ = run_main(capsys, *args)
    assert code == 0
    code, streamed, _ = run_main(capsys, *args, "stream=true")
    assert code == 0 and streamed == batch and batch.startswith("--- sample 1/1 ---\ndef fibonacci(n):")


def test_prompt_file(capsys, checkpoint, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time, é")
    code, out, _ = run_main(capsys, f"checkpoint={checkpoint}", f"prompt_file={prompt}", "max_new_tokens=3")
    assert code == 0 and out.startswith("--- sample 1/1 ---\nOnce upon a time, é")


def test_long_prompt_is_cropped_with_a_warning(capsys, checkpoint):
    code, out, err = run_main(capsys, f"checkpoint={checkpoint}", f"prompt={'a' * 40}", "max_new_tokens=4")
    assert code == 0 and "--- sample 1/1 ---" in out
    assert "warning: prompt of 40 tokens" in err and "dropped the first 12" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["prompt=x"], "checkpoint is required"),
        (["checkpoint={ckpt}"], "no prompt"),
        (["checkpoint={ckpt}", "prompt=x", "task=poem"], "unknown task 'poem'; choose one of code, story"),
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
    code, out, err = run_main(capsys, *[a.format(ckpt=checkpoint) for a in args])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_incomplete_checkpoint_is_a_user_error(capsys, checkpoint, tmp_path):
    (tmp_path / "model.json").write_text((Path(checkpoint) / "model.json").read_text())
    code, _, err = run_main(capsys, f"checkpoint={tmp_path}", "prompt=x")
    assert code == 2 and "incomplete checkpoint" in err and err.count("\n") == 1
