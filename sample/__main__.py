"""`python -m sample checkpoint=<dir> prompt="..." [task=story|code|seq2seq] [key=value ...]`: print completions.

A gpt checkpoint continues the prompt and prints prompt + completion; a t5 checkpoint encodes the prompt and prints
its decoder's output alone. num_beams > 1 runs beam search and prints the num_samples best beams.

The config (configs/sample.yaml, schema in sample/config.py) is composed with Hydra's Compose API rather than
@hydra.main, so sampling writes no run directory or log file and every user error (bad override, unknown task,
missing checkpoint) is one `error: ...` line on stderr with exit status 2. HYDRA_FULL_ERROR=1 shows tracebacks.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from model.checkpoint import load_model, read_model_json
from sample.config import SampleConfig, TaskConfig, config_error_message, register_schema
from sample.generate import complete, model_kind, resolve_device, stream

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SCHEMAS = {"": SampleConfig, "task": TaskConfig}  # where "did you mean ...?" looks for keys
FREE_TEXT_KEYS = ("checkpoint", "prompt", "prompt_file")  # values taken verbatim, outside Hydra's override grammar
USAGE = """\
usage: python -m sample checkpoint=<run or checkpoint dir> (prompt="..." | prompt_file=<path>) [key=value ...]

keys: task=story|code|seq2seq|span_corruption  num_samples=N  max_new_tokens=N  temperature=T  top_k=K  top_p=P
      seed=S  stream=true  num_beams=N  length_penalty=L  early_stopping=true  device=auto|cpu|cuda|mps
      task.stop='[...]'  (all keys: configs/sample.yaml, configs/task/*.yaml)
a gpt checkpoint prints prompt + completion; a t5 checkpoint (prompt = encoder input) prints the output alone
checkpoint=, prompt= and prompt_file= take their value verbatim (quote it for the shell only); other values follow
Hydra's override grammar. options: --cfg  print the composed config and exit;  -h, --help  this message
"""


def split_free_text(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separate checkpoint=, prompt= and prompt_file= (taken verbatim) from the Hydra overrides.

    Hydra's override grammar reserves characters prompts are full of ("Once upon a time," is a sweep,
    "def fibonacci(n):" a parse error), so these values skip it. One pair of surrounding quotes is removed, so the
    Hydra habit prompt='"..."' works too.
    """
    overrides, free = [], {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in FREE_TEXT_KEYS:
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            free[key] = value
        else:
            overrides.append(arg)
    return overrides, free


def compose_config(args: list[str]) -> DictConfig:
    """configs/sample.yaml composed with the command-line arguments (schema-checked, not yet validated)."""
    overrides, free = split_free_text(args)
    register_schema()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="sample"):
        cfg = compose(config_name="sample", overrides=overrides)
    for key, value in free.items():
        cfg[key] = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)  # "${" is literal text here
    # "+key=value" appends keys the schema does not have, and to_object would drop them silently
    for node, schema, prefix in ((cfg, SampleConfig, ""), (cfg.task, TaskConfig, "task.")):
        known = {f.name for f in dataclasses.fields(schema)}
        for key in node:
            if key not in known:
                raise ValueError(f"unknown key {prefix}{key}; valid keys: {', '.join(sorted(known))}")
    return cfg


def load_config(args: list[str]) -> SampleConfig:
    """The validated SampleConfig for command-line arguments (key=value ...)."""
    cfg = compose_config(args)
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ValueError(f"{e.full_key} is required: pass {e.full_key}=<run or checkpoint directory>") from None


def read_prompt(cfg: SampleConfig) -> str:
    """The prompt text, from prompt= or prompt_file=."""
    if cfg.prompt is not None:
        return cfg.prompt
    try:
        return Path(cfg.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read prompt_file={cfg.prompt_file!r} ({e}); pass a readable text file") from None


def run(cfg: SampleConfig) -> None:
    """Load the checkpoint and print cfg.num_samples completions of the prompt to stdout."""
    settings = cfg.settings()
    prompt = read_prompt(cfg)
    device = resolve_device(cfg.device)
    model, tokenizer = load_model(cfg.checkpoint, device=device)
    kind = model_kind(model)
    if kind not in ("gpt", "t5"):
        raise ValueError(f"checkpoint={cfg.checkpoint!r} holds a {kind} model; python -m sample needs gpt or t5")
    step = read_model_json(cfg.checkpoint).get("meta", {}).get("step")
    beams = settings.num_beams > 1
    print(
        f"sampling {cfg.checkpoint} ({kind}, {model.num_params() / 1e6:.2f}M params"
        + (f", step {step}" if step is not None else "")
        + f") on {device}, task={settings.name}"
        + (f", beam search with {settings.num_beams} beams" if beams else "")
        + ("; t5: the prompt is the encoder input, each output is printed alone" if kind == "t5" else ""),
        file=sys.stderr,
    )
    if beams and any(getattr(cfg, k) is not None for k in ("temperature", "top_k", "top_p", "seed")):
        warnings.warn(
            f"num_beams={settings.num_beams}: beam search is deterministic; temperature, top_k, top_p and seed "
            "are not used",
            stacklevel=2,
        )
    args = dict(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        stop=list(settings.stop),
    )
    echo = prompt if kind == "gpt" else ""  # gpt: prompt + completion; t5: the output alone
    label = "beam" if beams else ("sample" if kind == "gpt" else "output")
    n = cfg.num_samples
    if cfg.stream:  # one sample after another, each printed as it is generated
        for i in range(n):
            sys.stdout.write(f"--- {label} {i + 1}/{n} ---\n{echo}")
            sys.stdout.flush()
            seed = None if cfg.seed is None else cfg.seed + i
            for piece in stream(model, tokenizer, prompt, seed=seed, **args):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    else:  # all samples as one batch; with beam search, the num_samples best beams, best first
        beam_args = dict(
            num_beams=settings.num_beams, length_penalty=settings.length_penalty, early_stopping=settings.early_stopping
        )
        for i, text in enumerate(complete(model, tokenizer, prompt, num_samples=n, seed=cfg.seed, **args, **beam_args)):
            sys.stdout.write(f"--- {label} {i + 1}/{n} ---\n{echo}{text}\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m sample` and the nanoloom-sample script."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        sys.stdout.write(USAGE)
        return
    with warnings.catch_warnings():  # warnings become one "warning: ..." line on stderr, for this run only
        warnings.showwarning = _show_warning
        _main(args)


def _show_warning(message: Warning | str, *_: object, **__: object) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _main(args: list[str]) -> None:
    try:
        if "--cfg" in args:
            sys.stdout.write(OmegaConf.to_yaml(compose_config([a for a in args if a != "--cfg"])))
            return
        run(load_config(args))
    except (HydraException, OmegaConfBaseException, ValueError, FileNotFoundError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {config_error_message(e, SCHEMAS)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
