"""`python -m train [overrides]`: compose the Hydra config, convert it once to a typed TrainConfig, run the loop.

Examples:
    python -m train                                    # the default small GPT on the demo corpus
    python -m train experiment=demo run_name=demo      # the 10-minute CPU demo
    python -m train debug=default                      # a tiny, fast run for checking changes
    python -m train run_name=myrun resume=auto         # continue runs/myrun from its latest checkpoint
    python -m train -m optim.lr=1e-3,3e-3              # a multirun sweep
"""

from __future__ import annotations

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
from sample.config import TaskConfig, config_error_message
from train.config import LoggerConfig, OptimConfig, ScheduleConfig, TrainConfig, TrainerConfig, register_schema

register_schema()

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError)
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
    Skipped for Hydra flags (-m, --cfg, --help ...) and with HYDRA_FULL_ERROR=1, which shows Hydra's full report.
    """
    if any(a.startswith("-") for a in args) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="train"):
            cfg = compose("train", overrides=args)
        cfg.paths.run_dir = cfg.paths.run_dir or "unused"  # Hydra's output dir does not exist yet
        OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException, *USER_ERRORS) as e:
        print(f"error: {config_error_message(e, SCHEMAS)}", file=sys.stderr, flush=True)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def hydra_main(dict_cfg: DictConfig) -> float:
    try:
        if dict_cfg.paths.run_dir is None:
            dict_cfg.paths.run_dir = HydraConfig.get().runtime.output_dir
        cfg: TrainConfig = OmegaConf.to_object(dict_cfg)
        from train.loop import run  # imported here so --help and config errors stay fast

        metrics = run(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        _remove_if_unused(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(2)
    return metrics["val/loss"]  # the value a Hydra sweeper optimises


def _remove_if_unused(run_dir: Path) -> None:
    """Delete the run directory Hydra made for a run that failed before writing anything of its own."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    """Entry point of `python -m train` and the nanoloom-train script."""
    check_overrides(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
