"""Helpers for tests that run the training loop (a real tiny corpus and Hydra compose) and the command lines."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.config import TrainConfig, register_schema

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
HOLD_LOCK = "import sys; from pathlib import Path; from train.state import lock_run_dir\n" \
            "with lock_run_dir(Path(sys.argv[1])):\n    print('locked', flush=True); sys.stdin.read()"  # fmt: skip


def zen_of_python(directory: Path) -> Path:
    """Write the Zen of Python (shipped rot13-encoded in the stdlib's `this` module) to a file; return it."""
    import importlib.util

    source = Path(importlib.util.find_spec("this").origin).read_text()
    encoded = source.split('s = """', 1)[1].split('"""', 1)[0]
    path = directory / "zen.txt"
    path.write_text(codecs.decode(encoded, "rot13"))
    return path


def compose_train(overrides: list[str]) -> TrainConfig:
    """The typed TrainConfig that `python -m train <overrides>` would run."""
    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return OmegaConf.to_object(cfg)


def tiny_run_overrides(tmp_path: Path, corpus: Path, run_name: str = "run", **extra: object) -> list[str]:
    """A seconds-long CPU run on `corpus`: gpt-nano at block size 32, byte tokenizer, fp32."""
    base = {
        "debug": "default",
        "data": "text",
        "data.paths": f"[{corpus}]",
        "data.tokenizer": "byte",
        "data.val_fraction": 0.2,
        "model.block_size": 32,
        "paths.cache_dir": str(tmp_path / "cache"),
        "paths.run_dir": str(tmp_path / run_name),
        "run_name": run_name,
        "trainer.max_steps": 8,
        "trainer.log_interval": 1,
        "trainer.eval_interval": 4,
        "trainer.save_interval": 4,
        "samples.max_new_tokens": 8,
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def losses(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """step -> train/loss (or another metric) from a run's metrics.jsonl."""
    import json

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if key in r}


def train_killed_then_resumed(monkeypatch, overrides: list[str], kill_at: int = 6) -> None:
    """Run the config, interrupted during optimizer step kill_at; then run it again with resume=auto."""
    import pytest

    from train import loop

    real, calls = loop.forward_backward, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "forward_backward", dies)
    with pytest.raises(KeyboardInterrupt):
        loop.run(compose_train(overrides))
    monkeypatch.setattr(loop, "forward_backward", real)
    loop.run(compose_train([*overrides, "resume=auto"]))


def run_sample_main(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m sample` in-process (sample.__main__.main): (exit code, stdout, stderr)."""
    from sample.__main__ import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(cli: str, args: list[str], monkeypatch, capsys, env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit status, stderr) of one command line (prepare, train, sample, evaluate, export), in-process through the
    CLI's main()."""
    from hydra.core.global_hydra import GlobalHydra

    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    code = 0
    try:
        if cli == "sample":
            from sample.__main__ import main

            main(args)
        elif cli == "evaluate":
            from train.evaluate import main

            main(args)
        elif cli == "export":
            from model.export import main

            main(args)
        else:
            from data.prepare import main as prepare_main
            from train.__main__ import main as train_main

            monkeypatch.setattr(sys, "argv", [cli, *args])
            {"prepare": prepare_main, "train": train_main}[cli]()
    except SystemExit as e:
        code = e.code
    finally:
        GlobalHydra.instance().clear()  # @hydra.main leaves it set up when a run exits early
    return code, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of a file, "dir", or "link -> target", for everything under root (.hydra included)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        else:
            out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def lock_holder(run_dir: Path) -> Iterator[subprocess.Popen]:
    """Another process holding run_dir's lock for the body; SIGKILLed after it (no cleanup runs in it)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
