"""Writes that fail and reads that would hang: a full disk while appending sample records, exporting or preparing
data leaves every existing file as it was and says which file in one `error:` line; a line torn by an interrupted
append is skipped by replay; named pipes among the data paths are skipped or refused instead of read; the temp dirs
of a killed preparation or export are removed by the next one, and those of a running one are kept.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from train_helpers import run_sample_main

import data.prepare as prep
import model.export as export
from data.config import DataConfig
from data.corpora import text_files
from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import save_model
from nanoloom.files import host_name
from train import evaluate

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need os.mkfifo")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=257))
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "ckpt", get_tokenizer("byte").spec())


def corpus(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "a.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 8)
    return directory


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[Path]:
    """A named pipe at path. Should the code under test open it to read (and so wait for a writer forever), a
    writer thread lets the read end at once, so the test fails instead of hanging."""
    os.mkfifo(path)
    writer = threading.Thread(target=lambda: open(path, "wb").close(), daemon=True)
    writer.start()
    try:
        yield path
    finally:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer finish if nobody read
        writer.join(timeout=10)
        os.close(reader)


# -- a full disk ----------------------------------------------------------------------------------------------------


def full_disk_for(monkeypatch, target: Path) -> None:
    """Writes into `target` run out of space: half the bytes reach the file, then ENOSPC."""
    real = os.write

    def write(fd: int, data: bytes) -> int:
        if target.exists() and os.path.samestat(os.fstat(fd), os.stat(target)):
            real(fd, bytes(data[: len(data) // 2]))
            raise ENOSPC
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("existing", [True, False], ids=["existing-file", "new-file"])
def test_full_disk_while_appending_samples_leaves_the_file_as_it_was(
    capsys, monkeypatch, tmp_path, checkpoint, existing
):
    out = tmp_path / "samples.jsonl"
    args = (f"checkpoint={checkpoint}", "prompt=ab", "max_new_tokens=4", "seed=1", f"out={out}")
    if existing:
        assert run_sample_main(capsys, *args)[0] == 0
    before = out.read_bytes() if existing else None
    with monkeypatch.context() as m:
        full_disk_for(m, out)
        code, printed, err = run_sample_main(capsys, *args)
    assert code == 2 and printed.startswith("--- sample 1/1 ---")  # the samples are printed before the write
    assert err.splitlines()[-1] == (
        f"error: cannot write the sample records to out='{out}': No space left on device; the file is unchanged "
        "(the samples are printed above)"
    )
    assert err.count("error:") == 1 and "Traceback" not in err
    assert (out.read_bytes() if existing else out.exists()) == (before if existing else False)


@pytest.mark.parametrize("cut", ["mid-line", "mid-character"])
def test_replay_skips_a_torn_last_line_and_the_next_append_cuts_it(capsys, tmp_path, checkpoint, cut):
    out = tmp_path / "samples.jsonl"
    args = (f"checkpoint={checkpoint}", "prompt=café", "max_new_tokens=4", "num_samples=2", "seed=1", f"out={out}")
    assert run_sample_main(capsys, *args)[0] == 0
    good = out.read_bytes()
    line = good.splitlines()[0]
    at = line.index("é".encode()) + 1 if cut == "mid-character" else len(line) // 2
    out.write_bytes(good + line[:at])  # a third record, cut short by a kill (or a full disk before this version)
    code, _, err = run_sample_main(capsys, f"replay={out}")
    assert code == 0 and "replayed 2 sample(s)" in err and "2 reproduced exactly" in err
    assert f"warning: {out}:3: skipped its last line, torn by an interrupted write" in err
    code, _, err = run_sample_main(capsys, *args)  # appending again: the torn line goes first
    assert code == 0 and f"warning: {out}: cut its last line, torn by an interrupted write" in err
    assert out.read_bytes().startswith(good) and len([json.loads(x) for x in out.read_text().splitlines()]) == 4


def test_a_torn_line_before_the_last_is_still_an_error(capsys, tmp_path, checkpoint):
    out = tmp_path / "samples.jsonl"
    assert run_sample_main(capsys, f"checkpoint={checkpoint}", "prompt=ab", "max_new_tokens=4", f"out={out}")[0] == 0
    good = out.read_text()
    out.write_text(good[: len(good) // 2] + "\n" + good)
    code, _, err = run_sample_main(capsys, f"replay={out}")
    assert code == 2 and err.startswith(f"error: {out}:1: not a JSON line") and err.count("\n") == 1


def safetensors_full(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"\0" * 100)  # part of the file made it to disk
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("where", ["model.safetensors", "config.json"])
def test_export_onto_a_full_disk_writes_nothing_and_names_the_folder(capsys, monkeypatch, tmp_path, checkpoint, where):
    out = tmp_path / "exports" / "hf"
    real_write_text = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name == where:
            real_write_text(self, text[:10], *args, **kwargs)
            raise ENOSPC
        return real_write_text(self, text, *args, **kwargs)

    def failing_export(*args: str) -> str:
        with monkeypatch.context() as m:
            if where == "model.safetensors":
                m.setattr(export, "save_file", safetensors_full)
            else:
                m.setattr(Path, "write_text", write_text)
            with pytest.raises(SystemExit) as e:
                export.main([f"checkpoint={checkpoint}", f"out={out}", *args])
            assert e.value.code == 2
        return capsys.readouterr().err

    err = failing_export()
    assert err == (
        f"error: cannot write out='{out}': No space left on device; nothing was written: free space or choose "
        "another disk\n"
    )
    assert not out.exists() and hidden(out.parent) == []  # no partial export, no temp dir
    export.main([f"checkpoint={checkpoint}", f"out={out}"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = failing_export("overwrite=true")
    assert f"{out} is as it was: free space or choose another disk" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and hidden(out.parent) == []


def test_prepare_onto_a_full_disk_keeps_nothing_and_names_the_dataset(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    cfg = DataConfig(name="t", corpora=["text"], paths=[str(corpus(tmp_path / "corpus"))], tokenizer="byte")

    def write_tokens(path: Path, *args, **kwargs) -> int:
        path.write_bytes(b"\0" * 100)
        raise ENOSPC

    monkeypatch.setattr(prep, "write_tokens", write_tokens)
    with pytest.raises(ValueError) as caught:
        prep.prepare(cfg, cache, progress=False)
    final = cache / prep.dataset_name(cfg, prep.fingerprint(cfg, prep.source_hashes(cfg)))
    assert str(caught.value) == (
        f"cannot write the prepared dataset {final}: No space left on device; nothing of it was kept. Free space, "
        "or set paths.cache_dir to a disk with room"
    )
    assert list(cache.iterdir()) == []


def test_evaluate_out_onto_a_full_disk_names_the_file(capsys, monkeypatch, tmp_path, checkpoint):
    text, out = tmp_path / "story.txt", tmp_path / "eval.json"
    text.write_text("Once upon a time there was a fox.\n")
    out.write_text("an earlier result\n")

    def write_text_atomic(path, text):
        raise ENOSPC

    monkeypatch.setattr(evaluate, "write_text_atomic", write_text_atomic)
    with pytest.raises(SystemExit) as caught:
        evaluate.main([f"checkpoint={checkpoint}", f"file={text}", f"out={out}", "device=cpu", "dtype=float32"])
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err == f"error: cannot write out='{out}': No space left on device; the file is unchanged\n"
    assert out.read_text() == "an earlier result\n"


# -- named pipes ----------------------------------------------------------------------------------------------------


@needs_fifo
def test_a_named_pipe_inside_a_data_directory_is_skipped_with_a_warning(tmp_path):
    data = corpus(tmp_path / "corpus")
    with fifo(data / "pipe.txt"):
        proc = subprocess.run(
            [sys.executable, "-m", "data.prepare", "data=text", f"data.paths=['{data}']",
             f"paths.cache_dir={tmp_path / 'cache'}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warning = f"warning: data.paths: skipped {data / 'pipe.txt'}: not a regular file (a named pipe, socket or device?)"
    assert proc.stderr.count(warning) == 1 and proc.stdout.startswith("dataset ")


@needs_fifo
def test_a_named_pipe_given_by_name_is_refused(tmp_path):
    with fifo(tmp_path / "pipe.txt") as pipe:
        with pytest.raises(ValueError) as caught:
            text_files(DataConfig(name="t", corpora=["text"], paths=[str(pipe)]))
    assert str(caught.value) == (
        f"data.paths: '{pipe}' is not a regular file (a named pipe, socket or device?); give a file, directory or glob"
    )


@needs_fifo
def test_evaluate_calls_a_named_pipe_not_a_regular_file(capsys, tmp_path):
    with fifo(tmp_path / "pipe.txt") as pipe:
        with pytest.raises(SystemExit) as caught:
            evaluate.main([f"checkpoint={tmp_path}", f"file={pipe}"])
    assert caught.value.code == 2
    assert capsys.readouterr().err == f"error: file='{pipe}' is not a regular file; pass a text file to score\n"


# -- temp dirs of killed processes ----------------------------------------------------------------------------------

KILLED_PREPARE = """
import os, sys
import data.prepare as prep
from data.config import DataConfig
prep._write_json = lambda *args: os.kill(os.getpid(), 9)  # token files written, meta.json not
prep.prepare(DataConfig(name="t", corpora=["text"], paths=[sys.argv[1]], tokenizer="byte"), sys.argv[2], progress=False)
"""
KILLED_EXPORT = """
import os, sys
import model.export as export
export.save_file = lambda *args, **kwargs: os.kill(os.getpid(), 9)  # the temp dir made, the weights not written
export.main([f"checkpoint={sys.argv[1]}", f"out={sys.argv[2]}"])
"""


def killed(script: str, *args: object) -> int:
    """Run a Python script that SIGKILLs itself; its pid."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT)
    assert proc.wait(timeout=120) == -9
    return proc.pid


def others_like(stale: Path, pid: int) -> tuple[Path, Path]:
    """Temp dirs named like a killed process's `stale` one: of this running process, and of another machine."""
    live = stale.with_name(stale.name.replace(f"@{host_name()}-{pid}-", f"@{host_name()}-{os.getpid()}-"))
    elsewhere = stale.with_name(stale.name.replace(f"@{host_name()}-", "@another-host-"))
    for path in (live, elsewhere):
        path.mkdir()
    return live, elsewhere


def test_the_next_prepare_removes_the_temp_dir_of_a_killed_one_and_keeps_a_running_one(tmp_path):
    data, cache = corpus(tmp_path / "corpus"), tmp_path / "cache"
    pid = killed(KILLED_PREPARE, data, cache)
    (stale,) = [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    assert re.fullmatch(rf"\.tmp-t-byte-[0-9a-f]{{12}}@{re.escape(host_name())}-{pid}-[0-9a-f]{{8}}", stale.name)
    live, elsewhere = others_like(stale, pid)
    legacy = cache / f".tmp-t-byte-0123456789ab-{dead_pid()}-89abcdef"  # named before the host was part of it
    legacy.mkdir()
    done = prep.prepare(DataConfig(name="t", corpora=["text"], paths=[str(data)], tokenizer="byte"), cache, False)
    assert sorted(p.name for p in cache.iterdir()) == sorted([done.name, live.name, elsewhere.name])


@pytest.mark.e2e
def test_the_next_export_removes_the_temp_dir_of_a_killed_one_and_keeps_a_running_one(tmp_path, checkpoint):
    exports = tmp_path / "exports"
    pid = killed(KILLED_EXPORT, checkpoint, exports / "first")
    (stale,) = exports.iterdir()
    assert re.fullmatch(rf"\.first\.tmp@{re.escape(host_name())}-{pid}-[a-z0-9_]{{8}}", stale.name)
    live, elsewhere = others_like(stale, pid)
    old, recent = exports / ".first.tmp-abcd1234", exports / ".first.tmp-efgh5678"  # named without host and pid
    old.mkdir()
    recent.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)  # untouched for two days
    export.main([f"checkpoint={checkpoint}", f"out={exports / 'second'}"])
    assert sorted(p.name for p in exports.iterdir()) == sorted(["second", live.name, elsewhere.name, recent.name])


def test_full_disk_while_training_logs_keeps_the_log_whole_and_names_it(tmp_path, monkeypatch):
    from train.config import LoggerConfig
    from train.log import Tracker
    from train.state import CheckpointWriteError

    tracker = Tracker(LoggerConfig(), tmp_path, True, config={}, run_name="r", resume_step=None)
    tracker.log({"train/loss": 2.5}, step=1)
    tracker.log_samples([{"prompt": "Once", "completion": " upon"}], step=1)
    metrics, samples = tmp_path / "metrics.jsonl", tmp_path / "samples.jsonl"
    before = {p: p.read_bytes() for p in (metrics, samples)}
    full_disk_for(monkeypatch, metrics)
    full_disk_for(monkeypatch, samples)
    with pytest.raises(CheckpointWriteError, match=r"cannot append to .*metrics\.jsonl: No space left.*resume=auto"):
        tracker.log({"train/loss": 2.4, "note": "x" * 500}, step=2)
    with pytest.raises(CheckpointWriteError, match=r"samples\.jsonl"):
        tracker.log_samples([{"prompt": "Once", "completion": " upon a time" * 50}], step=2)
    assert {p: p.read_bytes() for p in (metrics, samples)} == before  # no torn line
    monkeypatch.undo()
    tracker.log({"train/loss": 2.4}, step=2)  # space again: the log goes on
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]
