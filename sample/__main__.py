"""`python -m sample checkpoint=<dir> prompt="..." [task=story|code|seq2seq] [key=value ...]`: print completions;
`python -m sample checkpoint=<dir> chat=true`: chat in the terminal with a model tuned by task=instruct.

Without task=, the checkpoint's recorded decoding defaults are used (the task preset it was trained with, or a
Hugging Face folder's generation_config.json); checkpoints without a record use the story preset. task=<preset>,
task.<field>=... and the top-level controls (temperature=, top_p=, ...) override them.
A gpt checkpoint continues the prompt and prints prompt + completion; a t5 checkpoint encodes the prompt and prints
its decoder's output alone. num_beams > 1 runs beam search and prints the num_samples best beams.

The config (configs/sample.yaml, schema in sample/config.py) is composed with Hydra's Compose API rather than
@hydra.main, so sampling writes no run directory or log file and every user error (bad override, unknown task,
missing checkpoint) is one `error: ...` line on stderr with exit status 2. NANOLOOM_DEBUG=1 (or HYDRA_FULL_ERROR=1)
shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from data.chat import render
from model.checkpoint import (
    is_hf_source,
    load_model,
    read_generation_defaults,
    read_model_json,
    resolve_checkpoint,
)
from model.quant import quantize_int8
from nanoloom.cli import config_error_message, one_line_errors
from nanoloom.device import inference_dtype, resolve_device
from nanoloom.files import config_dir
from sample.config import (
    SampleConfig,
    TaskConfig,
    recorded_task,
    register_schema,
)
from sample.generate import (
    Completion,
    generate,
    infill,
    model_kind,
    new_token_budget,  # the rule generation applies, checked before the header
    prompt_ids,
    row_seeds,
)
from sample.provenance import append_records, check_identity, checkpoint_identity, read_records, sample_record
from sample.sampling import GenerationConfig
from sample.stopping import parses

CONFIG_DIR = config_dir()
SCHEMAS = {"": SampleConfig, "task": TaskConfig}  # where "did you mean ...?" looks for keys
# values taken verbatim, outside Hydra's override grammar
FREE_TEXT_KEYS = ("checkpoint", "prompt", "prompt_file", "prefix", "suffix", "out", "replay")
USAGE = """\
usage: python -m sample checkpoint=<run or checkpoint dir> (prompt="..." | prompt_file=<path>) [key=value ...]
       python -m sample checkpoint=<dir> prefix="..." suffix="..."   fill in the middle (a model trained with FIM)
       python -m sample replay=<samples.jsonl>                         regenerate recorded samples and compare
       python -m sample checkpoint=<dir> chat=true [system="..."]     chat in the terminal (a task=instruct model)

keys: task=story|code|instruct|seq2seq|span_corruption (default: the one the checkpoint records, else story)
      num_samples=N  seed=S  stream=true  out=<samples.jsonl>
      max_new_tokens=N  min_new_tokens=N  do_sample=true|false  temperature=T  top_k=K  top_p=P  min_p=P
      typical_p=P  repetition_penalty=R  presence_penalty=P  frequency_penalty=F  no_repeat_ngram_size=N
      num_beams=N  length_penalty=L  early_stopping=true  device=auto|cpu|cuda|mps
      task.stop_strings='[...]'  task.bad_words='[...]'  task.eos_token_id='[...]'  (all keys: configs/sample.yaml,
      configs/task/*.yaml; the controls and their order: sample/sampling.py)
a gpt checkpoint prints prompt + completion; a t5 checkpoint (prompt = encoder input) prints the output alone
checkpoint=, prompt=, prompt_file=, prefix=, suffix=, out= and replay= take their value verbatim (quote it for the
shell only); other values follow Hydra's override grammar.
options: --cfg  print the composed config and exit;  -h, --help  this message
a user error is one "error: ..." line (exit status 2); NANOLOOM_DEBUG=1 shows its traceback instead
"""


def split_free_text(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separate the FREE_TEXT_KEYS (checkpoint=, prompt=, ...: taken verbatim) from the Hydra overrides.

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


def task_edits(args: list[str]) -> set[str] | None:
    """None when the command line names a task preset (task=...); else the task.<field> keys it sets, which then
    edit the checkpoint's recorded task instead of the default preset."""
    edits = set()
    for arg in split_free_text(args)[0]:
        key = arg.partition("=")[0].lstrip("+~")
        if key == "task":
            return None
        if key.startswith("task."):
            edits.add(key.removeprefix("task."))
    return edits


def load_config(args: list[str]) -> SampleConfig:
    """The validated SampleConfig for command-line arguments (key=value ...)."""
    cfg = compose_config(args)
    if cfg.replay is not None and OmegaConf.is_missing(cfg, "checkpoint"):
        cfg.checkpoint = ""  # replay reads each record's checkpoint
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


def check_out(out: str) -> None:
    """Refuse an out= file that cannot be appended to before sampling rather than after."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"out={out!r} is a directory; pass a file for the records, e.g. out=samples.jsonl")
    parent = next(p for p in path.absolute().parents if p.exists())  # the nearest folder that exists
    if not parent.is_dir():
        raise ValueError(f"out={out!r} cannot be created: {parent} is a file; choose another path")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"out={out!r} cannot be created: {parent} is not writable; choose another path")


def _model_dtype(model: object) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.float32


def _load(checkpoint: str, device: torch.device, dtype: str = "auto") -> tuple[object, object, str]:
    """(model, tokenizer, kind) in dtype: auto (bf16 on a bf16 GPU: nanoloom.device.inference_dtype, else as
    stored), a float dtype's name, or int8 (model.quant). A damaged file is a one-line ValueError."""
    weights = inference_dtype(device) if dtype == "auto" else getattr(torch, "float32" if dtype == "int8" else dtype)
    model, tokenizer = load_model(checkpoint, device=device, dtype=weights)
    if dtype == "int8":
        quantize_int8(model)
    kind = model_kind(model)
    if kind not in ("gpt", "t5", "bart"):
        raise ValueError(f"checkpoint={checkpoint!r} holds a {kind} model; python -m sample needs gpt, t5 or bart")
    return model, tokenizer, kind


def _assistant(checkpoint: str, tokenizer: object, device: torch.device, dtype: str) -> object:
    """The draft model of assistant=<checkpoint>: a gpt with the sampled checkpoint's tokenizer."""
    source = checkpoint if is_hf_source(checkpoint) else str(resolve_checkpoint(checkpoint))
    model, draft_tokenizer, kind = _load(source, device, dtype)
    if kind != "gpt" or draft_tokenizer.spec() != tokenizer.spec():
        raise ValueError(
            f"assistant={checkpoint!r} must be a gpt with the sampled checkpoint's tokenizer (got a {kind} with "
            f"{getattr(draft_tokenizer, 'name', 'another')} tokenizer); train a small model on the same data"
        )
    return model


def run(cfg: SampleConfig, edits: set[str] | None = None) -> None:
    """Load the checkpoint and print cfg.num_samples completions (or infills) to stdout.

    edits: None uses cfg.task as composed (task= was given); a set (see task_edits) starts from the checkpoint's
    recorded task when it has one, with those task.<field> edits and cfg's overrides on top.
    """
    if cfg.replay is not None:
        replay(cfg.replay, cfg.device)
        return
    if cfg.chat:
        chat(cfg, edits)
        return
    settings = cfg.settings()
    infilling = cfg.prefix is not None or cfg.suffix is not None
    prefix, suffix = cfg.prefix or "", cfg.suffix or ""
    prompt = "" if infilling else read_prompt(cfg)
    if cfg.out is not None:
        check_out(cfg.out)
    device = resolve_device(cfg.device)
    # a run directory's `latest` is read once: a run still training cannot swap the checkpoint mid-way
    source = cfg.checkpoint if is_hf_source(cfg.checkpoint) else str(resolve_checkpoint(cfg.checkpoint))
    model, tokenizer, kind = _load(source, device, cfg.dtype)
    assistant = _assistant(cfg.assistant, tokenizer, device, cfg.dtype) if cfg.assistant is not None else None
    if assistant is not None and infilling:
        raise ValueError("assistant= drafts continuations; infill (prefix/suffix) runs without it: leave one out")
    record = read_generation_defaults(source) if edits is not None else None
    if record:
        settings = cfg.settings(recorded_task(cfg.task, record, edits))
    generation = settings.generation(tokenizer)
    if not infilling:  # a max_length the prompt already fills is refused before anything is printed
        new_token_budget(generation, len(prompt_ids(tokenizer, prompt, kind)), kind)
    seed = row_seeds(cfg.seed, 1)[0]  # drawn when null, and printed, so any run can be repeated
    beams = settings.num_beams > 1
    _print_header(cfg, source, model, kind, device, settings, bool(record), infilling, seed)
    if beams and any(getattr(cfg, k) is not None for k in ("temperature", "top_k", "top_p", "seed")):
        warnings.warn(
            f"num_beams={settings.num_beams}: beam search is deterministic; temperature, top_k, top_p and seed "
            "are not used",
            stacklevel=2,
        )
    echo = prefix if infilling else (prompt if kind == "gpt" else "")  # an encoder-decoder prints its output alone
    label = "beam" if beams else ("sample" if kind == "gpt" else "output")
    n = cfg.num_samples

    bar = not cfg.stream  # a bar of the decoding steps on stderr, on a terminal only (a stream shows the text)

    def one_call(config: GenerationConfig, call_seed: int, on_text=None) -> list[Completion]:
        if infilling:
            return infill(model, tokenizer, prefix, suffix, config, seed=call_seed, on_text=on_text, progress=bar,
                          compile=cfg.compile)  # fmt: skip
        scores = {"output_scores": cfg.logprobs is not None, "top_logprobs": cfg.logprobs or 0}
        return generate(model, tokenizer, prompt, config, seed=call_seed, on_text=on_text, progress=bar,
                        assistant_model=assistant, compile=cfg.compile, **scores)[0]  # fmt: skip

    parsed: list[bool | None] = []  # per sample, with check_syntax: whether prompt + completion parses
    if cfg.stream:  # one sample after another, each printed as it is generated (same samples as a batch)
        completions = []
        for i in range(n):
            sys.stdout.write(f"--- {label} {i + 1}/{n} ---\n{echo}")
            sys.stdout.flush()
            write = lambda _row, piece: (sys.stdout.write(piece), sys.stdout.flush())  # noqa: E731
            completions += one_call(generation.replace(num_return_sequences=1), seed + i, write)
            sys.stdout.write(f"{suffix}\n")
            c = completions[-1]
            parsed.append(_report(settings, _full_text(c, prompt, prefix, suffix, infilling), c.finish_reason))
            _print_logprobs(c, tokenizer, i, n)
    else:  # all samples as one batch; with beam search, the num_samples best beams, best first
        completions = one_call(generation, seed)
        for i, c in enumerate(completions):
            sys.stdout.write(f"--- {label} {i + 1}/{n} ---\n{echo}{c.text}{suffix}\n")
            sys.stdout.flush()
            parsed.append(_report(settings, _full_text(c, prompt, prefix, suffix, infilling), c.finish_reason))
            _print_logprobs(c, tokenizer, i, n)
    if settings.check_syntax and n > 1:
        print(f"{sum(parsed)}/{n} samples parse as Python", file=sys.stderr)
    if cfg.out is not None:
        identity = checkpoint_identity(source)
        text_input = {"prefix": prefix, "suffix": suffix} if infilling else {"prompt": prompt}
        records = [
            sample_record(
                identity,
                task=settings.name,
                mode="infill" if infilling else "complete",
                text_input=text_input,
                completion=c,
                generation=generation.to_dict(),
                index=i,
                device=device,
                dtype=_model_dtype(model),
                parses=parsed[i],
            )
            for i, c in enumerate(completions)
        ]
        _write_records(cfg.out, records)
    sys.stdout.flush()


CHAT_HELP = "/reset forgets the conversation, /set key=value changes a decoding control, Ctrl-D quits"


def chat(cfg: SampleConfig, edits: set[str] | None = None, lines: Any = None) -> list[dict[str, str]]:
    """chat=true: a conversation in the terminal with a model tuned for chat (task=instruct), loaded once.

    Each line read is the user's turn; the reply streams as it is generated (after <|assistant|>, up to <|end|>).
    The history is kept while it fits in the model's context with room for a reply; older turns (the system
    message excepted) are dropped first. /reset, /set key=value (a decoding control: temperature=0.5,
    max_new_tokens=64 ...), Ctrl-D (end of input) ends it. lines: the input (default: stdin). Returns the
    conversation as it ended."""
    device = resolve_device(cfg.device)
    source = cfg.checkpoint if is_hf_source(cfg.checkpoint) else str(resolve_checkpoint(cfg.checkpoint))
    model, tokenizer, kind = _load(source, device, cfg.dtype)
    if kind != "gpt" or tokenizer.chat_ids is None:
        raise ValueError(
            f"chat=true needs a gpt tuned for chat (task=instruct: its tokenizer has the chat ids); {cfg.checkpoint} "
            "is not one: sample it with prompt=..."
        )
    record = read_generation_defaults(source) if edits is not None else None
    settings = cfg.settings(recorded_task(cfg.task, record, edits)) if record else cfg.settings()
    generation = settings.generation(tokenizer).replace(eos_token_id=[tokenizer.chat_ids[-1], tokenizer.eot_id])
    seed = row_seeds(cfg.seed, 1)[0]
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(system)
    print(f"chat with {cfg.checkpoint} on {device}, seed={seed}: {CHAT_HELP}", file=sys.stderr, flush=True)
    interactive = lines is None and sys.stdin.isatty()
    for turn, line in enumerate(_user_lines(lines, interactive)):
        text = line.rstrip("\n")
        if text.strip() in ("/reset", "/set") or text.startswith("/set "):
            if text.strip() == "/reset":
                messages = list(system)
                print("(conversation reset)", file=sys.stderr, flush=True)
            else:
                generation = _set_control(generation, text.removeprefix("/set").strip())
            continue
        messages.append({"role": "user", "content": text})
        ids = _fit_history(tokenizer, messages, generation, model.config.block_size, len(system))
        write = lambda _row, piece: (sys.stdout.write(piece), sys.stdout.flush())  # noqa: E731
        sys.stdout.write("assistant> " if interactive else "")
        reply = generate(model, tokenizer, [""], generation, seed=seed + turn, on_text=write, input_ids=[ids],
                         compile=cfg.compile)[0][0]  # fmt: skip
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": reply.text})
    return messages


def _user_lines(lines: Any, interactive: bool) -> Any:
    """The user's turns: the given lines, or stdin read line by line (with a prompt on a terminal) until Ctrl-D."""
    if lines is not None:
        yield from lines
        return
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            sys.stderr.write("\n")
            return
        if not interactive and line == "":
            return
        if line.strip():
            yield line


def _set_control(generation: GenerationConfig, assignment: str) -> GenerationConfig:
    """/set key=value: a decoding control changed for the rest of the chat; a bad one is a warning, not the end."""
    key, _, value = assignment.partition("=")
    key, value = key.strip(), value.strip()
    parsed: Any = value
    for cast in (int, float):
        try:
            parsed = cast(value)
            break
        except ValueError:
            continue
    if value.lower() in ("true", "false"):
        parsed = value.lower() == "true"
    try:
        changes = {key: parsed, **({"do_sample": parsed > 0} if key == "temperature" else {})}
        updated = generation.replace(**changes)
    except (TypeError, ValueError) as e:
        print(f"warning: /set {assignment}: {e}", file=sys.stderr, flush=True)
        return generation
    print(f"({key} = {parsed!r})", file=sys.stderr, flush=True)
    return updated


def _fit_history(
    tokenizer: Any, messages: list[dict[str, str]], generation: GenerationConfig, block_size: int, keep: int
) -> list[int]:
    """The conversation's ids with the generation prompt, its oldest turns after the first `keep` (the system
    message) dropped until it leaves room for max_new_tokens in the model's context; the latest turn always stays."""
    room = block_size - (generation.max_new_tokens or 64)
    while True:
        ids = render(tokenizer, messages, add_generation_prompt=True)[0]
        if len(ids) <= room or len(messages) <= keep + 1:
            return ids
        del messages[keep]


def _print_logprobs(c: Completion, tokenizer: Any, i: int, n: int) -> None:
    """With logprobs=k: a line per generated token, its text, log-probability and the k likeliest alternatives."""
    if c.logprobs is None:
        return
    lines = [f"--- logprobs {i + 1}/{n} ---"]
    for t, lp, top in zip(c.token_ids, c.logprobs, c.top_logprobs):
        others = "  ".join(f"{tokenizer.decode([a])!r} {v:.3f}" for a, v in top.items())
        lines.append(f"{tokenizer.decode([t])!r:>16} {lp:8.3f}" + (f"  | {others}" if others else ""))
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def _print_header(
    cfg: SampleConfig,
    source: str,
    model: Any,
    kind: str,
    device: Any,
    settings: Any,
    recorded: bool,
    infilling: bool,
    seed: int,
) -> None:
    """The line on stderr that says what is sampled, from what, and how (the seed, so any run can be repeated)."""
    step = read_model_json(source).get("meta", {}).get("step")
    beams = settings.num_beams > 1
    print(
        f"sampling {cfg.checkpoint} ({kind}, {model.num_params() / 1e6:.2f}M params"
        + (f", step {step}" if step is not None else "")
        + f") on {device}, task={settings.name}"
        + (" (recorded in the checkpoint)" if recorded else "")
        + (", fill in the middle" if infilling else "")
        + (f", beam search with {settings.num_beams} beams" if beams else f", seed={seed}")
        + (f"; {kind}: the prompt is the encoder input, each output is printed alone" if kind != "gpt" else ""),
        file=sys.stderr,
    )


def _write_records(out: str, records: list[dict[str, Any]]) -> None:
    """Append the samples' records to out=; a failed write is a one-line error and leaves the file as it was."""
    try:
        append_records(out, records)
    except OSError as e:  # disk full, quota ...: append_records left the file as it was
        raise ValueError(
            f"cannot write the sample records to out={out!r}: {e.strerror or e}; the file is unchanged "
            "(the samples are printed above)"
        ) from e
    print(f"wrote {len(records)} sample record(s) to {out}", file=sys.stderr)


def _full_text(c: Completion, prompt: str, prefix: str, suffix: str, infilling: bool) -> str:
    """The whole document a completion makes: prompt + completion, or prefix + middle + suffix."""
    return prefix + c.text + suffix if infilling else prompt + c.text


def _report(settings: TaskConfig, document: str, finish_reason: str) -> bool | None:
    """After each sample (stderr): why it ended and, for code presets, whether the whole document parses (returned;
    None without check_syntax)."""
    note, ok = f"[ended: {finish_reason}", None
    if settings.check_syntax:
        ok, error = parses(document)
        note += "; parses as Python" if ok else f"; does not parse as Python: {error}"
    print(note + "]", file=sys.stderr)
    return ok


def replay(path: str, device_name: str = "auto") -> None:
    """Regenerate every record of a JSONL file written by out= and compare; exit status 1 if any differs."""
    records = read_records(path)
    device = resolve_device(device_name)
    loaded: dict[str, tuple[object, object, str, dict]] = {}
    same = 0
    for n, record in enumerate(records, 1):
        checkpoint = record["checkpoint"]
        if checkpoint not in loaded:
            try:
                model, tokenizer, kind = _load(checkpoint, device)
            except (ValueError, OSError) as e:  # the checkpoint a record names is missing or damaged: say which record
                raise ValueError(f"{path}, record {n}: {config_error_message(e, SCHEMAS)}") from e
            loaded[checkpoint] = (model, tokenizer, kind, checkpoint_identity(checkpoint))
        model, tokenizer, kind, identity = loaded[checkpoint]
        check_identity(record, identity)
        if record.get("device") not in (None, device.type):
            warnings.warn(f"record {n} was sampled on {record['device']}, replayed on {device.type}", stacklevel=2)
        config = GenerationConfig(**record["generation"])
        beams = config.num_beams > 1
        index = record.get("index", 0) if beams else 0
        if not beams:
            config = config.replace(num_return_sequences=1)  # a row samples alone exactly as in its batch
        if record["mode"] == "infill":
            out = infill(model, tokenizer, record["prefix"], record["suffix"], config, seed=record["seed"])
        else:
            out = generate(model, tokenizer, record["prompt"], config, seed=record["seed"])[0]
        c = out[index]
        match = c.text == record["completion"] and c.token_ids == record["token_ids"]
        same += match
        status = "same" if match else "DIFFERENT"
        print(f"--- record {n}/{len(records)}: {status} (seed {record['seed']}) ---\n{c.text}")
        if not match:
            print(f"recorded:\n{record['completion']}", file=sys.stderr)
    print(f"replayed {len(records)} sample(s) from {path}: {same} reproduced exactly", file=sys.stderr)
    if same != len(records):
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m sample` and the nanoloom-sample script."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        sys.stdout.write(USAGE)
        return
    with one_line_errors(SCHEMAS):  # OSError too: an unwritable out= ...
        if "--cfg" in args:
            sys.stdout.write(OmegaConf.to_yaml(compose_config([a for a in args if a != "--cfg"])))
            return
        run(load_config(args), task_edits(args))


if __name__ == "__main__":
    main()
