"""Bad inputs across the command lines: each is one `error: ...` line naming the problem and a fix, exit status 2.

One table of cases for python -m data.prepare, train, sample, train.evaluate and model.export. Most run in-process
through the CLI's main(); a few (subprocess=True) run `python -m ...` to prove the same end to end.
Every case runs against one shared world (corpora, checkpoints, a prepared dataset, a run with a checkpoint, an
export folder) and must leave each of its files as it was, and no new run or export directory behind.
NANOLOOM_DEBUG=1 (or HYDRA_FULL_ERROR=1) turns the one line back into the traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from train_helpers import compose_train, run_cli, snapshot, zen_of_python

from data.prepare import prepare
from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[1]
# python -m train on the world's corpus; no case gets as far as a training step
TRAIN = ("debug=default", "data=text", "data.paths=[{w}/corpus/good.txt]", "data.val_fraction=0.2",
         "paths.cache_dir={w}/cache", "paths.runs_dir={w}/runs")  # fmt: skip
SAMPLE = ("checkpoint={w}/ckpt", "prompt=Once", "max_new_tokens=2")
PREPARE = ("data=text", "paths.cache_dir={w}/cache")
EVALUATE = ("checkpoint={w}/ckpt", "file={w}/corpus/good.txt")


@dataclass(frozen=True)
class Case:
    id: str
    cli: str  # prepare | train | sample | evaluate | export
    args: tuple[str, ...]  # "{w}" is the world directory
    message: str  # a fragment of the error line
    code: int = 2
    subprocess: bool = False  # run `python -m ...` rather than main() in-process


CASES = [
    # python -m data.prepare
    Case("prepare-missing-file", "prepare", (*PREPARE, "data.paths=[{w}/corpus/missing.txt]"),
         "missing.txt' matches no file; give a file, directory or glob"),
    Case("prepare-missing-dir", "prepare", (*PREPARE, "data.paths=[{w}/no_such_dir/]"),
         "no_such_dir/' matches no file"),
    Case("prepare-empty-file", "prepare", (*PREPARE, "data.paths=[{w}/corpus/empty.txt]"),
         "the text corpus is empty (1 file(s) without text); give files with text"),
    Case("prepare-dir-without-text-files", "prepare", (*PREPARE, "data.paths=[{w}/images]"),
         "has no files ending in .jsonl, .md, .py, .txt; set data.extensions=[...]"),
    Case("prepare-png", "prepare", (*PREPARE, "data.paths=[{w}/images/logo.png]"),
         "logo.png holds NUL bytes (at byte 8): a binary file", subprocess=True),
    Case("prepare-null-bytes", "prepare", (*PREPARE, "data.paths=[{w}/corpus/nul.txt]"),
         "remove it from data.paths (or narrow data.extensions), or convert it to UTF-8"),
    Case("prepare-invalid-utf8", "prepare", (*PREPARE, "data.paths=[{w}/corpus/latin1.txt]"),
         "latin1.txt is not valid UTF-8 (2 undecodable bytes, the first at byte 3); convert it to UTF-8"),
    Case("prepare-pairs-missing-field", "prepare", (*PREPARE, "data=pairs", "data.paths=[{w}/corpus/no_target.jsonl]"),
         "no_target.jsonl:2: no field 'target' (found: input); set data.target_field=<name>"),
    Case("prepare-pairs-malformed-line", "prepare", (*PREPARE, "data=pairs", "data.paths=[{w}/corpus/malformed.jsonl]"),
         "malformed.jsonl:2: not valid JSON"),
    Case("prepare-pairs-one-pair", "prepare", (*PREPARE, "data=pairs", "data.paths=[{w}/corpus/one_pair.jsonl]"),
         "a train/val split needs at least 2: give more pairs"),
    Case("prepare-jsonl-wrong-field", "prepare", (*PREPARE, "data.paths=[{w}/corpus/docs.jsonl]"),
         "docs.jsonl:1: no field 'text' (found: body); set data.jsonl_field=<name>"),
    Case("prepare-unknown-key", "prepare", (*PREPARE, "data.tokenzer=byte"), "(did you mean data.tokenizer?)"),
    Case("prepare-wrong-type", "prepare", (*PREPARE, "data.val_fraction=abc"), "(set data.val_fraction to a number)"),
    Case("prepare-unknown-tokenizer", "prepare", (*PREPARE, "data.tokenizer=wp", "data.paths=[{w}/corpus/good.txt]"),
         "unknown tokenizer 'wp'; set data.tokenizer to one of"),
    # python -m train
    Case("train-unknown-key", "train", (*TRAIN, "model.colour=red"),
         "Key 'colour' not in 'GPTConfig' (valid model keys: bias, block_size,"),
    Case("train-appended-unknown-key", "train", (*TRAIN, "+trainer.colour=red"),
         "unknown key trainer.colour; valid keys: activation_checkpointing, batch_size,"),
    Case("train-wrong-type", "train", (*TRAIN, "model.n_layer=abc"), "(set model.n_layer to a whole number)"),
    Case("train-zero-layers", "train", (*TRAIN, "model.n_layer=0"), "model.n_layer=0 must be a positive integer"),
    Case("train-zero-batch-size", "train", (*TRAIN, "trainer.batch_size=0"), "trainer.batch_size=0 must be >= 1"),
    Case("train-negative-lr", "train", (*TRAIN, "optim.lr=-0.1"), "optim.lr=-0.1 must be > 0"),
    Case("train-n-embd-not-divisible", "train", (*TRAIN, "model.n_embd=50", "model.n_head=3"),
         "model.n_embd=50 is not divisible by model.n_head=3; pick n_embd a multiple of n_head (e.g. n_embd=51)"),
    Case("train-unknown-model", "train", (*TRAIN, "model=gpt-huge"), "unknown model 'gpt-huge'; choose one of"),
    Case("train-corpus-shorter-than-window", "train", (*TRAIN, "data.paths=[{w}/corpus/short.txt]"),
         "not more than block_size=64: one training window needs block_size + 1; use a smaller model.block_size"),
    Case("train-vocab-mismatch", "train", (*TRAIN, "model.vocab_size=100"),
         "vocabulary mismatch: model.vocab_size=100 but the data's byte tokenizer has 257 tokens"),
    Case("train-init-from-larger-block-size", "train", (*TRAIN, "init_from={w}/ckpt", "model.block_size=64"),
         "model.block_size=64 exceeds block_size=32 of init_from="),
    Case("train-init-from-missing", "train", (*TRAIN, "init_from={w}/no_such_ckpt"), "no_such_ckpt' does not exist"),
    Case("train-init-from-missing-weights", "train", (*TRAIN, "init_from={w}/no_weights"),
         "no_weights': model.safetensors is missing"),
    Case("train-init-from-truncated-weights", "train", (*TRAIN, "init_from={w}/truncated"),
         "the file is truncated or damaged; copy the checkpoint again or use another one", subprocess=True),
    Case("train-resume-other-architecture", "train", (*TRAIN, "run_name=existing", "resume=auto"),
         "with a different model (block_size: checkpoint 32 vs config 64;"),
    Case("train-fresh-run-over-checkpoints", "train", (*TRAIN, "run_name=existing"),
         "already has checkpoints; pass resume=auto to continue it, or choose another run_name"),
    # python -m sample
    Case("sample-missing-checkpoint", "sample", ("checkpoint={w}/no_such_ckpt", "prompt=x"),
         "no_such_ckpt' does not exist; pass a run or checkpoint directory", subprocess=True),
    Case("sample-truncated-weights", "sample", ("checkpoint={w}/truncated", "prompt=x"),
         "the file is truncated or damaged; copy the checkpoint again or use another one"),
    Case("sample-corrupt-model-json", "sample", ("checkpoint={w}/bad_json", "prompt=x"), "corrupt "),
    Case("sample-missing-weights", "sample", ("checkpoint={w}/no_weights", "prompt=x"), "model.safetensors is missing"),
    Case("sample-top-p-zero", "sample", (*SAMPLE, "top_p=0"), "top_p=0.0 must be in (0, 1]; 1.0 switches it off"),
    Case("sample-negative-temperature", "sample", (*SAMPLE, "temperature=-1"), "temperature=-1.0 must be >= 0"),
    Case("sample-zero-beams", "sample", (*SAMPLE, "num_beams=0"), "num_beams=0 must be >= 1"),
    Case("sample-min-p-above-one", "sample", (*SAMPLE, "min_p=2"), "min_p=2.0 must be in [0, 1]"),
    Case("sample-wrong-type", "sample", (*SAMPLE, "num_samples=abc"), "(set num_samples to a whole number)"),
    Case("sample-max-length-below-prompt", "sample",
         ("checkpoint={w}/ckpt", "prompt=Once upon a time", "max_length=3", "task.max_new_tokens=null"),
         "max_length=3 leaves no room after the prompt of 16 tokens; raise it or set max_new_tokens"),
    Case("sample-no-prompt", "sample", ("checkpoint={w}/ckpt",), 'no prompt: pass prompt="..." or prompt_file=<path>'),
    Case("sample-prompt-file-missing", "sample", ("checkpoint={w}/ckpt", "prompt_file={w}/no_prompt.txt"),
         "cannot read prompt_file="),
    Case("sample-prompt-file-not-utf8", "sample", ("checkpoint={w}/ckpt", "prompt_file={w}/corpus/latin1.txt"),
         "pass a readable text file"),
    Case("sample-replay-not-jsonl", "sample", ("replay={w}/corpus/good.txt",),
         "good.txt:1: not a JSON line (Expecting value); replay needs a file written with out="),
    Case("sample-replay-binary", "sample", ("replay={w}/images/logo.png",),
         "logo.png is not UTF-8 text (byte 0); replay needs a JSONL file written with out="),
    Case("sample-out-is-a-directory", "sample", (*SAMPLE, "out={w}/corpus"),
         "corpus' is a directory; pass a file for the records, e.g. out=samples.jsonl"),
    Case("sample-out-under-a-file", "sample", (*SAMPLE, "out={w}/corpus/good.txt/samples.jsonl"),
         "good.txt is a file; choose another path"),
    # python -m train.evaluate
    Case("evaluate-missing-checkpoint", "evaluate", ("checkpoint={w}/no_such_ckpt", "file={w}/corpus/good.txt"),
         "no_such_ckpt' does not exist; pass a run or checkpoint directory", subprocess=True),
    Case("evaluate-truncated-weights", "evaluate", ("checkpoint={w}/truncated", "file={w}/corpus/good.txt"),
         "the file is truncated or damaged; copy the checkpoint again or use another one"),
    Case("evaluate-missing-file", "evaluate", ("checkpoint={w}/ckpt", "file={w}/corpus/missing.txt"),
         "missing.txt' does not exist; pass a text file to score"),
    Case("evaluate-empty-file", "evaluate", ("checkpoint={w}/ckpt", "file={w}/corpus/empty.txt"),
         "empty.txt' is empty; pass a file with text to score"),
    Case("evaluate-not-prepared-data", "evaluate", ("checkpoint={w}/ckpt", "data={w}/corpus"),
         "corpus is not a prepared dataset (no meta.json); run python -m data.prepare data=<name>"),
    Case("evaluate-data-and-file", "evaluate", (*EVALUATE, "data={w}/cache"),
         "both data= and file= given: pass either data=<prepared dataset dir> or file=<text file>"),
    Case("evaluate-nothing-to-score", "evaluate", ("checkpoint={w}/ckpt",),
         "nothing to score: pass either data=<prepared dataset dir> or file=<text file>"),
    Case("evaluate-stride-too-large", "evaluate", (*EVALUATE, "stride=64"),
         "stride=64 must be in [1, block_size=32] (the checkpoint's context)"),
    Case("evaluate-unknown-key", "evaluate", (*EVALUATE, "strid=4"), "(did you mean stride?)"),
    # python -m model.export
    Case("export-missing-checkpoint", "export", ("checkpoint={w}/no_such_ckpt", "out={w}/hf_new"),
         "no_such_ckpt' does not exist", subprocess=True),
    Case("export-out-not-empty", "export", ("checkpoint={w}/ckpt", "out={w}/hf_existing"),
         "hf_existing' is not empty; pass overwrite=true to replace it"),
    Case("export-truncated-weights", "export", ("checkpoint={w}/truncated", "out={w}/hf_new"),
         "truncated/model.safetensors (Error while deserializing header"),
    Case("export-out-under-a-file", "export", ("checkpoint={w}/ckpt", "out={w}/corpus/good.txt/hf"),
         "choose a directory you can write to"),
    Case("export-unknown-argument", "export", ("checkpoint={w}/ckpt", "outt={w}/hf_new"),
         "'outt' not in 'ExportConfig' (did you mean out?)"),
    # seeds: every seed of every config is a whole number in [0, 2**63), refused before anything runs
    Case("prepare-seed-too-large", "prepare",
         (*PREPARE, "data.paths=[{w}/corpus/good.txt]", "data.split_seed=99999999999999999999"),
         "data.split_seed=99999999999999999999 is out of range; a seed must be between 0 and 2**63 - 1"),
    Case("train-seed-too-large", "train", (*TRAIN, "trainer.seed=99999999999999999999"),
         "trainer.seed=99999999999999999999 is out of range; a seed must be between 0 and 2**63 - 1", subprocess=True),
    Case("train-negative-seed", "train", (*TRAIN, "trainer.seed=-1"), "trainer.seed=-1 is out of range"),
    Case("train-seed-just-too-large", "train", (*TRAIN, "trainer.seed=9223372036854775808"),
         "trainer.seed=9223372036854775808 is out of range"),
    Case("train-negative-samples-seed", "train", (*TRAIN, "samples.seed=-5"), "samples.seed=-5 is out of range"),
    Case("train-data-seed-too-large", "train", (*TRAIN, "data.split_seed=18446744073709551616"),
         "data.split_seed=18446744073709551616 is out of range"),
    Case("sample-seed-too-large", "sample", (*SAMPLE, "seed=99999999999999999999"),
         "seed=99999999999999999999 is out of range; a seed must be between 0 and 2**63 - 1"),
    Case("sample-negative-seed", "sample", (*SAMPLE, "seed=-1"), "seed=-1 is out of range"),
    # non-finite numbers: nan and inf pass every range check (comparisons with nan are false); refused by name
    Case("train-lr-inf", "train", (*TRAIN, "optim.lr=inf"), "optim.lr=inf must be a finite number", subprocess=True),
    Case("train-lr-nan", "train", (*TRAIN, "optim.lr=nan"), "optim.lr=nan must be a finite number"),
    Case("train-lr-overflows-to-inf", "train", (*TRAIN, "optim.lr=1e400"), "optim.lr=inf must be a finite number"),
    Case("train-beta1-nan", "train", (*TRAIN, "optim.beta1=nan"), "optim.beta1=nan must be a finite number"),
    Case("train-beta2-one", "train", (*TRAIN, "optim.beta2=1"), "optim.beta2=1.0 must be in [0, 1)"),
    Case("train-eps-zero", "train", (*TRAIN, "optim.eps=0"), "optim.eps=0.0 must be > 0"),
    Case("train-weight-decay-minus-inf", "train", (*TRAIN, "optim.weight_decay=-inf"),
         "optim.weight_decay=-inf must be a finite number"),
    Case("train-negative-weight-decay", "train", (*TRAIN, "optim.weight_decay=-0.1"),
         "optim.weight_decay=-0.1 must be >= 0"),
    Case("train-grad-clip-nan", "train", (*TRAIN, "optim.grad_clip=nan"),
         "optim.grad_clip=nan must be a finite number"),
    Case("train-momentum-inf", "train", (*TRAIN, "optim=muon", "optim.momentum=inf"),
         "optim.momentum=inf must be a finite number"),
    Case("train-min-lr-ratio-nan", "train", (*TRAIN, "schedule.min_lr_ratio=nan"),
         "schedule.min_lr_ratio=nan must be a finite number"),
    Case("train-warmup-inf", "train", (*TRAIN, "schedule.warmup_steps=inf"),
         "(set schedule.warmup_steps to a whole number)"),
    Case("train-max-time-inf", "train", (*TRAIN, "trainer.max_time=inf"),
         "trainer.max_time=inf must be a finite number"),
    Case("train-dropout-nan", "train", (*TRAIN, "model.dropout=nan"), "model.dropout=nan "),
    Case("train-samples-temperature-nan", "train", (*TRAIN, "samples.temperature=nan"),
         "samples.temperature=nan must be a finite number"),
    Case("train-samples-beyond-the-task", "train", (*TRAIN, "samples.max_new_tokens=2", "task.min_new_tokens=5"),
         "the samples' decoding (samples.* over task=story): min_new_tokens=5 > max_new_tokens=2"),
    Case("train-task-temperature-inf", "train", (*TRAIN, "task.temperature=inf"),
         "task.temperature=inf must be a finite number"),
    Case("sample-temperature-nan", "sample", (*SAMPLE, "temperature=nan"), "temperature=nan must be a finite number"),
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Corpora, checkpoints (good, truncated, without weights, corrupt model.json), a prepared dataset, a run with
    a checkpoint of another architecture than debug=default's, and a non-empty export folder."""
    w = tmp_path_factory.mktemp("world")
    corpus = w / "corpus"
    corpus.mkdir()
    zen = zen_of_python(w).read_text()
    (corpus / "good.txt").write_text(zen * 3)
    (corpus / "short.txt").write_text("tiny corpus\n")
    (corpus / "empty.txt").write_text("")
    (corpus / "nul.txt").write_bytes(b"text\0with\0null bytes\n" * 4)
    (corpus / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (corpus / "docs.jsonl").write_text('{"body": "a document"}\n')
    (corpus / "no_target.jsonl").write_text('{"input": "a", "target": "b"}\n{"input": "c"}\n')
    (corpus / "malformed.jsonl").write_text('{"input": "a", "target": "b"}\n{"input": "c", target\n')
    (corpus / "one_pair.jsonl").write_text('{"input": "a", "target": "b"}\n')
    (w / "images").mkdir()
    (w / "images" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))

    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=257))
    ckpt = save_model(model, w / "ckpt", tokenizer_spec=get_tokenizer("byte").spec(), meta={"step": 10})
    for name in ("truncated", "no_weights", "bad_json"):
        shutil.copytree(ckpt, w / name)
    weights = (ckpt / "model.safetensors").read_bytes()
    (w / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (w / "no_weights" / "model.safetensors").unlink()
    (w / "bad_json" / "model.json").write_text('{"format": "nanoloom-model", "kind":')

    run = w / "runs" / "existing"
    shutil.copytree(ckpt, run / "checkpoints" / "step_0000010")
    (run / "checkpoints" / "latest").write_text("step_0000010\n")
    (run / "config.yaml").write_text("run_name: existing\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/loss": 5.0}) + "\n")

    prepare(compose_train([a.format(w=w) for a in TRAIN]).data, w / "cache", progress=False)  # the one train uses
    (w / "hf_existing").mkdir()
    (w / "hf_existing" / "notes.txt").write_text("keep me\n")
    return w


MODULES = {"prepare": "data.prepare", "train": "train", "sample": "sample", "evaluate": "train.evaluate",
           "export": "model.export"}  # fmt: skip


def run_subprocess(cli: str, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit status, stderr) of `python -m <cli> args` from the repository root."""
    env = {**os.environ, "NANOLOOM_DEBUG": "0", "HYDRA_FULL_ERROR": "0", **(env or {})}
    cmd = [sys.executable, "-m", MODULES[cli], *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_error_line(case: Case, world: Path, monkeypatch, capsys):
    monkeypatch.delenv("NANOLOOM_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    args = [a.format(w=world) for a in case.args]
    before = snapshot(world)
    code, err = run_subprocess(case.cli, args) if case.subprocess else run_cli(case.cli, args, monkeypatch, capsys)
    assert code == case.code, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.message in lines[0], lines[0]
    after = snapshot(world)
    changed = sorted(p for p in before if after.get(p) != before[p])
    assert not changed, f"changed or removed: {changed}"
    added = sorted(p for p in after.keys() - before.keys() if not p.startswith("cache/"))  # cache: data prepared
    assert not added, f"left behind: {added}"


def test_the_table_covers_every_command_line():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    assert {c.cli for c in CASES} == set(MODULES) and {c.cli for c in CASES if c.subprocess} == set(MODULES)


@pytest.mark.parametrize(
    "cli, args, env",
    [
        ("sample", ("checkpoint={w}/truncated", "prompt=x"), {"NANOLOOM_DEBUG": "1"}),
        ("train", (*TRAIN, "init_from={w}/truncated", "run_name=debugged"), {"NANOLOOM_DEBUG": "1"}),
        ("train", (*TRAIN, "model.n_layer=0", "run_name=debugged"), {"HYDRA_FULL_ERROR": "1"}),
    ],
    ids=["sample", "train-run-time", "train-hydra-full-error"],
)
@pytest.mark.slow
def test_debug_switch_shows_the_traceback(world: Path, cli: str, args: tuple[str, ...], env: dict[str, str]):
    code, err = run_subprocess(cli, [a.format(w=world) for a in args], env)
    assert code not in (0, 2) and "Traceback (most recent call last)" in err, err
    assert not (world / "runs" / "debugged").exists()  # the failed run's directory is removed all the same


@pytest.mark.parametrize(
    "cli, args",
    [
        ("prepare", (*PREPARE, "data.paths=[{w}/corpus/nul.txt]")),
        ("export", ("checkpoint={w}/truncated", "out={w}/hf_new")),
        ("sample", (*SAMPLE, "top_p=0")),
        ("evaluate", (*EVALUATE, "stride=64")),
        ("train", (*TRAIN, "model.n_layer=abc")),
    ],
    ids=["prepare", "export", "sample", "evaluate", "train-compose"],
)
def test_debug_switch_raises_in_process(world: Path, cli: str, args: tuple[str, ...], monkeypatch, capsys):
    """The error propagates; inside @hydra.main (prepare's run), Hydra prints its traceback and exits with 1."""
    try:
        code, err = run_cli(cli, [a.format(w=world) for a in args], monkeypatch, capsys, env={"NANOLOOM_DEBUG": "1"})
    except Exception:
        code, err = None, capsys.readouterr().err
    assert code is None or (code == 1 and "Traceback (most recent call last)" in err), err
    assert "error: " not in err


def test_long_prompt_is_cropped_not_refused(world: Path, monkeypatch, capsys):
    """Kept as it was (tests/test_sample_cli.py): a GPT prompt longer than the context keeps its last tokens."""
    code, err = run_cli("sample", [f"checkpoint={world}/ckpt", f"prompt={'a' * 40}", "max_new_tokens=2"],
                        monkeypatch, capsys)  # fmt: skip
    assert code == 0 and "warning: prompt of 40 tokens" in err and "error" not in err


def test_the_world_checkpoint_is_valid(world: Path):
    """The cases' damaged checkpoints are copies of this one, which loads."""
    from model.checkpoint import load_model

    model, tokenizer = load_model(world / "ckpt")
    assert isinstance(model, GPT) and model.config.block_size == 32 and tokenizer.vocab_size == 257


@pytest.mark.parametrize("content", [b'{"cpu:torch.float32:1threads": 1.5e1', b"\xff\xfe", b"[1, 2]", b""],
                         ids=["torn", "binary", "not-an-object", "empty"])  # fmt: skip
def test_damaged_peak_flops_cache_is_one_warning_and_rewritten_whole(tmp_path: Path, content: bytes, monkeypatch,
                                                                      capsys):  # fmt: skip
    """The measured peak MFU divides by: a damaged cache is measured again with one warning (not a JSON decoder
    message at every start), and rewritten atomically, so the next start reads it silently."""
    import torch

    from train import perf as device_module

    monkeypatch.setattr(device_module, "measure_peak", lambda device, dtype: (1.25e9, True))
    cache = tmp_path / "peak_flops.json"
    cache.write_bytes(content)
    assert device_module.peak_flops(torch.device("cpu"), torch.float32, tmp_path) == 1.25e9
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ignoring the damaged peak FLOP/s cache"), err
    assert list(json.loads(cache.read_text()).values()) == [1.25e9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peak_flops.json"]  # no temp file left
    monkeypatch.setattr(device_module, "measure_peak", lambda device, dtype: pytest.fail("measured twice"))
    assert device_module.peak_flops(torch.device("cpu"), torch.float32, tmp_path) == 1.25e9
    assert capsys.readouterr().err == ""
