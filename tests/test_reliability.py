"""Training reliability under injected faults: SIGKILL anywhere, non-finite values, a full disk, a second process on
the same run directory, CUDA out-of-memory, resumes with changed settings, best-checkpoint pruning, escaping paths.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import compose_train, lock_holder, losses, tiny_run_overrides, zen_of_python

from model import GPT, GPTConfig
from model.checkpoint import load_model, resolve_checkpoint, save_model
from train import loop, periodic
from train.config import TrainerConfig
from train.log import Tracker
from train.optim import get_lr
from train.state import CheckpointWriteError, check_compatible, lock_run_dir, prune_checkpoints, remove_leftovers

ROOT = Path(__file__).resolve().parents[1]
FAST = {"samples.prompts": "[]", "model.dropout": 0.1}  # no completions; dropout on, so RNG restores are tested


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())


def pointer(run_dir: Path, name: str = "latest") -> str | None:
    file = run_dir / "checkpoints" / name
    return file.read_text().strip() if file.exists() else None


# -- 1. SIGKILL anywhere: resume=auto continues from the last complete checkpoint, bit-exactly ---------------------

FAULTS = {  # NANOLOOM_FAULT -> what `latest` names after the kill (saves at steps 4 and 8 of 8)
    "kill_in_step:6": "step_0000004",  # between checkpoints: gradients of step 6 computed, weights not updated
    "kill_during_save:4": None,  # the first checkpoint half written: nothing to resume, start over
    "kill_during_save:8": "step_0000004",  # model files of step 8 written, train_state.pt not
    "kill_before_latest:8": "step_0000004",  # step_0000008 complete, `latest` not yet updated
}


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """An uninterrupted run, and `python -m train` runs SIGKILLed at each fault point (all four run at once)."""
    tmp = tmp_path_factory.mktemp("killed")
    corpus = zen_of_python(tmp)
    loop.run(compose_train(tiny_run_overrides(tmp, corpus, "straight", **FAST)))  # also prepares the data cache
    procs = {}
    for i, fault in enumerate(FAULTS):
        overrides = tiny_run_overrides(tmp, corpus, f"killed{i}", **FAST, **{"paths.runs_dir": str(tmp)})
        procs[fault] = subprocess.Popen(
            [sys.executable, "-m", "train", *overrides],
            cwd=ROOT,
            env={**os.environ, "NANOLOOM_FAULT": fault},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    for fault, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"{fault}: exit {proc.returncode}\n{err}"
    return tmp, {fault: tmp / f"killed{i}" for i, fault in enumerate(FAULTS)}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_sigkill_then_resume_matches_an_uninterrupted_run(killed_runs, fault):
    tmp, runs = killed_runs
    run_dir = runs[fault]
    assert pointer(run_dir) == FAULTS[fault]
    leftovers = list((run_dir / "checkpoints").glob(".step_*"))
    if fault.startswith("kill_during_save"):  # the half-written temp directory is there, never named by latest
        assert len(leftovers) == 1 and not (leftovers[0] / "train_state.pt").exists()
    if fault == "kill_before_latest:8":
        assert (run_dir / "checkpoints" / "step_0000008" / "train_state.pt").is_file()

    corpus = tmp / "zen.txt"
    loop.run(compose_train([*tiny_run_overrides(tmp, corpus, run_dir.name, **FAST), "resume=auto"]))
    straight, resumed = losses(tmp / "straight"), losses(run_dir)
    assert resumed == straight  # every step 1..8, bit-identical (logged losses of the killed steps were dropped)
    assert not list((run_dir / "checkpoints").glob(".*"))  # temp directories and files cleaned
    assert not (run_dir / ".lock").exists()  # the killed process's lock was free; this run released its own
    a, _ = load_model(tmp / "straight")
    b, _ = load_model(run_dir)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
    lines = [json.dumps({"step": 1, "train/loss": 5.0}), json.dumps({"step": 2, "train/loss": 4.0}), '{"step": 3, "tr']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    from train.config import LoggerConfig

    Tracker(LoggerConfig(), tmp_path, True, config={}, run_name="r", resume_step=2).close()
    assert [r["step"] for r in records(tmp_path)] == [1, 2]
    Tracker(LoggerConfig(), tmp_path, True, config={}, run_name="r", resume_step=None).close()  # a fresh start
    assert records(tmp_path) == []


# -- 2. Non-finite values -------------------------------------------------------------------------------------------


def _poison_step(monkeypatch, step: int, what: str) -> None:
    """At optimizer step `step` (1-based), make the loss NaN ("loss") or a weight NaN after backward ("weights")."""
    real, calls = loop.forward_backward, {"n": 0}

    def poisoned(model, *args, **kwargs):
        calls["n"] += 1
        loss, flops = real(model, *args, **kwargs)
        if calls["n"] == step and what == "loss":
            return loss * float("nan"), flops
        if calls["n"] == step and what == "weights":
            with torch.no_grad():
                next(model.parameters())[0, 0] = float("nan")  # gradients stay finite: the guard lets it through
        return loss, flops

    monkeypatch.setattr(loop, "forward_backward", poisoned)


@pytest.mark.e2e
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 6, "loss")
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **FAST, **{"trainer.save_interval": 2})
    with pytest.raises(
        FloatingPointError, match="non-finite loss or gradient at step 5; the last checkpoint is intact"
    ):
        loop.run(compose_train(overrides))
    run_dir = tmp_path / "run"
    assert pointer(run_dir) == "step_0000004" and checkpoint_names(run_dir) == ["step_0000002", "step_0000004"]
    state = torch.load(run_dir / "checkpoints" / "step_0000004" / "train_state.pt", weights_only=True)
    assert state["state"]["step"] == 4
    model, _ = load_model(run_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.e2e
def test_nonfinite_weights_are_never_saved(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 4, "weights")  # finite loss and gradients, NaN weights after step 4
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **FAST, **{"trainer.save_interval": 2})
    with pytest.raises(FloatingPointError, match="non-finite values at step 4: not saving them"):
        loop.run(compose_train(overrides))
    assert pointer(tmp_path / "run") == "step_0000002" and checkpoint_names(tmp_path / "run") == ["step_0000002"]
    model, _ = load_model(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.e2e
def test_nonfinite_skip_counts_skipped_steps_in_metrics(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 3, "loss")
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **FAST, **{"trainer.nonfinite": "skip"})
    assert loop.run(compose_train(overrides))["step"] == 8  # the skipped step is retried on the next batches
    recs = records(tmp_path / "run")
    assert [r["train/skipped_steps"] for r in recs if "train/loss" in r] == [0, 0] + [1] * 6
    assert [(r["step"], r["train/skipped_steps"]) for r in recs if r.get("event") == "nonfinite_skipped"] == [(2, 1)]


def test_a_fused_adamw_skips_on_the_device_and_leaves_weights_and_moments_alone():
    """DeviceSkips with the fused AdamW (the CUDA default; fused runs on the CPU too): a step armed with a false flag
    changes nothing (weights, moments, step count), a true one updates as usual; the skips are read once."""
    from train.optim import DeviceSkips

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    assert DeviceSkips.supported(optimizer, None) and not DeviceSkips.supported(optimizer, object())
    assert not DeviceSkips.supported(torch.optim.AdamW(model.parameters(), foreach=True), None)
    skips = DeviceSkips(torch.device("cpu"))

    def step(ok: bool, at: int) -> None:
        model(torch.ones(2, 4)).sum().backward()
        skips.arm(optimizer, torch.tensor(ok), at)
        optimizer.step()
        optimizer.zero_grad()

    step(True, 0)
    snapshot = lambda: [t.clone() for t in (*model.parameters(), *optimizer.state[model.weight].values())]  # noqa: E731
    before = snapshot()
    step(False, 1)
    step(False, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot()))  # weights, exp_avg(_sq) and step untouched
    assert skips.read() == (2, 1) and skips.read() == (0, -1)
    step(True, 3)
    assert not torch.equal(before[0], model.weight)


@pytest.mark.e2e
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_fused_optimizer_checks_finiteness_without_a_host_sync_per_step(tmp_path, monkeypatch, policy):
    """optim.fused=true: a non-finite step is skipped by the optimizer on the device (the host-side skip path is
    never taken) and reported at the next log or save step; stop still keeps the last good checkpoint."""
    _poison_step(monkeypatch, 3, "loss")
    monkeypatch.setattr(loop, "skip_step", lambda *a: pytest.fail("the host-side non-finite path was taken"))
    extra = {"optim.fused": "true", "trainer.nonfinite": policy, "trainer.log_interval": 4, "trainer.save_interval": 2}
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **FAST, **extra)
    if policy == "stop":
        with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step 2; the last checkpoint"):
            loop.run(compose_train(overrides))
        # read at the save of step 4 (before writing it): the checkpoint of step 2 stays the last
        assert checkpoint_names(tmp_path / "run") == ["step_0000002"]
        return
    assert loop.run(compose_train(overrides))["step"] == 8  # the skipped step counts as a step, as with fp16
    recs = records(tmp_path / "run")
    assert [(r["step"], r["train/skipped_steps"]) for r in recs if "train/loss" in r] == [(4, 1), (8, 1)]
    assert all(math.isfinite(r["train/loss"]) for r in recs if "train/loss" in r)  # the skipped loss is left out
    assert [(r["step"], r["train/skipped_steps"]) for r in recs if r.get("event") == "nonfinite_skipped"] == [(4, 1)]
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_0000008" / "train_state.pt", weights_only=True)
    assert state["state"]["skipped_steps"] == 1


def test_a_skipped_fp16_step_closes_the_grad_scalers_step(monkeypatch):
    """fp16 + nonfinite=skip: the skipped step's unscale_() must be closed by update(), or the next step's unscale_()
    raises "unscale_() has already been called". A CPU GradScaler runs the same bookkeeping as a CUDA one."""
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    x = torch.ones(2, 4)

    scaler.scale(model(x).sum() * float("inf")).backward()  # an overflowing step
    scaler.unscale_(optimizer)
    loop.skip_step(optimizer, scaler)
    assert scaler.get_scale() == 2.0**15 and all(p.grad is None for p in model.parameters())

    before = model.weight.detach().clone()
    scaler.scale(model(x).sum()).backward()  # the next step runs as usual
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(model.weight, before)


# -- 3. Disk full while saving ------------------------------------------------------------------------------------


class SafetensorError(Exception):
    """What safetensors raises for a failed write: the OS error only in its message."""


def _disk_full_at_step_8(monkeypatch, where: str) -> None:
    """ENOSPC while step 8's checkpoint is written, raised the way each writer reports it."""
    from train import state

    real_save, real_write_model_files = torch.save, state.write_model_files

    def torch_save(obj, f, *args, **kwargs):
        if "step_0000008" in f.name:
            f.write(b"\0" * 100)  # part of the file made it to disk
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:  # torch.save's zip writer then fails on its own
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
        return real_save(obj, f, *args, **kwargs)

    def write_model_files(model, directory, *args, **kwargs):
        if "step_0000008" in str(directory):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_write_model_files(model, directory, *args, **kwargs)

    if where == "train_state.pt":
        monkeypatch.setattr(torch, "save", torch_save)
    else:
        monkeypatch.setattr(state, "write_model_files", write_model_files)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["train_state.pt", "model.safetensors"])
def test_disk_full_while_saving_stops_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **FAST)
    with monkeypatch.context() as m:
        _disk_full_at_step_8(m, where)
        with pytest.raises(CheckpointWriteError) as caught:
            loop.run(compose_train(overrides))
    message, ckpts = str(caught.value), tmp_path / "run" / "checkpoints"
    assert "\n" not in message and message.startswith(f"cannot save checkpoint {ckpts / 'step_0000008'}: ")
    assert "no space left on device; the previous checkpoint step_0000004 is intact" in message
    assert "Free space or lower trainer.keep_last (now 2), then continue with resume=auto" in message
    assert pointer(tmp_path / "run") == "step_0000004" and checkpoint_names(tmp_path / "run") == ["step_0000004"]
    assert not list(ckpts.glob(".*")) and not (tmp_path / "run" / ".lock").exists()
    assert loop.run(compose_train([*overrides, "resume=auto"]))["step"] == 8  # space freed: the run continues


def test_a_replacement_killed_between_its_renames_is_undone(tmp_path):
    """atomic_directory replaces an existing checkpoint by moving it aside first; a kill right then is repaired."""
    ckpts = tmp_path / "checkpoints"
    (ckpts / ".step_0000002.old-4242").mkdir(parents=True)
    (ckpts / ".step_0000002.old-4242" / "model.json").write_text("{}")
    (ckpts / ".step_0000004.tmp-abc").mkdir()
    (ckpts / "latest").write_text("step_0000002\n")
    remove_leftovers(ckpts)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_0000002"]
    assert (ckpts / "step_0000002" / "model.json").is_file()


# -- 4. One training process per run directory ---------------------------------------------------------------------


@pytest.mark.e2e
def test_run_dir_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path):
    run_dir = tmp_path / "run"
    with lock_holder(run_dir) as holder:  # SIGKILLed after the body: no cleanup runs, the lock file stays behind
        overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **FAST)
        with pytest.raises(ValueError, match=rf"{run_dir} is in use by another training process \(pid {holder.pid}\)"):
            loop.run(compose_train(overrides))
        assert not (run_dir / "checkpoints").exists()  # refused before writing anything
    assert (run_dir / ".lock").exists()
    with lock_run_dir(run_dir):  # ... but the OS released the lock with the process
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())
    assert not (run_dir / ".lock").exists()


# -- 5. CUDA out-of-memory: halve the micro-batch, keep the data -----------------------------------------------------


def _oom_at(monkeypatch, forward_calls: set[int]) -> None:
    """Raise torch.OutOfMemoryError from the model's n-th training forward, for each n in forward_calls."""
    real, calls = GPT.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        if self.training:
            calls["n"] += 1
            if calls["n"] in forward_calls:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", forward)


@pytest.mark.slow
def test_out_of_memory_halves_the_micro_batch_and_keeps_the_results(tmp_path, monkeypatch):
    """batch_size=4, grad_accum=2: out-of-memory in step 1 (its 2nd micro-step) or in step 3 -> micro-batch 2.

    Tolerance: none. The retried step is bit-identical to a run that used micro_batch_size=2 from that step on.
    """
    corpus = zen_of_python(tmp_path)
    accum = {**FAST, "trainer.grad_accum": 2, "trainer.save_interval": 2}
    halved = {**accum, "trainer.micro_batch_size": 2}
    loop.run(compose_train(tiny_run_overrides(tmp_path, corpus, "halved", **halved)))
    with monkeypatch.context() as m:  # the reference for step 3: micro-batch 4 up to step 2, then 2
        m.setattr(loop, "forward_backward_safely", _interrupt_at_step(3))
        with pytest.raises(KeyboardInterrupt):
            loop.run(compose_train(tiny_run_overrides(tmp_path, corpus, "halved_from3", **accum)))
    loop.run(compose_train([*tiny_run_overrides(tmp_path, corpus, "halved_from3", **halved), "resume=auto"]))
    _oom_at(monkeypatch, {2})
    loop.run(compose_train(tiny_run_overrides(tmp_path, corpus, "oom_step1", **accum)))
    _oom_at(monkeypatch, {5})  # step 3's first forward
    loop.run(compose_train(tiny_run_overrides(tmp_path, corpus, "oom_step3", **accum)))

    assert losses(tmp_path / "oom_step1") == losses(tmp_path / "halved")  # dropout masks included
    assert losses(tmp_path / "oom_step3") == losses(tmp_path / "halved_from3")
    recs = records(tmp_path / "oom_step3")
    events = [r for r in recs if r.get("event") == "out_of_memory"]
    assert [(e["step"], e["train/micro_batch"], e["train/micro_steps"]) for e in events] == [(3, 2, 4)]
    assert [r["train/micro_batch"] for r in recs if "train/loss" in r] == [4, 4] + [2] * 6
    state = torch.load(tmp_path / "oom_step3" / "checkpoints" / "step_0000008" / "train_state.pt", weights_only=True)
    assert state["state"]["micro_batch"] == 2 and state["state"]["tokens_seen"] == 8 * 4 * 2 * 32  # a resumed run
    # keeps the smaller micro-batch; the tokens per step never changed


def _interrupt_at_step(step: int):
    real, calls = loop.forward_backward_safely, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return interrupted


def test_out_of_memory_at_one_row_is_refused(tmp_path, monkeypatch):
    _oom_at(monkeypatch, {1})
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **FAST, **{"trainer.batch_size": 1})
    with pytest.raises(torch.OutOfMemoryError, match="out of memory at step 1 with a micro-batch of one row"):
        loop.run(compose_train(overrides))


@pytest.mark.e2e
def test_out_of_memory_copying_weights_for_the_update_ratio_turns_the_metric_off(tmp_path, monkeypatch, capsys):
    """The update/weight ratio copies every weight on log steps, outside the forward/backward OOM retry: an OOM
    there must cost the metric, never the run."""
    from train.optim import UpdateRatio

    made = {"n": 0}

    class Tight(UpdateRatio):
        def __init__(self, params):
            made["n"] += 1
            if made["n"] == 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB")
            super().__init__(params)

    monkeypatch.setattr(loop, "UpdateRatio", Tight)
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **FAST)
    assert loop.run(compose_train(overrides))["step"] == 8
    logged = [r for r in records(tmp_path / "run") if "train/loss" in r]
    assert ["train/update_ratio" in r for r in logged] == [True, True] + [False] * 6 and made["n"] == 3
    assert "trainer.log_update_ratio is now off" in capsys.readouterr().err


def test_micro_batch_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="trainer.micro_batch_size=3 must divide trainer.batch_size=4"):
        TrainerConfig(batch_size=4, micro_batch_size=3)


# -- 6. Resume with changed settings --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_resume_with_changed_lr_and_step_budget_is_logged(tmp_path, capsys):
    corpus = zen_of_python(tmp_path)
    loop.run(compose_train(tiny_run_overrides(tmp_path, corpus, **FAST)))
    changed = {**FAST, "optim.lr": 1e-3, "trainer.max_steps": 12}
    capsys.readouterr()
    loop.run(compose_train([*tiny_run_overrides(tmp_path, corpus, **changed), "resume=auto"]))
    out = capsys.readouterr().out
    assert "resumed at step 8 with changed settings: optim.lr 0.0006 -> 0.001, trainer.max_steps 8 -> 12" in out
    recs = records(tmp_path / "run")
    event = next(r for r in recs if r.get("event") == "resume_changes")
    assert event["changes"] == {"optim.lr": [6e-4, 1e-3], "trainer.max_steps": [8, 12]}
    cfg = compose_train(tiny_run_overrides(tmp_path, corpus, **changed))
    lr9 = next(r["train/lr"] for r in recs if r["step"] == 9 and "train/lr" in r)
    assert lr9 == get_lr(8, 1e-3, 12, cfg.schedule)  # the new values are in effect


def test_resume_refuses_another_tokenizer_naming_the_difference(tmp_path):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=257))
    spec = {"name": "byte", "vocab_size": 257}
    save_model(model, tmp_path / "ckpt", spec)
    with pytest.raises(ValueError, match="different tokenizer \\(name: checkpoint 'byte' vs data 'char'\\)"):
        check_compatible(tmp_path / "ckpt", model.config.to_dict(), {**spec, "name": "char"})
    with pytest.raises(ValueError, match="different model \\(n_layer: checkpoint 1 vs config 2\\)"):
        check_compatible(tmp_path / "ckpt", {**model.config.to_dict(), "n_layer": 2}, spec)


# -- 7. Keep the last K and the best by val loss ----------------------------------------------------------------


@pytest.mark.e2e
def test_pruning_keeps_the_last_k_and_the_best_by_val_loss(tmp_path, monkeypatch):
    scripted = iter([9.0, 3.0, 1.0, 2.0, 4.0, 1.5])  # val loss at steps 0, 2, 4, 6, 8 and the final 10
    monkeypatch.setattr(periodic, "estimate_loss", lambda *a, **k: {"loss": (v := next(scripted)), "ppl": math.exp(v)})
    real_save, after_each_save = periodic.save_checkpoint, []

    def save_and_look(checkpoints_dir, *args, **kwargs):
        path = real_save(checkpoints_dir, *args, **kwargs)
        names = sorted(p.name for p in checkpoints_dir.iterdir() if p.is_dir())
        after_each_save.append((path.name, (checkpoints_dir / "best").read_text().strip(), names))
        return path

    monkeypatch.setattr(periodic, "save_checkpoint", save_and_look)
    steps = {"trainer.max_steps": 10, "trainer.eval_interval": 2, "trainer.save_interval": 2, "trainer.keep_last": 2}
    loop.run(compose_train(tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **FAST, **steps)))
    s = "step_{:07d}".format
    assert after_each_save == [
        (s(2), s(2), [s(2)]),
        (s(4), s(4), [s(2), s(4)]),
        (s(6), s(4), [s(4), s(6)]),
        (s(8), s(4), [s(4), s(6), s(8)]),  # the newest two, and the best
        (s(10), s(4), [s(4), s(8), s(10)]),
    ]
    assert pointer(tmp_path / "run") == s(10)
    meta = json.loads((tmp_path / "run" / "checkpoints" / s(4) / "model.json").read_text())["meta"]
    assert meta["val_loss"] == 1.0 and meta["step"] == 4
    ckpts = tmp_path / "run" / "checkpoints"
    assert resolve_checkpoint(ckpts / "best") == ckpts / s(4)  # a pointer file is a checkpoint path (sample, export)


# -- 8. Paths never lead out of the run directory --------------------------------------------------------------


@pytest.mark.e2e
def test_pointer_leading_out_of_the_run_dir_is_refused(tmp_path):
    corpus = zen_of_python(tmp_path)
    overrides = tiny_run_overrides(tmp_path, corpus, **FAST, **{"trainer.max_steps": 2, "trainer.save_interval": 0})
    loop.run(compose_train(overrides))
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "latest").write_text("../../etc\n")
    with pytest.raises(ValueError, match="names '../../etc', which is not a checkpoint directory inside .*refusing"):
        loop.run(compose_train([*overrides, "resume=auto"]))
    with pytest.raises(ValueError, match="refusing to follow it"):
        load_model(tmp_path / "run")

    # a `best` pointer out of checkpoints/ is ignored by pruning: nothing outside is ever deleted
    victim = tmp_path / "victim"
    victim.mkdir()
    (ckpts / "latest").write_text("step_0000002\n")
    (ckpts / "best").write_text("../../victim\n")
    prune_checkpoints(ckpts, keep_last=1, current="step_0000002")
    assert victim.is_dir() and (ckpts / "step_0000002").is_dir()


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["../../escape", "/tmp/escape", "a/../../b"])
def test_run_name_leading_out_of_runs_dir_is_refused(tmp_path, name):
    overrides = [o for o in tiny_run_overrides(tmp_path, zen_of_python(tmp_path)) if not o.startswith("run_name=")]
    with pytest.raises(ValueError, match="would put the run directory outside paths.runs_dir"):
        loop.run(compose_train([*overrides, f"run_name={name}"]))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("saved", "device", "restored"),
    [
        ("tensor", torch.device("cuda", 0), "tensor"),  # this format: the training GPU's own state
        ("list8", torch.device("cuda", 0), 0),  # an older checkpoint of an 8-GPU node, resumed with one GPU visible
        ("list8", torch.device("cuda", 3), 3),
        ("list1", torch.device("cuda", 2), None),  # saved where one GPU was visible: nothing for GPU 2
        ("tensor", torch.device("cpu"), None),
    ],
)
def test_resume_restores_the_training_gpus_rng_state_whatever_is_visible(monkeypatch, saved, device, restored):
    """A GPU run saves and restores its own device's generator (torch.cuda is mocked: no GPU here); set_rng_state_all
    would fail when fewer GPUs are visible than at saving time."""
    from train.state import rng_state, set_rng_state

    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    mine = torch.full((16,), 42, dtype=torch.uint8)
    asked, set_calls = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: asked.append(d) or mine)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t, d: set_calls.append((t, d)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("every GPU's state"))
    state = rng_state(device)
    assert ("cuda" in state) == (device.type == "cuda") and asked == ([device] if device.type == "cuda" else [])
    if saved != "tensor":
        state["cuda"] = states[: int(saved[4:])]
    set_rng_state(state, device)
    if restored is None:
        assert set_calls == []
    else:
        expected = mine if restored == "tensor" else states[restored]
        assert len(set_calls) == 1 and torch.equal(set_calls[0][0], expected) and set_calls[0][1] == device
