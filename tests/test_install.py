"""nanoloom installed from a wheel, as a user installs it: configs ship inside the package, the `nanoloom` command
runs from any directory, and a directory's own model.py or data/ is never imported in place of nanoloom's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = {".git", ".venv", "runs", ".cache", "build", "dist", "outputs", "multirun", "__pycache__", "wandb"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel of this checkout (built from a copy, so the checkout gets no build/); the
    dependencies (torch ...) come from the test environment's site-packages, as if installed before."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=lambda d, names: [n for n in names if n in LEFT_OUT or n.endswith(".egg-info")])
    wheels = tmp / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."]
    subprocess.run(build, cwd=src, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("nanoloom-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    # the dependencies, already installed: a path line (the .pth files there, the checkout's editable finder
    # among them, are not run)
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"nanoloom/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    packages = {f"{p.relative_to(ROOT)}" for d in ("nanoloom", "model", "data", "train", "sample")
                for p in (ROOT / d).rglob("*.py")}  # fmt: skip
    assert configs <= names and packages <= names, sorted((configs | packages) - names)[:5]
    install = [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return venv


@pytest.mark.slow
def test_installed_nanoloom_trains_and_samples_from_any_directory(installed, tmp_path):
    """From an empty directory holding its own model.py and data/ (which raise when imported), the installed
    `nanoloom` command trains a tiny run with the packaged configs and samples from it."""
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    (work / "model.py").write_text("raise ImportError('the project directory model.py was imported')\n")
    (work / "data" / "__init__.py").write_text("raise ImportError('the project directory data/ was imported')\n")
    (work / "notes.txt").write_text("The quick brown fox jumps over the lazy dog. " * 400)
    nanoloom = installed / "bin" / "nanoloom"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONNOUSERSITE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([nanoloom, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    assert "evaluate" in run("--help").stdout
    run("train", "debug=default", "data=text", "data.paths=[notes.txt]", "run_name=r", "trainer.max_steps=10")
    assert (work / "runs" / "r" / "checkpoints" / "latest").is_file()
    sampled = run("sample", "checkpoint=runs/r", "prompt=The quick", "max_new_tokens=8", "seed=0")
    assert sampled.stdout.startswith("--- sample 1/1 ---\nThe quick")
    scored = run("evaluate", "checkpoint=runs/r", "file=notes.txt")
    assert '"method": "strided windows"' in scored.stdout
    # -P: no current directory on sys.path (python -m ... and python -c put it first: there the project's own
    # model.py would win, which is why the `nanoloom` command is the way to run nanoloom from a project)
    located = subprocess.run([installed / "bin" / "python", "-P", "-c", "import model, nanoloom.files as f; "
                              "print(model.__file__, f.config_dir())"], cwd=work, env=env, capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert str(ROOT) not in located and "site-packages" in located  # the installed package, not the checkout


def test_the_nanoloom_command_lists_and_runs_every_command(capsys, monkeypatch):
    """`nanoloom --help` lists the commands; `nanoloom <command> --help` is the command's own help; a mistyped
    command is one error line with the likely one."""
    from nanoloom.__main__ import COMMANDS, main

    main(["--help"])
    listed = capsys.readouterr().out
    commands = ("train", "sample", "prepare", "evaluate", "compare", "export", "serve")
    assert all(f"  {name}" in listed for name in commands)
    for name in ("evaluate", "export", "compare", "sample", "serve"):
        monkeypatch.setattr(sys, "argv", ["x"])
        main([name, "--help"])
        assert capsys.readouterr().out.startswith("usage:"), name
    with pytest.raises(SystemExit) as e:
        main(["evalute", "checkpoint=x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "error: unknown command 'evalute'; did you mean evaluate? (nanoloom --help)\n"
    assert set(COMMANDS) == set(commands)
