"""Every config composes: each option of each group, every experiment, and the primary configs (Compose API)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from train_helpers import CONFIG_DIR, compose_train

from train.config import TrainConfig, register_schema

CONFIGS = Path(CONFIG_DIR)
GROUPS = ["model", "data", "optim", "schedule", "trainer", "logger", "paths", "debug", "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIGS / g).glob("*.yaml"))]
NEEDS = {("data", "text"): ["data.paths=[README.md]"], ("data", "pairs"): ["data.paths=[pairs.jsonl]"],
         ("experiment", "shakespeare_char_speedrun"): ["data.paths=[input.txt]"]}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(group, option):
    cfg = compose_train([f"{group}={option}", *NEEDS.get((group, option), [])])
    assert isinstance(cfg, TrainConfig)


def test_experiments_start_with_their_command():
    # Hydra reads the package header only from the very first lines, so the command is the line after it
    for path in sorted((CONFIGS / "experiment").glob("*.yaml")):
        header, command = path.read_text().splitlines()[:2]
        assert header == "# @package _global_", path
        assert command.startswith("# python -m train experiment=" + path.stem), path


def test_every_default_is_documented():
    lines = (CONFIGS / "train.yaml").read_text().splitlines()
    start = lines.index("defaults:") + 1
    for line in lines[start:]:
        if not line.startswith("  - "):
            break
        assert "#" in line, f"undocumented defaults entry: {line}"


@pytest.mark.parametrize(
    "override, error",
    [
        ("model.n_layerz=3", ConfigCompositionException),
        ("trainer.max_step=3", ConfigCompositionException),
        ("data.tokenizr=byte", ConfigCompositionException),
        ("trainer.max_steps=many", ConfigCompositionException),
        ("model=gpt-huge", ConfigCompositionException),
    ],
)
@pytest.mark.e2e
def test_typos_fail_at_compose_time(override, error):
    with pytest.raises(error):
        compose_train([override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.dtype=fp8", "trainer.dtype='fp8' is not one of"),
        ("schedule.name=linear", "schedule.name='linear'"),
        ("data.tokenizer=sentencepiece", "unknown tokenizer 'sentencepiece'"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be >= 1"),
        ("model.n_head=5", "not divisible by model.n_head=5"),
        ("data.fim_rate=1.5", r"data.fim_rate=1.5 must be between 0 and 1 \(inclusive\)"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises((ValidationError, ConfigKeyError, ValueError), match=message):
        compose_train([override])


def test_prepare_config_composes():
    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("prepare", overrides=["data=python-code"])
    assert OmegaConf.to_object(cfg.data).corpora == ["python-code"]


def test_fim_experiment_rearranges_python_code():
    cfg = compose_train(["experiment=gpt-mini_python-code_fim"])
    base = compose_train(["experiment=gpt-mini_python-code"])
    assert cfg.data.fim_rate == 0.5 and base.data.fim_rate == 0.0 and cfg.data.corpora == ["python-code"]
    assert cfg.model == base.model and cfg.trainer == base.trainer and cfg.run_name == "gpt-mini_python-code_fim"
