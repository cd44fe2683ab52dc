"""The command lines' shared machinery: one grammar (Hydra key=value overrides of a typed schema, composed from the
packaged configs), one error line, one debug switch and one "did you mean".

Every entry point (train, sample, prepare, evaluate, compare, export) reports a user error as a single
`error: ...` line on stderr with exit status 2 (config_error_message names the key and a likely fix);
NANOLOOM_DEBUG=1 (or Hydra's HYDRA_FULL_ERROR=1) raises it with its traceback instead (debug_enabled).
run_command is the whole life of a Compose-API command (evaluate, compare, export): -h/--help, --cfg, -m sweeps
(Hydra's own sweep grammar: key=a,b runs once per value), the schema check, the error line, Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from nanoloom.files import config_dir

Schemas = dict[str, "type | tuple[type, ...]"]  # key prefix ("" = top level) -> the dataclass(es) of its keys


def debug_enabled() -> bool:
    """True with NANOLOOM_DEBUG=1 (or Hydra's HYDRA_FULL_ERROR=1): a user error raises, showing its traceback.

    Every command-line entry point honours it (data/prepare.py and model/export.py read the same variables).
    """
    return os.environ.get("NANOLOOM_DEBUG", "") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR") == "1"


def config_error_message(e: BaseException, schemas: dict[str, type | tuple[type, ...]]) -> str:
    """One line for a Hydra/OmegaConf composition error (or any user error), naming the key and a likely fix.

    schemas maps a key prefix ("" for the top level, "task", "model", ...) to the dataclass whose field names
    "did you mean ...?" suggests from. Shared by the command-line entry points.
    """
    if isinstance(e, OSError) and e.errno is not None and e.strerror:  # the system's error, not one of ours
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror}{where}; check the path and its permissions"
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
            lines.append(_did_you_mean(cause.full_key, schemas, cause.object_type))
        elif isinstance(cause, ValidationError) and cause.full_key:
            lines.append(_expected_type(cause))
    return " ".join(line.strip() for line in lines if line)


def _did_you_mean(full_key: str, schemas: dict[str, type | tuple[type, ...]], node_type: object = None) -> str:
    """A close valid key for a mistyped one ("tempreature" -> "temperature"), else the valid keys; or "".

    node_type: the dataclass the key was looked up in, when known (model: GPTConfig, not GPTConfig or T5Config).
    """
    parent, _, key = full_key.rpartition(".")
    schema = node_type if dataclasses.is_dataclass(node_type) else schemas.get(parent)
    if schema is None:
        return ""
    classes = schema if isinstance(schema, tuple) else (schema,)  # e.g. model: GPTConfig or T5Config
    names = sorted({f.name for cls in classes for f in dataclasses.fields(cls)})
    hint = difflib.get_close_matches(key, names, n=1)
    if hint:
        return f"(did you mean {parent + '.' if parent else ''}{hint[0]}?)"
    return f"(valid {parent + ' ' if parent else ''}keys: {', '.join(names)})"


# OmegaConf's name of the type a value failed to convert to -> what to write instead
_TYPE_HINTS = {"Integer": "a whole number", "Float": "a number", "Boolean": "true or false", "bool": "true or false"}


def _expected_type(cause: ValidationError) -> str:
    """The fix for a value of the wrong type: what the key takes ("set model.n_layer to a whole number")."""
    text = str(cause)
    found = re.search(r"converted to (\w+)|not a valid (bool)", text)
    if found:
        return f"(set {cause.full_key} to {_TYPE_HINTS.get(found.group(1) or found.group(2), found.group(1))})"
    if "is not a ListConfig" in text:
        return f"(set {cause.full_key} to a list: {cause.full_key}='[a, b]')"
    return f"(check the type of {cause.full_key}: its schema dataclass says what it takes)"


# ----------------------------------------------------------------------------------------------------------------
# A Compose-API command: evaluate, compare, export


def compose_command(
    name: str, schema: type, overrides: list[str], register: Callable[[], None] | None = None
) -> DictConfig:
    """configs/<name>.yaml composed with overrides, against schema (registered as <name>_schema; register() stores
    the schemas of the groups it uses); a key the schema does not have (also one added with +key=) is refused
    naming the valid keys."""
    ConfigStore.instance().store(name=f"{name}_schema", node=schema)
    if register is not None:
        register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=name):
        cfg = compose(config_name=name, overrides=overrides)
    known = {f.name for f in dataclasses.fields(schema)}
    for key in cfg:
        if key not in known:
            raise ValueError(f"unknown key {key}; valid keys: {', '.join(sorted(known))}")
    return cfg


def to_schema(cfg: DictConfig) -> Any:
    """The validated dataclass of a composed config; a required key left out is named."""
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ValueError(f"{e.full_key}= is required (see --help)") from None


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of a -m sweep: one per combination of the comma-separated values (Hydra's basic
    sweeper's rule: key=a,b x other=1,2 runs four jobs, in that order)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def run_command(
    name: str,
    schema: type,
    body: Callable[[Any], Any],
    argv: list[str],
    usage: str,
    schemas: Schemas | None = None,
    sweeps: bool = False,
    register: Callable[[], None] | None = None,
) -> list[Any]:
    """Run a Compose-API command: `-h`/`--help` prints usage; `--cfg` (or `--cfg job`) prints the composed config;
    `-m`/`--multirun` (when sweeps) runs body once per job of sweep_jobs; else body(the validated schema) once.
    Returns body's results. A user error is one `error:` line and exit status 2; warnings are one line each."""
    args = list(argv)
    if "-h" in args or "--help" in args:
        sys.stdout.write(usage)
        return []
    multirun = any(a in ("-m", "--multirun") for a in args)
    show_cfg = "--cfg" in args
    args = [a for a in args if a not in ("-m", "--multirun", "--cfg", "job")]
    schemas = schemas if schemas is not None else {"": schema}
    results = []
    with one_line_errors(schemas):
        if multirun and not sweeps:
            raise ValueError(f"{name} runs once; -m (a sweep) is not one of its options")
        jobs = sweep_jobs(args) if multirun else [args]
        for i, job in enumerate(jobs):
            cfg = compose_command(name, schema, job, register)
            if show_cfg:
                sys.stdout.write(OmegaConf.to_yaml(cfg))
                continue
            if multirun:
                print(f"[{name} {i + 1}/{len(jobs)}] {' '.join(job)}", file=sys.stderr, flush=True)
            results.append(body(to_schema(cfg)))
    return results


@contextlib.contextmanager
def one_line_errors(schemas: Schemas) -> Iterator[None]:
    """A command's body: a user error (bad override, a missing file, a bad value) is one `error:` line and exit status
    2 (NANOLOOM_DEBUG=1: the traceback), a warning one `warning:` line, Ctrl-C exit status 130, and a stdout closed
    early (piped into head) exit status 1 without a traceback."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            yield
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except (HydraException, OmegaConfBaseException, ValueError, OSError) as e:
            if debug_enabled():
                raise
            print(f"error: {config_error_message(e, schemas)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            sys.exit(130)


def _show_warning(message: Warning | str, *_: object, **__: object) -> None:
    print(f"warning: {message}", file=sys.stderr)
