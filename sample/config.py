"""Sampling configuration: TaskConfig (a preset from configs/task/) and SampleConfig, the schema of configs/sample.yaml.

Both are registered in Hydra's ConfigStore by register_schema(), so an unknown or mistyped key fails at compose time.
Field types are the ones OmegaConf 2.3 accepts (typing.Optional/List, no PEP 604 unions); values are validated in
__post_init__, which OmegaConf.to_object runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import MISSING
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


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


@dataclass
class TaskConfig:
    name: str = "default"  # preset label: story | code | your own configs/task/<name>.yaml
    max_new_tokens: int = 200  # tokens generated per sample, at most (the prompt not counted)
    temperature: float = 1.0  # 0 = greedy argmax; < 1 sharper, > 1 more random
    top_k: Optional[int] = None  # keep the k most likely tokens (applied first); null = all
    top_p: Optional[float] = None  # nucleus: smallest set with this probability mass (applied last); null = all
    stop: List[str] = field(default_factory=list)  # a completion ends before the first of these strings

    def __post_init__(self) -> None:
        _check_max_new_tokens("task.max_new_tokens", self.max_new_tokens)
        _check_sampling("task.", self.temperature, self.top_k, self.top_p)


@dataclass
class SampleConfig:
    checkpoint: str = MISSING  # checkpoint directory, or a run directory (its checkpoints/latest is used)
    prompt: Optional[str] = None  # text to continue; "" samples unconditionally (starts from end-of-text)
    prompt_file: Optional[str] = None  # read the prompt from this file instead (used as is, newlines included)
    num_samples: int = 1  # independent samples of the same prompt
    seed: Optional[int] = None  # null = a different result every run; an int makes runs reproducible
    stream: bool = False  # print tokens as they are generated (samples then run one after another)
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:<n> | mps
    task: TaskConfig = field(default_factory=TaskConfig)  # preset chosen with task=story|code
    # Overrides of the task preset; null = use the task's value.
    max_new_tokens: Optional[int] = None  # tokens generated per sample
    temperature: Optional[float] = None  # 0 = greedy
    top_k: Optional[int] = None  # to switch off a task's top_k use task.top_k=null
    top_p: Optional[float] = None  # 1.0 switches nucleus filtering off

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

    def settings(self) -> TaskConfig:
        """The task preset with this config's overrides (the non-null ones) applied."""
        overrides = {
            name: getattr(self, name)
            for name in ("max_new_tokens", "temperature", "top_k", "top_p")
            if getattr(self, name) is not None
        }
        return dataclasses.replace(self.task, **overrides)


def register_schema() -> None:
    """Register the schemas that configs/sample.yaml and configs/task/*.yaml name in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(group="task", name="task_schema", node=TaskConfig)


def config_error_message(e: BaseException, schemas: dict[str, type]) -> str:
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


def _did_you_mean(full_key: str, schemas: dict[str, type]) -> str:
    """A close valid key for a mistyped one ("tempreature" -> "temperature"), or ""."""
    parent, _, key = full_key.rpartition(".")
    schema = schemas.get(parent)
    if schema is None:
        return ""
    hint = difflib.get_close_matches(key, [f.name for f in dataclasses.fields(schema)], n=1)
    return f"(did you mean {parent + '.' if parent else ''}{hint[0]}?)" if hint else ""
