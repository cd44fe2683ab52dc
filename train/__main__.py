"""`python -m train [overrides]`: compose the Hydra config, convert it once to a typed TrainConfig, run the loop.

Examples:
    python -m train                                    # the default small GPT on the demo corpus
    python -m train experiment=demo                    # the 10-minute CPU demo
    python -m train debug=default                      # a tiny, fast run for checking changes
    python -m train run_name=myrun resume=auto         # continue runs/myrun from its latest checkpoint
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from train.config import TrainConfig, register_schema

register_schema()

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(dict_cfg: DictConfig) -> float | None:
    try:
        if dict_cfg.paths.run_dir is None:
            dict_cfg.paths.run_dir = HydraConfig.get().runtime.output_dir
        cfg: TrainConfig = OmegaConf.to_object(dict_cfg)
        from train.loop import run  # imported here so --help and config errors stay fast

        metrics = run(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    return metrics["val/loss"]  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()
