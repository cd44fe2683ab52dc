"""`python -m train [overrides]`: compose the Hydra config, convert it once to a typed TrainConfig, run the loop.

Examples:
    python -m train                                    # the default small GPT on the demo corpus
    python -m train experiment=demo run_name=demo      # the 10-minute CPU demo
    python -m train debug=default                      # a tiny, fast run for checking changes
    python -m train run_name=myrun resume=auto         # continue runs/myrun from its latest checkpoint
    python -m train -m optim.lr=1e-3,3e-3              # a multirun sweep

A user error (bad key or value, unreadable data or checkpoint) is one `error: ...` line on stderr and exit status 2;
NANOLOOM_DEBUG=1 (or HYDRA_FULL_ERROR=1) shows its traceback instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data.config import DataConfig
from model.config import GPTConfig, T5Config
from sample.config import TaskConfig, config_error_message, debug_enabled
from train.config import LoggerConfig, OptimConfig, ScheduleConfig, TrainConfig, TrainerConfig, register_schema

register_schema()

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, FloatingPointError)  # fmt: skip
SCHEMAS = {  # where "did you mean ...?" looks for a mistyped key
    "": TrainConfig,
    "model": (GPTConfig, T5Config),
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "task": TaskConfig,
}


def check_overrides(args: list[str]) -> None:
    """Compose and validate the config before Hydra runs: a bad key or value is one `error:` line and exit 2.

    Hydra's own report of a composition error is several lines long; this check gives the same verdict in one.
    Skipped for Hydra flags (-m, --cfg, --help ...) and with HYDRA_FULL_ERROR=1, which shows Hydra's full report;
    NANOLOOM_DEBUG=1 raises the error with its traceback.
    """
    if any(a.startswith("-") for a in args) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="train"):
            cfg = compose("train", overrides=args)
        cfg.paths.run_dir = cfg.paths.run_dir or "unused"  # Hydra's output dir does not exist yet
        check_known_keys(cfg)
        OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException, *USER_ERRORS) as e:
        if debug_enabled():
            raise
        print(f"error: {config_error_message(e, SCHEMAS)}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """Refuse keys no schema has: `+key=value` appends them, and OmegaConf.to_object would drop them silently."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key, value in node.items_ex(resolve=False):
        if known is not None and key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            fix = f"did you mean {prefix}{hint[0]}?" if hint else f"valid keys: {', '.join(sorted(known))}"
            raise ValueError(f"unknown key {prefix}{key}; {fix}")
        if isinstance(value, DictConfig):
            check_known_keys(value, f"{prefix}{key}.")


def check_init_from(cfg: TrainConfig, overrides: list[str]) -> None:
    """A model.block_size given on the command line must fit init_from's model, whose architecture is kept."""
    if not cfg.init_from or not any(o.lstrip("+~").partition("=")[0] == "model.block_size" for o in overrides):
        return
    from model.checkpoint import read_model_json

    source = read_model_json(cfg.init_from)["config"].get("block_size")
    if source is not None and cfg.model.block_size > source:
        raise ValueError(
            f"model.block_size={cfg.model.block_size} exceeds block_size={source} of init_from={cfg.init_from} "
            f"(fine-tuning keeps the source's architecture); set model.block_size to at most {source} "
            "(a smaller one crops the positions) or leave it out"
        )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")  # absolute: main() also runs in-process
def hydra_main(dict_cfg: DictConfig) -> float:
    import torch  # imported here so --help and config errors stay fast

    from train.state import CheckpointWriteError

    try:
        if dict_cfg.paths.run_dir is None:
            dict_cfg.paths.run_dir = HydraConfig.get().runtime.output_dir
        check_known_keys(dict_cfg)
        cfg = OmegaConf.to_object(dict_cfg)
        check_init_from(cfg, list(HydraConfig.get().overrides.task))
        from train.loop import run

        metrics = run(cfg)
        if cfg.dry_run or Path(cfg.paths.run_dir) != Path(HydraConfig.get().runtime.output_dir):
            # a dry run leaves no run directory; nor does a torchrun rank whose Hydra resolved another run name
            _remove_if_unused(Path(HydraConfig.get().runtime.output_dir))
    except (*USER_ERRORS, CheckpointWriteError, torch.OutOfMemoryError) as e:
        _remove_if_unused(Path(HydraConfig.get().runtime.output_dir))
        if debug_enabled():
            raise
        print(f"error: {config_error_message(e, SCHEMAS)}", file=sys.stderr, flush=True)
        sys.exit(2)
    return metrics["val/loss"]  # the value a Hydra sweeper optimises


def _remove_if_unused(run_dir: Path) -> None:
    """Delete the run directory Hydra made for a run that failed before writing anything of its own."""
    if not run_dir.is_dir():
        return
    names = {p.name for p in run_dir.iterdir()}
    metrics = run_dir / "metrics.jsonl"  # opened (empty) before the val data is checked
    if names <= {".hydra"} or (names <= {".hydra", "metrics.jsonl"} and metrics.stat().st_size == 0):
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    """Entry point of `python -m train` and the nanoloom-train script."""
    check_overrides(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
