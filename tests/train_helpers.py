"""Helpers for tests that run the training loop (a real tiny corpus and Hydra compose) and the sampling CLI."""

from __future__ import annotations

import codecs
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.config import TrainConfig, register_schema

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


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
