"""A run directory is written only by its own run, and only into files of its own.

1. Links: a file nanoloom appends to, truncates or reads in a run directory (.lock, metrics.jsonl, samples.jsonl,
   wandb_id.txt) is never opened through a symbolic or hard link, files it replaces whole (config.yaml, latest, best,
   plots) replace a link instead of following it, and `latest` / `best` only ever name a checkpoint inside the run.
2. Run names: a run directory is neither paths.runs_dir itself nor inside another run or a checkpoint.
3. Refused launches: nothing is written into a run directory before the run is known to proceed, Hydra's record of
   the launch (.hydra/) included.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from train_helpers import lock_holder, snapshot, tiny_run_overrides, zen_of_python

from model.checkpoint import load_model
from train.__main__ import check_run_dir
from train.plots import save_png
from train.state import lock_run_dir, open_no_follow

ROOT = Path(__file__).resolve().parents[1]
STEP = "step_0000002"
VICTIM_TEXT = "a file of the user's that no run may change\n"


def train_cli(*args: str) -> tuple[int, str]:
    """`python -m train args` in-process (train.__main__.main): (exit status, stderr)."""
    from train.__main__ import main

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["train", *args])
        mp.delenv("NANOLOOM_DEBUG", raising=False)
        mp.delenv("HYDRA_FULL_ERROR", raising=False)
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            GlobalHydra.instance().clear()  # @hydra.main leaves it set up when a run exits early
    return code, err.getvalue()


def run_args(world: Path, run_name: str, **extra: object) -> list[str]:
    """A two-step run under world/runs/<run_name> (Hydra's run directory: paths.run_dir stays null)."""
    settings = {"paths.run_dir": "null", "paths.runs_dir": str(world / "runs"), "samples.prompts": "[]",
                "trainer.max_steps": 2, "trainer.save_interval": 0, "trainer.eval_interval": 2, **extra}  # fmt: skip
    return tiny_run_overrides(world, world / "zen.txt", run_name, **settings)


def one_error_line(code: int, err: str, fragment: str) -> None:
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A corpus, its prepared data, and a finished run runs/done with its checkpoint and .hydra record."""
    w = tmp_path_factory.mktemp("world")
    zen_of_python(w)
    code, err = train_cli(*run_args(w, "done"))
    assert code == 0, err
    assert (w / "runs" / "done" / "checkpoints" / STEP / "model.json").is_file()
    return w


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


# -- 1. Links in a run directory are never followed -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_lock_linked_to_a_victim_is_refused_and_the_victim_kept(tmp_path, victim, kind):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (os.symlink if kind == "symlink" else os.link)(victim, run_dir / ".lock")
    with pytest.raises(ValueError, match="symbolic link" if kind == "symlink" else "other hard link"):
        with lock_run_dir(run_dir):
            pass
    assert victim.read_text() == VICTIM_TEXT and os.path.lexists(run_dir / ".lock")


@pytest.mark.e2e
def test_training_with_a_lock_symlink_is_one_error_line_and_the_victim_kept(world, victim):
    run_dir = world / "runs" / "locklink"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").symlink_to(victim)
    before = snapshot(run_dir)
    code, err = train_cli(*run_args(world, "locklink"))
    one_error_line(code, err, f"{run_dir / '.lock'} is a symbolic link")
    assert victim.read_text() == VICTIM_TEXT and snapshot(run_dir) == before  # nothing written, the link kept


def test_open_no_follow_refuses_links_and_other_files(tmp_path, victim):
    (tmp_path / "sym").symlink_to(victim)
    os.link(victim, tmp_path / "hard")
    os.mkfifo(tmp_path / "fifo")
    for name, mode, problem in [("sym", "a", "symbolic link"), ("sym", "r", "symbolic link"),
                                ("hard", "a", "other hard link"), ("fifo", "a", "not a regular file"),
                                ("fifo", "r", "not a regular file")]:  # fmt: skip
        with pytest.raises(ValueError, match=problem):
            open_no_follow(tmp_path / name, mode)
    with open_no_follow(tmp_path / "hard", "r") as f:  # reading a hard link changes nothing
        assert f.read() == VICTIM_TEXT
    with open_no_follow(tmp_path / "new", "a") as f:
        f.write("x")
    assert (tmp_path / "new").read_text() == "x" and victim.read_text() == VICTIM_TEXT


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.jsonl", "wandb_id.txt"])
def test_log_file_symlink_is_refused_before_anything_is_written(world, victim, name):
    run_dir = world / "runs" / f"log-{name}"
    run_dir.mkdir(parents=True)
    (run_dir / name).symlink_to(victim)
    before = snapshot(run_dir)
    code, err = train_cli(*run_args(world, f"log-{name}"))
    one_error_line(code, err, f"{run_dir / name} is a symbolic link")
    assert victim.read_text() == VICTIM_TEXT and snapshot(run_dir) == before


@pytest.mark.e2e
def test_files_replaced_whole_replace_a_symlink_instead_of_following_it(world, tmp_path):
    """config.yaml and the plots are written to a temp file and renamed over the link: the link goes, the file
    it led to stays."""
    run_dir = world / "runs" / "replaced"
    run_dir.mkdir(parents=True)
    victims = {}
    for name in ("config.yaml", "loss_vs_tokens.png", "loss_vs_time.png"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text(VICTIM_TEXT)
        (run_dir / name).symlink_to(victims[name])
    code, err = train_cli(*run_args(world, "replaced"))
    assert code == 0, err
    for name, path in victims.items():
        assert path.read_text() == VICTIM_TEXT
        assert not (run_dir / name).is_symlink() and (run_dir / name).stat().st_size > 0


def test_plot_never_writes_through_a_link(tmp_path, victim):
    from train.plots import new_figure

    (tmp_path / "plot.png").symlink_to(victim)
    fig, _ = new_figure()
    save_png(fig, tmp_path / "plot.png")
    assert victim.read_text() == VICTIM_TEXT and not (tmp_path / "plot.png").is_symlink()


def _copy_of_done(world: Path, name: str) -> Path:
    import shutil

    run_dir = world / "runs" / name
    shutil.copytree(world / "runs" / "done", run_dir, symlinks=True)
    return run_dir


def test_latest_symlink_is_refused_not_followed(world):
    run_dir = _copy_of_done(world, "latestlink")
    latest = run_dir / "checkpoints" / "latest"
    latest.unlink()
    latest.symlink_to(world / "runs" / "done" / "checkpoints" / "latest")  # names STEP, but another run's file
    other = snapshot(world / "runs" / "done")
    code, err = train_cli(*run_args(world, "latestlink", resume="auto", **{"trainer.max_steps": 4}))
    one_error_line(code, err, f"{latest} is a symbolic link; refusing to follow it")
    with pytest.raises(ValueError, match="symbolic link; refusing to follow it"):
        load_model(run_dir)
    assert snapshot(world / "runs" / "done") == other


def test_pointer_to_a_checkpoint_linked_from_outside_the_run_is_refused(world):
    run_dir = _copy_of_done(world, "steplink")
    ckpts = run_dir / "checkpoints"
    (ckpts / "step_0000009").symlink_to(world / "runs" / "done" / "checkpoints" / STEP)
    for pointer in ("latest", "best"):
        (ckpts / pointer).write_text("step_0000009\n")
    other = snapshot(world / "runs" / "done")
    code, err = train_cli(*run_args(world, "steplink", resume="auto", **{"trainer.max_steps": 4}))
    one_error_line(code, err, "names 'step_0000009', which is not a checkpoint directory inside")
    for pointer in ("latest", "best"):
        with pytest.raises(ValueError, match="refusing to follow it"):
            load_model(ckpts / pointer)
    assert snapshot(world / "runs" / "done") == other


# -- 2. A run directory is not paths.runs_dir, nor inside another run or a checkpoint ------------------------------


@pytest.mark.parametrize(
    "run_name, message",
    [
        (f"done/checkpoints/{STEP}", "which is a checkpoint (it holds model.json)"),
        ("done/checkpoints", "inside"),
        ("done/subrun", "inside"),
        ("done/.hydra", "inside"),
        ("''", "makes the run directory paths.runs_dir"),
        ("", "makes the run directory paths.runs_dir"),  # run_name=
        (".", "makes the run directory paths.runs_dir"),
        ("alias", "which is a checkpoint"),  # runs/alias: a link to done's checkpoint
    ],
)
@pytest.mark.e2e
def test_run_name_into_another_run_or_the_runs_dir_is_refused(world, run_name, message):
    alias = world / "runs" / "alias"
    if not os.path.lexists(alias):
        alias.symlink_to(world / "runs" / "done" / "checkpoints" / STEP)
    before = snapshot(world / "runs")
    code, err = train_cli(*run_args(world, run_name))
    one_error_line(code, err, message)
    assert "choose a run_name of its own" in err
    assert snapshot(world / "runs") == before  # done's config.yaml and checkpoints byte-identical, nothing added


def test_paths_run_dir_into_a_checkpoint_is_refused(world):
    before = snapshot(world / "runs")
    target = world / "runs" / "done" / "checkpoints" / STEP
    code, err = train_cli(*run_args(world, "x", **{"paths.run_dir": target}))
    one_error_line(code, err, "choose a directory of its own for paths.run_dir")
    assert snapshot(world / "runs") == before


def test_the_run_dir_check_holds_when_hydra_runs_first(world):
    """A Hydra flag skips the check before Hydra; the same check then runs inside the job."""
    before = snapshot(world / "runs")
    code, err = train_cli("--config-name=train", *run_args(world, f"done/checkpoints/{STEP}/sub"))
    one_error_line(code, err, "is inside")
    assert snapshot(world / "runs") == before


def test_check_run_dir_accepts_runs_and_sweep_jobs(world):
    runs = world / "runs"
    for run_dir in (runs / "done", runs / "new", runs / "group" / "new", runs / "multirun" / "2024-01-01" / "0"):
        check_run_dir(run_dir, runs, "run_name='x'")


# -- 3. A refused launch writes nothing, Hydra's record included ----------------------------------------------------


def test_a_successful_run_keeps_hydra_record(world):
    record = world / "runs" / "done" / ".hydra"
    assert sorted(p.name for p in record.iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "- run_name=done\n" in (record / "overrides.yaml").read_text()
    assert "run_name: done" in (record / "config.yaml").read_text()


@pytest.mark.slow
def test_refused_starts_and_failed_resumes_leave_the_run_directory_as_it_was(world):
    run_dir = _copy_of_done(world, "busy")
    before = snapshot(run_dir)
    with lock_holder(run_dir):
        held = snapshot(run_dir)  # with the holder's .lock
        for extra in ({"resume": "auto", "optim.lr": 0.5}, {}):  # a second start, resumed or fresh
            code, err = train_cli(*run_args(world, "busy", **extra))
            one_error_line(code, err, "is in use by another training process")
            assert snapshot(run_dir) == held
    (run_dir / ".lock").unlink()
    assert snapshot(run_dir) == before
    failed = [
        ({"resume": "auto", "model.n_layer": 2}, "cannot resume"),  # another architecture
        ({"resume": "auto", "data.tokenizer": "char"}, "cannot resume"),  # another tokenizer
        ({"resume": str(world / "runs" / "nowhere")}, "does not exist"),
        ({}, "already has checkpoints; pass resume=auto"),
    ]
    for extra, message in failed:
        code, err = train_cli(*run_args(world, "busy", **extra))
        one_error_line(code, err, message)
        assert snapshot(run_dir) == before, extra


@pytest.mark.e2e
def test_a_resumed_run_records_its_own_launch(world):
    run_dir = _copy_of_done(world, "resumed")
    code, err = train_cli(*run_args(world, "resumed", resume="auto", **{"trainer.max_steps": 4}))
    assert code == 0, err
    assert "- resume=auto\n" in (run_dir / ".hydra" / "overrides.yaml").read_text()
