"""Sampling configuration: TaskConfig (a preset from configs/task/) and SampleConfig, the schema of configs/sample.yaml.

Both are registered in Hydra's ConfigStore by register_schema(), so an unknown or mistyped key fails at compose time.
Field types are the ones OmegaConf 2.3 accepts (typing.Optional/List, no PEP 604 unions); values are validated in
__post_init__, which OmegaConf.to_object runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import MISSING
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
OBJECTIVES = ("causal", "span_corruption", "seq2seq")  # causal trains gpt models; the other two t5 models
# SampleConfig fields that override the task preset's field of the same name when they are not null
OVERRIDES = ("max_new_tokens", "temperature", "top_k", "top_p", "num_beams", "length_penalty", "early_stopping")


def _check_sampling(prefix: str, temperature: Optional[float], top_k: Optional[int], top_p: Optional[float]) -> None:
    if temperature is not None and temperature < 0:
        raise ValueError(f"{prefix}temperature={temperature} must be >= 0 (0 = greedy); e.g. temperature=0.8")
    if top_k is not None and top_k < 1:
        raise ValueError(f"{prefix}top_k={top_k} must be >= 1; use {prefix}top_k=null to keep every token")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"{prefix}top_p={top_p} must be in (0, 1]; use 1.0 to keep every token")


def _check_max_new_tokens(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name}={value} must be >= 1")


def _check_beams(prefix: str, num_beams: Optional[int], length_penalty: Optional[float]) -> None:
    if num_beams is not None and num_beams < 1:
        raise ValueError(f"{prefix}num_beams={num_beams} must be >= 1 (1 = sampling or greedy, > 1 = beam search)")
    if length_penalty is not None and not math.isfinite(length_penalty):
        raise ValueError(f"{prefix}length_penalty={length_penalty} must be a finite number; e.g. 1.0")


@dataclass
class TaskConfig:
    name: str = "default"  # preset label: story | code | seq2seq | span_corruption | configs/task/<yours>.yaml
    max_new_tokens: int = 200  # tokens generated per sample, at most (the prompt not counted)
    temperature: float = 1.0  # 0 = greedy argmax; < 1 sharper, > 1 more random
    top_k: Optional[int] = None  # keep the k most likely tokens (applied first); null = all
    top_p: Optional[float] = None  # nucleus: smallest set with this probability mass (applied last); null = all
    stop: List[str] = field(default_factory=list)  # a completion ends before the first of these strings
    num_beams: int = 1  # 1 = sample (greedy at temperature 0); > 1 = beam search (deterministic, no sampling)
    length_penalty: float = 1.0  # beam score = sum log p / length**length_penalty; > 0 favours longer outputs
    early_stopping: bool = False  # beam search: true stops once num_beams outputs are finished
    # Training reads these (python -m train task=...); sampling ignores them.
    objective: str = "causal"  # causal (gpt) | span_corruption (t5 pretraining) | seq2seq (t5 on input/target pairs)
    noise_density: float = 0.15  # span_corruption: fraction of input tokens masked, in (0, 1)
    mean_span_length: float = 3.0  # span_corruption: mean length of a masked span in tokens, >= 1

    def __post_init__(self) -> None:
        _check_max_new_tokens("task.max_new_tokens", self.max_new_tokens)
        _check_sampling("task.", self.temperature, self.top_k, self.top_p)
        _check_beams("task.", self.num_beams, self.length_penalty)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"task.objective={self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"task.noise_density={self.noise_density} must be in (0, 1); T5 uses 0.15")
        if not (math.isfinite(self.mean_span_length) and self.mean_span_length >= 1.0):
            raise ValueError(f"task.mean_span_length={self.mean_span_length} must be >= 1 (tokens); T5 uses 3.0")


@dataclass
class SampleConfig:
    checkpoint: str = MISSING  # checkpoint directory, or a run directory (its checkpoints/latest is used)
    prompt: Optional[str] = None  # text to continue (gpt) or the input to map (t5); "" = just end-of-text
    prompt_file: Optional[str] = None  # read the prompt from this file instead (used as is, newlines included)
    num_samples: int = 1  # independent samples of the same prompt (beam search: the best num_samples beams)
    seed: Optional[int] = None  # null = a different result every run; an int makes runs reproducible
    stream: bool = False  # print tokens as they are generated (samples then run one after another)
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:<n> | mps
    task: TaskConfig = field(default_factory=TaskConfig)  # preset: task=story|code|seq2seq|span_corruption
    # Overrides of the task preset; null = use the task's value.
    max_new_tokens: Optional[int] = None  # tokens generated per sample
    temperature: Optional[float] = None  # 0 = greedy
    top_k: Optional[int] = None  # to switch off a task's top_k use task.top_k=null
    top_p: Optional[float] = None  # 1.0 switches nucleus filtering off
    num_beams: Optional[int] = None  # > 1: beam search; num_samples of the beams are printed, best first
    length_penalty: Optional[float] = None  # beam search: > 0 favours longer outputs, < 0 shorter ones
    early_stopping: Optional[bool] = None  # beam search: stop once num_beams outputs are finished

    def __post_init__(self) -> None:
        if self.prompt is None and self.prompt_file is None:
            raise ValueError('no prompt: pass prompt="..." or prompt_file=<path> (prompt="" samples unconditionally)')
        if self.prompt is not None and self.prompt_file is not None:
            raise ValueError("both prompt and prompt_file are set; pass only one of them")
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples} must be >= 1")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device={self.device!r} is not one of auto, cpu, cuda, cuda:<n>, mps")
        _check_max_new_tokens("max_new_tokens", self.max_new_tokens)
        _check_sampling("", self.temperature, self.top_k, self.top_p)
        _check_beams("", self.num_beams, self.length_penalty)
        num_beams = self.settings().num_beams
        if num_beams > 1 and self.num_samples > num_beams:
            raise ValueError(
                f"num_samples={self.num_samples} > num_beams={num_beams}: beam search returns at most num_beams "
                "outputs; raise num_beams or lower num_samples"
            )
        if num_beams > 1 and self.stream:
            raise ValueError(
                f"stream=true cannot show beam search (num_beams={num_beams}): beams are only final at the end; "
                "use stream=false or num_beams=1"
            )

    def settings(self) -> TaskConfig:
        """The task preset with this config's overrides (the non-null ones) applied."""
        overrides = {name: getattr(self, name) for name in OVERRIDES if getattr(self, name) is not None}
        return dataclasses.replace(self.task, **overrides)


def register_schema() -> None:
    """Register the schemas that configs/sample.yaml and configs/task/*.yaml name in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(group="task", name="task_schema", node=TaskConfig)


def config_error_message(e: BaseException, schemas: dict[str, type | tuple[type, ...]]) -> str:
    """One line for a Hydra/OmegaConf composition error (or any user error), naming the key and a likely fix.

    schemas maps a key prefix ("" for the top level, "task", "model", ...) to the dataclass whose field names
    "did you mean ...?" suggests from. Shared by the command-line entry points.
    """
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
        group, _, name = e.missing_cfg_file.rpartition("/")
        options = sorted(o for o in e.options if not o.endswith("_schema") and o != "schema")
        return f"unknown {group or 'config'} {name!r}; choose one of {', '.join(options)}"
    lines = [str(e).strip().splitlines()[0]] if str(e).strip() else [type(e).__name__]
    if isinstance(e, OverrideParseException):
        what = [ln for ln in str(e).splitlines() if ln and not ln.startswith(("Error parsing override", "See http"))]
        lines = [f"cannot parse override {e.override!r}:", *what[:1]]
        lines.append("""(values with spaces, commas or brackets need Hydra quoting: key='"..."')""")
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException):  # Hydra wraps the OmegaConf error that names the key
        lines.append(str(cause).strip().splitlines()[0])
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
            lines.append(_did_you_mean(cause.full_key, schemas))
    return " ".join(line.strip() for line in lines if line)


def _did_you_mean(full_key: str, schemas: dict[str, type | tuple[type, ...]]) -> str:
    """A close valid key for a mistyped one ("tempreature" -> "temperature"), or ""."""
    parent, _, key = full_key.rpartition(".")
    schema = schemas.get(parent)
    if schema is None:
        return ""
    classes = schema if isinstance(schema, tuple) else (schema,)  # e.g. model: GPTConfig or T5Config
    names = sorted({f.name for cls in classes for f in dataclasses.fields(cls)})
    hint = difflib.get_close_matches(key, names, n=1)
    return f"(did you mean {parent + '.' if parent else ''}{hint[0]}?)" if hint else ""
