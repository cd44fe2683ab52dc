"""Sampling configuration: TaskConfig (a preset from configs/task/) and SampleConfig, the schema of configs/sample.yaml.

Both are registered in Hydra's ConfigStore by register_schema(), so an unknown or mistyped key fails at compose time.
Field types are the ones OmegaConf 2.3 accepts (typing.Optional/List, no PEP 604 unions); values are validated in
__post_init__, which OmegaConf.to_object runs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from data.config import ObjectiveConfig, check_seed
from sample.sampling import GenerationConfig, apply_overrides, bad_words_ids, scalar_controls

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")  # int8: weight-only int8 linear layers (model.quant)


@dataclass
class TaskConfig(GenerationConfig, ObjectiveConfig):
    """A preset of configs/task/: the decoding controls (GenerationConfig's fields) and, read by training alone, the
    objective (data.config.ObjectiveConfig's fields)."""

    name: str = "default"  # preset: story | code | instruct | seq2seq | span_corruption | configs/task/<yours>.yaml
    bad_words: List[str] = field(default_factory=list)  # text never generated (encoded as is and after a space)
    check_syntax: bool = False  # code: report whether prompt + completion parses as Python (ast.parse)

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as e:
            raise ValueError(f"task.{e}") from None
        self.check_objective()

    def generation(self, tokenizer: object | None = None, **changes: object) -> GenerationConfig:
        """The decoding controls alone; bad_words become bad_words_ids with tokenizer (required when set)."""
        config = self.replace(**changes)
        if self.bad_words:
            if tokenizer is None:
                raise ValueError("task.bad_words needs the tokenizer to turn the words into token ids")
            words = (config.bad_words_ids or []) + bad_words_ids(tokenizer, self.bad_words)
            config = config.replace(bad_words_ids=words)
        return config


def with_overrides(base: type, name: str, **defaults: Any) -> type:
    """The dataclass `base` with one field per command-line decoding control (sampling.scalar_controls: the
    controls' names, each Optional of its type, null by default or as `defaults` says) appended: a non-null value
    overrides the task preset's. The one list of override keys is GenerationConfig's own fields."""
    fields = [(k, Optional[t], field(default=defaults.get(k))) for k, t in scalar_controls().items()]
    made = dataclasses.make_dataclass(name, fields, bases=(base,))
    made.__module__, made.__doc__ = base.__module__, base.__doc__
    return made


def overrides_of(config: Any) -> dict[str, Any]:
    """The decoding controls a with_overrides config sets (non-null)."""
    return {k: getattr(config, k) for k in scalar_controls() if getattr(config, k) is not None}


@dataclass
class _SampleArgs:
    """The schema of configs/sample.yaml: what to sample, and (appended by with_overrides) every decoding control of
    GenerationConfig as an override of the task preset (null: the preset's value)."""

    checkpoint: str = MISSING  # checkpoint directory, or a run directory (its checkpoints/latest is used)
    prompt: Optional[str] = None  # text to continue (gpt) or the input to map (t5); "" = just end-of-text
    prompt_file: Optional[str] = None  # read the prompt from this file instead (used as is, newlines included)
    prefix: Optional[str] = None  # infill mode (gpt trained with data.fim_rate > 0): the text before the gap ...
    suffix: Optional[str] = None  # ... and the text after it; the model writes the middle
    num_samples: int = 1  # samples of the prompt (num_return_sequences; beam search: the best num_samples beams)
    seed: Optional[int] = None  # sample i uses seed + i; null draws a seed (printed and recorded, so it replays)
    stream: bool = False  # print tokens as they are generated (samples then run one after another)
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:<n> | mps
    dtype: str = "auto"  # auto (bf16 on a bf16 GPU, else as stored) | float32 | bfloat16 | float16 | int8 (weights)
    out: Optional[str] = None  # append every sample to this JSONL file with its provenance (see replay)
    replay: Optional[str] = None  # regenerate the samples of a JSONL file written by out= and check they match
    logprobs: Optional[int] = None  # k: print each token's log-probability and its k likeliest alternatives
    chat: bool = False  # an interactive chat in the terminal (a model tuned with task=instruct); system= starts it
    system: Optional[str] = None  # chat: the system message every conversation starts with
    assistant: Optional[str] = None  # a smaller checkpoint with the same tokenizer drafting tokens (assisted decoding)
    compile: bool = False  # the one-token decoding step under torch.compile: 12-18 s once, then up to 3x the tokens/s
    task: TaskConfig = field(default_factory=TaskConfig)  # preset: task=story|code|instruct|seq2seq|span_corruption

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.replay is not None:
            return  # everything else comes from the file
        if self.chat:
            given = [k for k in ("prompt", "prompt_file", "prefix", "suffix", "out") if getattr(self, k) is not None]
            if given or self.stream or self.num_samples != 1:
                what = given[0] if given else "stream" if self.stream else "num_samples"
                raise ValueError(f"chat=true reads the conversation from the terminal: leave {what} out")
            return
        infill = self.prefix is not None or self.suffix is not None
        given = [k for k in ("prompt", "prompt_file") if getattr(self, k) is not None]
        if infill and given:
            raise ValueError(f"prefix/suffix (infill) and {given[0]} are both set; pass one or the other")
        if not infill and not given:
            raise ValueError(
                'no prompt: pass prompt="..." or prompt_file=<path> (prompt="" samples unconditionally), '
                'or prefix="..." suffix="..." to fill in the middle'
            )
        if len(given) == 2:
            raise ValueError("both prompt and prompt_file are set; pass only one of them")
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples} must be >= 1")
        if self.logprobs is not None and (self.logprobs < 0 or infill):
            fix = "must be >= 0" if self.logprobs < 0 else "scores completions of a prompt, not infills: leave it out"
            raise ValueError(f"logprobs={self.logprobs} {fix}")
        if self.seed is not None:
            check_seed("seed", self.seed)
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device={self.device!r} is not one of auto, cpu, cuda, cuda:<n>, mps")
        settings = self.settings()  # validates the overrides together with the preset
        if settings.num_beams > 1 and self.stream:
            raise ValueError(
                f"stream=true cannot show beam search (num_beams={settings.num_beams}): beams are only final at the "
                "end; use stream=false or num_beams=1"
            )

    def settings(self, task: TaskConfig | None = None) -> TaskConfig:
        """The task preset (self.task, or `task`) with this config's overrides (the non-null ones) and num_samples."""
        try:
            return apply_overrides(task or self.task, {**overrides_of(self), "num_return_sequences": self.num_samples})
        except ValueError as e:  # name the command-line keys, not the preset's
            raise ValueError(str(e).removeprefix("task.").replace("num_return_sequences", "num_samples")) from None


SampleConfig = with_overrides(_SampleArgs, "SampleConfig")


def recorded_task(task: TaskConfig, record: dict[str, object], edits: set[str]) -> TaskConfig:
    """task with a checkpoint's recorded decoding defaults (model.checkpoint.read_generation_defaults) applied, then
    the task.<field> values the command line edited (the names in edits) applied again over them."""
    names = {f.name for f in dataclasses.fields(TaskConfig)} - {"num_return_sequences"}
    recorded = {k: v for k, v in record.items() if k in names}
    edited = {k: getattr(task, k) for k in edits if k in names}
    try:
        return dataclasses.replace(task, **{**recorded, **edited})
    except ValueError as e:
        raise ValueError(f"the checkpoint's recorded generation defaults: {e}") from None


def register_schema() -> None:
    """Register the schemas that configs/sample.yaml and configs/task/*.yaml name in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(group="task", name="task_schema", node=TaskConfig)
