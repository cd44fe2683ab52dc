"""Import rules of DESIGN.md, enforced by reading the source with ast (no imports executed).

nanoloom -> model, data -> sample -> train: nanoloom/ (atomic files, devices, the network check) imports nothing
of ours, model/ and data/ nothing but nanoloom/ (allowed edges, EXTRA_EDGES: model/ files
that rebuild, export or import tokenizers ask the data.tokenizer package, by that name only and inside functions;
no model/ file knows a tokenizer file format), sample never imports train, hydra and
omegaconf stop at the entry points (and train/sweep.py, the callback Hydra calls when a multirun ends), wandb is
imported lazily and only by train/log.py; huggingface_hub, tokenizers and transformers only lazily where the hub
and Hugging Face files are read.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nanoloom", "model", "data", "sample", "train")
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
THIRD_PARTY = {
    "nanoloom": {"torch"},  # and hydra/omegaconf in nanoloom/cli.py alone (HYDRA_FILES)
    "model": {"torch", "safetensors", "tqdm"},  # tqdm: export's progress bar
    "data": {"numpy", "torch", "tiktoken", "tqdm", "huggingface_hub"},
    # tqdm: progress bars of long generations, on a terminal only; fastapi, pydantic, uvicorn: the server (serve.py)
    "sample": {"torch", "tqdm", "fastapi", "pydantic", "uvicorn"},
    # plots, compare, SLURM, evaluation's progress bar
    "train": {"torch", "safetensors", "numpy", "matplotlib", "scipy", "yaml", "submitit", "tqdm"},
}
OURS_ALLOWED = {
    "nanoloom": {"nanoloom"},
    "model": {"nanoloom", "model"},
    "data": {"nanoloom", "data"},
    "sample": {"nanoloom", "sample", "model", "data"},
    "train": set(PACKAGES),
}
# the entry points, and train/sweep.py: the callback Hydra itself calls when a multirun ends
HYDRA_FILES = {
    "nanoloom/cli.py",  # the command lines' shared machinery (Compose API, errors, sweeps)
    "train/__main__.py",
    "train/config.py",
    "train/sweep.py",
    "sample/__main__.py",
    "sample/config.py",
    "data/prepare.py",
}
LAZY_ONLY = {
    "wandb": {"train/log.py"},
    "submitit": {"train/dist.py"},  # optional: SLURM jobs of hydra/launcher=slurm
    "huggingface_hub": {"data/corpora.py", "model/hf.py"},
    "tokenizers": {"data/tokenizer/bpe.py", "data/tokenizer/hf.py"},  # bpe training, tokenizer.json files
    "transformers": {"data/tokenizer/files.py"},  # optional: spiece.model -> tokenizer.json when a folder lacks one
}
EXTRA_EDGES = {
    ("model/checkpoint.py", "data.tokenizer"),
    ("model/export.py", "data.tokenizer"),
    ("model/hf.py", "data.tokenizer"),
    ("model/gpt.py", "sample.generate"),  # GPT.generate, nanoGPT's method, runs the one generation core
}  # function-level only, and exactly the package: data.tokenizer.<module> is the package's business


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, id(node) in top))
    return found


FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_import_rules(path: Path):
    rel = str(path.relative_to(ROOT))
    pkg = rel.split("/")[0]
    for module, top_level in imports(path):
        root = module.split(".")[0]
        if root in STDLIB:
            continue
        if rel == "model/config.py":
            pytest.fail(f"{rel} must stay stdlib-only, imports {module}")
        if root in ("hydra", "omegaconf"):
            assert rel in HYDRA_FILES, f"{rel} imports {module}: Hydra stops at the entry points"
            if rel == "data/prepare.py":
                assert not top_level, "data/prepare.py imports hydra at module level; keep it inside main()"
            continue
        if root in LAZY_ONLY:
            assert rel in LAZY_ONLY[root] and not top_level, f"{rel} imports {module}: only lazily in {LAZY_ONLY[root]}"
            continue
        if root in PACKAGES:
            if (rel, module) in EXTRA_EDGES and not top_level:
                continue
            assert root in OURS_ALLOWED[pkg], f"{rel} imports {module}: {pkg}/ may import {OURS_ALLOWED[pkg]}"
            continue
        assert root in THIRD_PARTY[pkg], f"{rel} imports third-party {module}; {pkg}/ may use {THIRD_PARTY[pkg]}"


def test_nothing_imports_tests():
    for path in FILES:
        assert not any(m.split(".")[0] == "tests" for m, _ in imports(path)), path


def test_model_reaches_data_only_through_the_tokenizer_package_inside_functions():
    """model/ imports data/ only as `from data.tokenizer import ...` inside a function (never a tokenizer module);
    nanoloom/ below every package is open to it."""
    for path in sorted((ROOT / "model").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for module, top_level in imports(path):
            if module.split(".")[0] in PACKAGES and module.split(".")[0] not in ("model", "nanoloom"):
                allowed = module == "data.tokenizer" or (rel, module) in EXTRA_EDGES
                assert allowed and not top_level, f"{rel} imports {module}: data.tokenizer (or EXTRA_EDGES), lazily"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_edges() -> dict[str, set[str]]:
    """module -> the modules of its own package it imports (at module level or inside functions alike)."""
    known = {_module_name(p) for p in FILES}
    edges: dict[str, set[str]] = {m: set() for m in known}
    for path in FILES:
        name = _module_name(path)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from train import dist` imports the module train.dist when there is one
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                           for a in node.names]  # fmt: skip
            for target in targets:
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in known and target != name and target.split(".")[0] == name.split(".")[0]:
                    edges[name].add(target)
    return edges


def test_no_import_cycles_inside_a_package():
    """A module that imports another of its package is never imported back by it, through any path (a lazy import
    inside a function counts: it hides the cycle, it does not remove it). Package __init__ files re-export their
    modules and are left out as targets."""
    edges = {m: {t for t in ts if t not in PACKAGES} for m, ts in _package_edges().items()}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                cycles.append(" -> ".join([*path, nxt]))
            elif nxt not in path and len(path) < 8:
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles))[:20])
