"""Training config schema: dataclasses registered in Hydra's ConfigStore, so a mistyped key fails at compose time.

configs/*.yaml hold the values; this file holds the types. `python -m train` converts the composed config once
with OmegaConf.to_object and hands the typed TrainConfig to loop.run. Schema types are the ones OmegaConf accepts
(Optional/List, no PEP 604 unions, no Literal); choices are validated in __post_init__.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from data.config import DataConfig, check_seed
from model.config import GPTConfig, T5Config
from sample.config import TaskConfig, overrides_of, with_overrides
from sample.config import register_schema as register_sample_schema
from sample.sampling import GenerationConfig, override_values

DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "constant", "wsd")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("disabled", "offline", "online")
NONFINITE = ("skip", "stop")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(choices)}")


def _finite_numbers(prefix: str, config: object) -> None:
    """Every float field of a config dataclass holds a finite number (or None where Optional): nan and inf pass the
    range checks (every comparison with nan is false) and would only fail once training runs."""
    for f in dataclasses.fields(config):
        if f.type not in ("float", "Optional[float]"):
            continue
        value = getattr(config, f.name)
        if value is None and f.type == "Optional[float]":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{prefix}.{f.name}={value!r} must be a finite number")


def _in_unit_interval(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{key}={value} must be in [0, 1)")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw (Loshchilov & Hutter 2019) | muon (hidden matrices; AdamW for the rest)
    lr: float = 6e-4  # peak learning rate
    weight_decay: float = 0.1  # applied to matrices and embeddings only; never to biases and norm gains
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    fused: Optional[bool] = None  # None: fused kernel on CUDA, foreach elsewhere
    momentum: float = 0.95  # muon: Nesterov momentum of the hidden matrices' updates

    def __post_init__(self) -> None:
        _choice("optim.name", self.name, ("adamw", "muon"))
        _finite_numbers("optim", self)
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay} must be >= 0 (0 disables it)")
        _in_unit_interval("optim.beta1", self.beta1)
        _in_unit_interval("optim.beta2", self.beta2)
        if self.eps <= 0:
            raise ValueError(f"optim.eps={self.eps} must be > 0 (a parameter whose gradient is 0 would divide 0 by 0)")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip={self.grad_clip} must be >= 0 (0 disables clipping)")
        _in_unit_interval("optim.momentum", self.momentum)


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | constant | wsd (warmup-stable-decay)
    warmup_steps: int = 100  # linear warmup from 0 to optim.lr
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio * optim.lr (cosine, wsd)
    decay_fraction: float = 0.2  # wsd: share of trainer.max_steps spent in the final linear decay

    def __post_init__(self) -> None:
        _choice("schedule.name", self.name, SCHEDULES)
        _finite_numbers("schedule", self)
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"schedule.decay_fraction={self.decay_fraction} must be in (0, 1]")


@dataclass
class TrainerConfig:
    max_steps: int = 5000  # optimizer steps; the lr schedule spans exactly these
    max_time: Optional[float] = None  # wall-clock budget in seconds: stop (and save) when it runs out
    batch_size: int = 12  # micro-batch rows per process
    grad_accum: int = 1  # micro-batches per optimizer step; tokens/step = batch_size*grad_accum*block_size*world
    micro_batch_size: Optional[int] = None  # rows per forward/backward, a divisor of batch_size (same data and
    # tokens/step, less memory); null = batch_size. Halved automatically after a CUDA out-of-memory error
    eval_interval: int = 250  # steps between evaluations (and completion samples); 0 = only at the end
    eval_batches: Optional[int] = 20  # val batches per evaluation (the same batches every time); null = the whole
    # val split, every token scored once (causal models: windows of block_size tokens, eval_stride apart)
    eval_stride: Optional[int] = None  # whole-split evaluation: tokens between window starts; null = block_size
    log_interval: int = 10  # steps between console/metrics lines
    log_update_ratio: bool = True  # log ||w_new - w||/||w|| on log steps (a transient copy of the weights then)
    save_interval: int = 1000  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2  # newest checkpoints kept, plus the best by val loss (checkpoints/best); older ones deleted
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:1 | mps
    dtype: str = "auto"  # auto (bf16 where fast, else fp32; fp16 + grad scaler on pre-Ampere GPUs) | float32 | ...
    compile: Optional[bool] = None  # torch.compile the model; null = auto: on CUDA, and on CPU for >= 200 steps
    parallel: str = "ddp"  # with torchrun: ddp (replicas) | fsdp (FSDP2 fully_shard per block: sharded state)
    activation_checkpointing: bool = False  # recompute block activations in backward: less memory, ~1/3 more compute
    keep_freed_memory: bool = True  # CPU training: glibc keeps freed buffers mapped, no page faults every step
    seed: int = 1337  # seeds init, dropout and the data order
    nonfinite: str = "stop"  # a non-finite loss or gradient: stop (and keep the last good checkpoint) | skip the step

    def __post_init__(self) -> None:
        for key in (
            "max_steps",
            "batch_size",
            "grad_accum",
            "eval_batches",
            "eval_stride",
            "log_interval",
            "keep_last",
        ):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"trainer.{key}={getattr(self, key)} must be >= 1")
        for key in ("eval_interval", "save_interval"):
            if getattr(self, key) < 0:
                raise ValueError(f"trainer.{key}={getattr(self, key)} must be >= 0")
        _finite_numbers("trainer", self)
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"trainer.max_time={self.max_time} must be > 0 seconds (or null for no budget)")
        _choice("trainer.dtype", self.dtype, DTYPES)
        _choice("trainer.nonfinite", self.nonfinite, NONFINITE)
        _choice("trainer.parallel", self.parallel, ("ddp", "fsdp"))
        check_seed("trainer.seed", self.seed)
        micro = self.micro_batch_size
        if micro is not None and (micro < 1 or self.batch_size % micro):
            raise ValueError(f"trainer.micro_batch_size={micro} must divide trainer.batch_size={self.batch_size}")


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb (metrics.jsonl and the console are always written)
    project: str = "nanoloom"  # wandb project
    # wandb mode: null (WANDB_MODE if set, else online when logged in, offline otherwise) | disabled | offline | online
    mode: Optional[str] = None
    entity: Optional[str] = None  # wandb team or user; the API key comes from WANDB_API_KEY, never from YAML
    tags: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("logger.name", self.name, LOGGERS)
        if self.mode is not None:
            _choice("logger.mode", self.mode, WANDB_MODES)


@dataclass
class _SamplesArgs:
    """samples.*: completions of the sample prompts at every evaluation. The task preset's decoding (task.temperature,
    top_k, top_p, stop strings ...) is what they use, as the checkpoint records it and python -m sample / pipeline()
    use it; every decoding control is also a key here (with_overrides), whose non-null value overrides the preset's
    for these samples (samples.max_new_tokens: 64, a budget per evaluation)."""

    prompts: List[str] = field(default_factory=lambda: ["Once upon a time,", "def fibonacci(n):"])  # at each eval
    seed: int = 1234  # a private generator: sampling never disturbs the training RNG
    eval_pairs: int = 16  # seq2seq: val pairs generated at each eval for exact match and ROUGE-L (0 = none)
    shown_pairs: int = 3  # seq2seq: how many of them are printed and written to samples.jsonl

    def __post_init__(self) -> None:
        _finite_numbers("samples", self)
        check_seed("samples.seed", self.seed)
        for key in ("eval_pairs", "shown_pairs"):
            if getattr(self, key) < 0:
                raise ValueError(f"samples.{key}={getattr(self, key)} must be >= 0")
        try:
            GenerationConfig(**self.overrides())
        except ValueError as e:
            raise ValueError(f"samples.{e}") from None

    def overrides(self) -> dict[str, Any]:
        """The decoding controls set here (non-null, do_sample as temperature and num_beams imply), to apply over the
        task preset's."""
        return override_values(overrides_of(self))


SamplesConfig = with_overrides(_SamplesArgs, "SamplesConfig", max_new_tokens=64)


@dataclass
class PathsConfig:
    root_dir: str = "."  # the project root; relative paths below resolve against the launch directory
    cache_dir: str = ".cache/nanoloom"  # prepared datasets and measured device peaks
    runs_dir: str = "runs"  # parent of run directories: runs/<run_name>
    run_dir: Optional[str] = None  # this run's directory; null: Hydra's output dir (runs/<run_name>)


@dataclass
class TrainConfig:
    model: Any = MISSING  # GPTConfig or T5Config: each configs/model/*.yaml names its schema (gpt_ or t5_schema)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    task: TaskConfig = field(default_factory=TaskConfig)  # task.objective: causal | span_corruption | seq2seq
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = "default"  # the run directory is runs/<run_name>; rerun with the same name + resume=auto
    resume: Optional[str] = None  # null: fresh run (refused if the run dir has checkpoints) | auto | <checkpoint dir>
    init_from: Optional[str] = None  # fine-tune: start from these weights (a nanoloom checkpoint or hf:<name|dir>);
    # the architecture is the source's (model.dropout applies; a smaller model.block_size crops positions)
    dry_run: bool = False  # print params, FLOPs, a memory estimate, measured step time and the ETA; write no run

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):  # built outside Hydra from a plain dict
            from model.registry import config_from_dict

            self.model = config_from_dict(self.model)
        try:  # the samples shown at each evaluation: samples.* over the task preset's decoding
            self.task.replace(num_return_sequences=1, **self.samples.overrides())
        except ValueError as e:
            raise ValueError(f"the samples' decoding (samples.* over task={self.task.name}): {e}") from None
        if self.trainer.eval_batches is None and self.task.objective != "causal":
            raise ValueError(
                f"trainer.eval_batches=null scores the whole val split of a causal model; the {self.task.objective} "
                "objective evaluates on batches: give trainer.eval_batches a number"
            )


def config_dict(cfg: TrainConfig, model_cfg: Any = None) -> dict[str, Any]:
    """The config as plain containers, with the model config actually built (vocab_size filled in)."""
    node = OmegaConf.structured(cfg)
    out = OmegaConf.to_container(node, resolve=True)
    if model_cfg is not None:
        out["model"] = model_cfg.to_dict()
    return out


def to_yaml(cfg: TrainConfig, model_cfg: Any = None) -> str:
    """The resolved config as YAML (written to the run directory and into every checkpoint)."""
    return OmegaConf.to_yaml(OmegaConf.create(config_dict(cfg, model_cfg)))


def register_schema() -> None:
    """Register the schema nodes the YAML files name in their defaults lists (idempotent)."""
    from data.prepare import register_schema as register_data_schema

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)  # types every group below it in train.yaml's defaults
    cs.store(group="model", name="gpt_schema", node=GPTConfig)  # model is Any in TrainConfig: each yaml names its kind
    cs.store(group="model", name="t5_schema", node=T5Config)
    register_data_schema()  # data/schema, for configs/prepare.yaml (no top-level schema there)
    register_sample_schema()  # task/task_schema: the task presets name it
