"""`nanoloom <command> [key=value ...]`: one front door to every command, beside the `python -m ...` forms.

    nanoloom train experiment=demo          python -m train
    nanoloom sample checkpoint=... prompt=  python -m sample
    nanoloom prepare data=shakespeare       python -m data.prepare
    nanoloom evaluate checkpoint=... file=  python -m train.evaluate
    nanoloom compare runs='runs/sweep/*'    python -m train.compare
    nanoloom export checkpoint=... out=     python -m model.export
    nanoloom serve checkpoint=...           python -m sample.serve

Each command keeps its own grammar, help (`nanoloom <command> --help`) and one-line errors; this file only picks the
command's module by name and runs its main() with the rest of the command line. Run as an installed console script,
it imports nanoloom's packages, never a same-named model.py or data/ of the directory it is started in.
"""

from __future__ import annotations

import importlib
import sys

# command -> (the module whose main() runs it, what it does); the module is imported only when its command runs
COMMANDS = {
    "train": ("train.__main__", "train a GPT or T5 (Hydra: experiment=, model=, data=, trainer.* ...)"),
    "sample": ("sample.__main__", "print completions of a checkpoint (story, code, T5 outputs, infill)"),
    "prepare": ("data.prepare", "tokenize a corpus into the cache (training does it when needed)"),
    "evaluate": ("train.evaluate", "score a checkpoint on a prepared split, a data= config or a text file"),
    "compare": ("train.compare", "compare runs: seeds grouped, mean curves with 95% CIs, Welch's t-test"),
    "export": ("model.export", "write a checkpoint as a folder transformers loads"),
    "serve": ("sample.serve", "serve a checkpoint over HTTP: OpenAI's API, continuous batching, a web playground"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return (
        "usage: nanoloom <command> [key=value ...]   (nanoloom <command> --help: its keys)\n\ncommands:\n"
        + "\n".join(lines)
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    """Run `nanoloom <command> ...`: the command's module's main() sees the rest as its own command line."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        import difflib

        hint = difflib.get_close_matches(command, COMMANDS, n=1)
        fix = f"did you mean {hint[0]}?" if hint else f"choose one of {', '.join(COMMANDS)}"
        print(f"error: unknown command {command!r}; {fix} (nanoloom --help)", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv = [f"nanoloom {command}", *rest]  # Hydra's entry points read the command line from sys.argv
    module.main()


if __name__ == "__main__":
    main()
