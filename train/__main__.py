"""`python -m train [overrides]`: compose the Hydra config, convert it once to a typed TrainConfig, run the loop.

Examples:
    python -m train                                    # the default small GPT on the demo corpus
    python -m train experiment=demo run_name=demo      # the 10-minute CPU demo
    python -m train debug=default                      # a tiny, fast run for checking changes
    python -m train run_name=myrun resume=auto         # continue runs/myrun from its latest checkpoint
    python -m train -m optim.lr=1e-3,3e-3              # a multirun sweep

A user error (bad key or value, unreadable data or checkpoint) is one `error: ...` line on stderr and exit status 2;
NANOLOOM_DEBUG=1 (or HYDRA_FULL_ERROR=1) shows its traceback instead.

A launch writes nothing into a run directory until the run is known to proceed: the run directory is checked before
Hydra starts (check_run_dir), and Hydra writes no .hydra/ folder of its own (configs/hydra/default.yaml sets
hydra.output_subdir to null). Its record of the launch (.hydra/config.yaml, hydra.yaml, overrides.yaml) is written
once the run holds the run directory's lock and its resume checks have passed, so a refused launch leaves the record
of the run it was refused for as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from data.config import DataConfig
from model.config import GPTConfig, T5Config
from nanoloom.cli import config_error_message, debug_enabled
from nanoloom.files import config_dir
from sample.config import TaskConfig
from train.config import LoggerConfig, OptimConfig, ScheduleConfig, TrainConfig, TrainerConfig, register_schema

register_schema()

CONFIG_DIR = str(config_dir())
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FloatingPointError,
)
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
RECORD_DIR = ".hydra"  # Hydra's record of the launch, in the run directory
CHECKPOINT_MARKS = ("model.json", "train_state.pt")  # a checkpoint directory holds these (model/, train/state.py)
RUN_MARKS = ("checkpoints/latest",)  # anywhere, a directory holding this is a run's ...
RUNS_DIR_RUN_MARKS = ("checkpoints", "config.yaml", ".lock")  # ... and inside paths.runs_dir, any of these


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
            cfg = compose("train", overrides=args, return_hydra_config=True)
        try:
            hydra_run_dir = cfg.hydra.run.dir  # Hydra's output dir (runs/<run_name>); it does not exist yet
        except OmegaConfBaseException:  # it needs Hydra's runtime (${hydra:...}): checked inside the job instead
            hydra_run_dir = None
        with open_dict(cfg):
            del cfg["hydra"]
        given = cfg.paths.run_dir
        cfg.paths.run_dir = given or "unused"
        check_known_keys(cfg)
        typed = OmegaConf.to_object(cfg)
        check_run_name(typed.run_name)
        if given or hydra_run_dir:
            check_run_dir(Path(given or hydra_run_dir), Path(typed.paths.runs_dir), _chosen_by(given, typed.run_name))
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


def check_run_name(run_name: str) -> None:
    """run_name names a directory inside paths.runs_dir: checked before Hydra makes it (train.loop checks it again)."""
    if Path(run_name).is_absolute() or ".." in Path(run_name).parts:
        raise ValueError(
            f"run_name={run_name!r} would put the run directory outside paths.runs_dir; use a plain name, e.g. "
            "run_name=myrun (set paths.run_dir to train elsewhere)"
        )


def check_run_dir(run_dir: Path, runs_dir: Path, chosen_by: str) -> None:
    """Refuse a run directory that is paths.runs_dir itself, a checkpoint, or inside another run or a checkpoint.

    Training there would write its config.yaml, logs and checkpoints among the other run's files (and its pruning
    could delete them later), or put checkpoints straight into paths.runs_dir. Strictly inside paths.runs_dir a
    directory holding checkpoints/, config.yaml or .lock is a run's; anywhere, one holding checkpoints/latest,
    model.json or train_state.pt is a run's or a checkpoint. Paths are compared resolved (links followed).
    chosen_by: how the user chose the directory ("run_name='x'", "paths.run_dir=..."), for the message.
    """
    run, runs = run_dir.resolve(), runs_dir.resolve()
    fix = (
        "choose a run_name of its own, e.g. run_name=myrun"
        if chosen_by.startswith("run_name")
        else ("choose a directory of its own for paths.run_dir")
    )
    if run == runs:
        raise ValueError(
            f"{chosen_by} makes the run directory paths.runs_dir ({runs_dir}) itself, where every run has a "
            f"directory of its own; {fix}"
        )
    for parent in [run, *run.parents]:
        marks = CHECKPOINT_MARKS
        if parent != run:
            marks += RUN_MARKS + (RUNS_DIR_RUN_MARKS if runs in parent.parents else ())
        found = next((m for m in marks if os.path.lexists(parent / m)), None)
        if found is None:
            continue
        what = "a checkpoint" if found in CHECKPOINT_MARKS else "another run's directory"
        where = f"is {what}" if parent == run else f"is inside {parent}, {what}"
        raise ValueError(
            f"{chosen_by} puts the run directory {run_dir}, which {where} (it holds {found}); training there would "
            f"overwrite its files; {fix} (resume=auto with a run's own run_name continues that run)"
        )


def _chosen_by(run_dir: str | None, run_name: str) -> str:
    return f"paths.run_dir={run_dir}" if run_dir is not None else f"run_name={run_name!r}"


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

    record = hydra_record(dict_cfg)  # as Hydra would have written it, before the config is changed below
    try:
        given = dict_cfg.paths.run_dir
        if given is None:
            dict_cfg.paths.run_dir = HydraConfig.get().runtime.output_dir
        check_known_keys(dict_cfg)
        cfg = OmegaConf.to_object(dict_cfg)
        check_run_name(cfg.run_name)
        check_run_dir(Path(cfg.paths.run_dir), Path(cfg.paths.runs_dir), _chosen_by(given, cfg.run_name))
        check_init_from(cfg, list(HydraConfig.get().overrides.task))
        from train.loop import run

        metrics = run(cfg, on_start=lambda run_dir: write_record(run_dir, record))
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


def hydra_record(task_cfg: DictConfig) -> dict[str, str]:
    """The files of Hydra's record of this launch (config.yaml, hydra.yaml, overrides.yaml), as Hydra writes them
    into <output dir>/<hydra.output_subdir> when that is set."""
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}
    return {
        "config.yaml": OmegaConf.to_yaml(task_cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }


def write_record(run_dir: Path, record: dict[str, str]) -> None:
    """Write Hydra's record into run_dir/.hydra: called by the loop once the run proceeds (lock held, resume checked).

    Each file is replaced atomically (a link in its place is replaced, not followed); a .hydra that is a link is
    refused.
    """
    from nanoloom.files import write_text_atomic

    folder = run_dir / RECORD_DIR
    if folder.is_symlink():
        raise ValueError(
            f"{folder} is a symbolic link; nanoloom does not write a run's files through links: replace it with a "
            "directory of its own (or remove it) and start again"
        )
    folder.mkdir(exist_ok=True)
    for name, text in record.items():
        write_text_atomic(folder / name, text)


def _remove_if_unused(run_dir: Path) -> None:
    """Delete the (empty) run directory Hydra made for a run that failed before writing anything of its own."""
    if run_dir.is_dir() and not run_dir.is_symlink() and not any(run_dir.iterdir()):
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def main() -> None:
    """Entry point of `python -m train` and the nanoloom-train script."""
    check_overrides(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
