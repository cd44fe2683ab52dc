"""Damaged files: every file nanoloom reads, damaged every way its generator knows, through every entry point that
reads it.

One generator of (name, damage) pairs per format: model.json, model.safetensors, train_state.pt, the latest and best
pointer files, replay records, the measured peak FLOP/s cache. Each damage runs against a fresh copy of one tiny
trained run. A command line answers with exit status 2 and one `error:` line naming the damaged file (its checkpoint
directory and its name: weights that do not match model.json name both), no traceback, and changes no file; the API
(model.checkpoint.load_model, train.state.load_train_state) raises ValueError. The peak FLOP/s cache is a cache: a
damaged one is measured again and rewritten, with one `warning:` line naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_helpers import compose_train, run_cli, snapshot, tiny_run_overrides, zen_of_python

from model.checkpoint import load_model
from sample.__main__ import main as sample_main
from train import loop
from train.state import TRAIN_STATE, load_train_state

Damage = Callable[[Path], None]  # damages the file at this path, in place
STEP = "step_0000002"  # the fixture run's only checkpoint
RUN = {"trainer.max_steps": 2, "trainer.eval_interval": 2, "trainer.save_interval": 2, "samples.prompts": "[]"}
BINARY = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny trained run (run/checkpoints/step_0000002 with train_state.pt, latest and best), its prepared data and
    peak FLOP/s cache in cache/, the corpus, and samples.jsonl: one record of a sample from the checkpoint."""
    from train import perf

    w = tmp_path_factory.mktemp("damaged")
    corpus = zen_of_python(w)
    with pytest.MonkeyPatch.context() as mp:  # a steady measurement, so the run caches it even on a busy machine
        mp.setattr(perf, "measure_peak", lambda device, dtype: (100e9, True))
        loop.run(compose_train(tiny_run_overrides(w, corpus, "run", **RUN)))
    assert (w / "cache" / "peak_flops.json").is_file()
    assert (w / "run" / "checkpoints" / "latest").read_text().strip() == STEP
    sample_main(
        [f"checkpoint={w / 'run'}", "prompt=Beautiful", "max_new_tokens=3", "seed=1", f"out={w / 'samples.jsonl'}"]
    )
    return w


@pytest.fixture(scope="module")
def optimizer(world: Path):
    """An optimizer like the run's over a model like the run's: what a resume checks the saved moments against."""
    from train.optim import build_optimizer

    model, _ = load_model(world / "run")
    return build_optimizer(
        model, compose_train(tiny_run_overrides(world, world / "zen.txt", "run", **RUN)).optim, "cpu"
    )


@pytest.fixture
def case(world: Path, tmp_path: Path) -> Path:
    """A copy of the world's run, replay records and corpus for one case to damage; the prepared data is shared."""
    shutil.copytree(world / "run", tmp_path / "run")
    shutil.copy(world / "zen.txt", tmp_path / "zen.txt")
    records = (world / "samples.jsonl").read_text().replace(str(world / "run"), str(tmp_path / "run"))
    (tmp_path / "samples.jsonl").write_text(records)
    return tmp_path


# ------------------------------------------------------------------------------------------------------------------
# the damage generators, one per format


def rewrite_json(*changes: Callable[[object], object]) -> Damage:
    """Parse the file's JSON, change it in place (what the changes return is ignored), write it back."""

    def damage(file: Path) -> None:
        value = json.loads(file.read_text())
        for change in changes:
            change(value)
        file.write_text(json.dumps(value))

    return damage


def write_bytes(data: bytes) -> Damage:
    return lambda file: file.write_bytes(data)


def cut_in_half(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def setter(*keys: str, value: object = None, delete: bool = False) -> Callable[[object], None]:
    """Set (or delete) value at the path of keys in a parsed JSON object."""

    def change(root: object) -> None:
        node = root
        for key in keys[:-1]:
            node = node[key]
        if delete:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return change


def model_json_variants() -> Iterator[tuple[str, Damage]]:
    """model.json: not JSON, JSON of the wrong shape, missing and mistyped keys and nested values, absurd sizes, a
    config the weights do not fit, a tokenizer the model cannot serve."""
    yield "empty", write_bytes(b"")
    yield "truncated", cut_in_half
    yield "not-utf8", write_bytes(b'{"format": "nanoloom-model", "kind": "caf\xe9"}')
    for name, value in (("list", [1, 2]), ("null", None)):
        yield f"a-json-{name}", write_bytes(json.dumps(value).encode())
    for key in ("config", "version"):
        yield f"no-{key}", rewrite_json(setter(key, delete=True))
    yield "kind-list", rewrite_json(setter("kind", value=["gpt"]))
    yield "kind-unknown", rewrite_json(setter("kind", value="rnn"), setter("config", "kind", value="rnn"))
    yield "kind-other-than-config-kind", rewrite_json(setter("kind", value="t5"))
    yield "config-list", rewrite_json(setter("config", value=[3, 48]))
    yield "tokenizer-string", rewrite_json(setter("tokenizer", value="byte"))
    yield "meta-step-string", rewrite_json(setter("meta", "step", value="two"))
    yield "meta-generation-list", rewrite_json(setter("meta", "generation", value=["story"]))
    yield "generation-stop-strings-number", rewrite_json(setter("meta", "generation", "stop_strings", value=5))
    yield "generation-temperature-string", rewrite_json(setter("meta", "generation", "temperature", value="hot"))
    yield "n-layer-string", rewrite_json(setter("config", "n_layer", value="3"))
    yield "n-embd-null", rewrite_json(setter("config", "n_embd", value=None))
    yield "bias-number", rewrite_json(setter("config", "bias", value=2))
    yield "norm-eps-nan", rewrite_json(setter("config", "norm_eps", value=math.nan))
    yield "unknown-config-key", rewrite_json(setter("config", "colour", value="red"))
    yield "vocab-size-null", rewrite_json(setter("config", "vocab_size", value=None))
    yield "n-layer-billions", rewrite_json(setter("config", "n_layer", value=10**9))
    yield "n-embd-billions", rewrite_json(setter("config", "n_embd", value=3 * 10**9))
    yield "vocab-size-billions", rewrite_json(setter("config", "vocab_size", value=10**10))
    yield "block-size-billions", rewrite_json(setter("config", "block_size", value=10**9))
    yield "one-layer-more", rewrite_json(setter("config", "n_layer", value=4))
    yield "other-vocab-size", rewrite_json(setter("config", "vocab_size", value=1000))
    yield "tokenizer-larger-than-model", rewrite_json(setter("tokenizer", value={"name": "gpt2", "vocab_size": 50257}))
    yield "tokenizer-unknown", rewrite_json(setter("tokenizer", "name", value="nosuch"))
    yield "tokenizer-vocab-size-string", rewrite_json(setter("tokenizer", "vocab_size", value="257"))
    yield "tokenizer-sentinels-list", rewrite_json(setter("tokenizer", "sentinels", value=[1]))


def with_header(change: Callable[[dict], None]) -> Damage:
    """Edit a safetensors header in place (the tensor data stays), e.g. to give a tensor another shape."""

    def damage(file: Path) -> None:
        data = file.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + n])
        change(header)
        raw = json.dumps(header).encode()
        file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])

    return damage


def with_tensors(change: Callable[[dict[str, torch.Tensor]], None]) -> Damage:
    """Load the weights, change the dict of tensors, save them again (a valid file with other contents)."""

    def damage(file: Path) -> None:
        tensors = load_file(str(file))
        change(tensors)
        save_file(tensors, str(file))

    return damage


def transpose_embedding(header: dict) -> None:
    entry = header.get("transformer.wte.weight") or header["lm_head.weight"]  # tied: stored once, under either name
    entry["shape"] = entry["shape"][::-1]


def poison(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors["transformer.h.0.mlp.c_fc.weight"][0, 0] = value

    return change


def weights_variants() -> Iterator[tuple[str, Damage]]:
    """model.safetensors: unreadable, of other shapes, names or dtypes than model.json says, not finite."""
    yield "empty", write_bytes(b"")
    yield "truncated", cut_in_half
    yield "binary", write_bytes(BINARY)
    yield "text", write_bytes(b"weights\n")
    yield "header-shape-swapped", with_header(transpose_embedding)
    yield "a-tensor-missing", with_tensors(lambda t: t.pop("transformer.h.2.mlp.c_fc.weight"))
    yield "an-unexpected-tensor", with_tensors(lambda t: t.update(extra=torch.zeros(3)))
    yield "a-tensor-of-another-shape", with_tensors(lambda t: t.update({"transformer.ln_f.weight": torch.ones(7)}))
    yield (
        "integer-tensor",
        with_tensors(lambda t: t.update({"transformer.ln_f.weight": torch.ones(48, dtype=torch.int32)})),
    )
    yield "nan", with_tensors(poison(math.nan))
    yield "inf", with_tensors(poison(math.inf))


def with_state(change: Callable[[dict], object]) -> Damage:
    """Load train_state.pt, change it in place (what change returns is ignored), save it with torch.save."""

    def damage(file: Path) -> None:
        state = torch.load(file, weights_only=True)
        change(state)
        torch.save(state, file)

    return damage


def first_moments(state: dict) -> dict:
    return state["optimizer"]["state"][0]


def train_state_variants() -> Iterator[tuple[str, Damage]]:
    """train_state.pt: not a torch.save archive, wrong entries and types, the data position, RNG states, the grad
    scaler and optimizer moments of the wrong shapes or not finite."""
    yield "empty", write_bytes(b"")
    yield "truncated", cut_in_half
    yield "random-bytes", write_bytes(hashlib.sha256(b"x").digest() * 64)
    yield "a-list", lambda file: torch.save([1, 2], file)
    for key in ("state", "optimizer", "rng", "loader"):
        yield f"no-{key}", with_state(setter(key, delete=True))
    yield "state-list", with_state(setter("state", value=[2]))
    yield "step-string", with_state(setter("state", "step", value="2"))
    yield "step-negative", with_state(setter("state", "step", value=-1))
    yield "state-unknown-field", with_state(setter("state", "epoch", value=1))
    yield "best-val-loss-nan", with_state(setter("state", "best_val_loss", value=math.nan))
    yield "loader-list", with_state(setter("loader", value=[0]))
    yield "loader-position-string", with_state(setter("loader", "position", value="8"))
    yield "loader-no-fingerprint", with_state(setter("loader", "fingerprint", delete=True))
    yield "rng-torch-short", with_state(lambda s: s["rng"].update(torch=s["rng"]["torch"][:10]))
    yield "rng-torch-float", with_state(lambda s: s["rng"].update(torch=s["rng"]["torch"].float()))
    yield "rng-python-short", with_state(setter("rng", "python", value=(3, (1, 2, 3), None)))
    yield "scaler-string", with_state(setter("scaler", value={"scale": "big"}))
    yield "settings-list", with_state(setter("settings", value=[1]))
    yield "optimizer-list", with_state(setter("optimizer", value=[1]))
    yield "optimizer-state-list", with_state(setter("optimizer", "state", value=[]))
    yield "optimizer-group-short", with_state(lambda s: s["optimizer"]["param_groups"][0]["params"].pop())
    yield "optimizer-unknown-index", with_state(lambda s: s["optimizer"]["state"].update({999: first_moments(s)}))
    yield "moment-shape", with_state(lambda s: first_moments(s).update(exp_avg=torch.zeros(3)))
    yield "moment-nan", with_state(lambda s: first_moments(s)["exp_avg_sq"].fill_(math.nan))
    yield "moment-string", with_state(lambda s: first_moments(s).update(exp_avg="zeros"))
    yield "moments-list", with_state(lambda s: s["optimizer"]["state"].update({0: [1.0]}))


def pointer_variants() -> Iterator[tuple[str, Damage]]:
    """latest and best: empty, binary, not one name, too long, naming nothing complete or a path out."""
    yield "empty", write_bytes(b"")
    yield "whitespace", write_bytes(b"  \n\n")
    yield "binary", write_bytes(BINARY)
    yield "not-utf8", write_bytes(b"step_\xff\xfe\n")
    yield "nul-byte", write_bytes(STEP.encode() + b"\0\n")
    yield "two-names", write_bytes(f"{STEP}\nstep_0000001\n".encode())
    yield "garbage", write_bytes(b"hello world\n")
    yield "too-long", write_bytes(b"s" * 5000)
    yield "a-missing-checkpoint", write_bytes(b"step_9999999\n")
    yield "a-file", write_bytes(b"latest\n")
    yield "dot-dot", write_bytes(b"..\n")
    yield "a-path-out", write_bytes(b"../../run\n")


def record_variants() -> Iterator[tuple[str, Damage]]:
    """Replay records (python -m sample out=): lines that are not records, missing and mistyped keys, generation
    settings GenerationConfig refuses, a beam index beyond the beams."""

    def edit_record(change: Callable[[dict], object]) -> Damage:  # changes the record in place
        def damage(file: Path) -> None:
            record = json.loads(file.read_text().splitlines()[0])
            change(record)
            file.write_text(json.dumps(record) + "\n")

        return damage

    yield "binary", write_bytes(BINARY)
    yield "not-json", write_bytes(b'{"checkpoint": \n')
    for name, value in (("list", [1]), ("string", "record"), ("number", 7), ("null", None)):
        yield f"a-json-{name}", write_bytes(json.dumps(value).encode() + b"\n")
    yield "no-checkpoint", edit_record(setter("checkpoint", delete=True))
    yield "checkpoint-number", edit_record(setter("checkpoint", value=5))
    yield "checkpoint-missing", edit_record(setter("checkpoint", value="/nonexistent/checkpoint"))
    yield "mode-unknown", edit_record(setter("mode", value="poem"))
    yield "no-prompt", edit_record(setter("prompt", delete=True))
    yield "prompt-list", edit_record(setter("prompt", value=["Beautiful"]))
    yield "infill-without-suffix", edit_record(setter("mode", value="infill"))
    yield "seed-string", edit_record(setter("seed", value="1"))
    yield "seed-negative", edit_record(setter("seed", value=-1))
    yield "seed-huge", edit_record(setter("seed", value=2**70))
    yield "token-ids-string", edit_record(setter("token_ids", value="1 2 3"))
    yield "token-ids-negative", edit_record(setter("token_ids", value=[-1]))
    yield "completion-null", edit_record(setter("completion", value=None))
    yield "index-string", edit_record(setter("index", value="0"))
    yield "generation-list", edit_record(setter("generation", value=[1]))
    yield "generation-unknown-key", edit_record(setter("generation", "colour", value="red"))
    yield "generation-temperature-string", edit_record(setter("generation", "temperature", value="hot"))
    yield "generation-top-p-zero", edit_record(setter("generation", "top_p", value=0))
    yield (
        "beam-index-beyond-the-beams",
        edit_record(lambda r: r.update(index=5, generation={**r["generation"], "num_beams": 2, "do_sample": False})),
    )


def peak_cache_variants() -> Iterator[tuple[str, Damage]]:
    """The measured peak FLOP/s cache: not JSON, JSON of the wrong shape, values that are no FLOP/s."""
    yield "empty", write_bytes(b"")
    yield "truncated", cut_in_half
    yield "binary", write_bytes(BINARY)
    for name, value in (("list", [1e11]), ("number", 1e11), ("string", "fast"), ("null", None)):
        yield f"a-json-{name}", write_bytes(json.dumps(value).encode())
    for name, value in (("string", "1e11"), ("negative", -1.0), ("zero", 0), ("nan", math.nan), ("true", True),
                        ("object", {"flops": 1e11})):  # fmt: skip
        yield f"value-{name}", rewrite_json(lambda table, v=value: table.update(dict.fromkeys(table, v)))


# ------------------------------------------------------------------------------------------------------------------
# the entry points


def train_args(case: Path, world: Path) -> list[str]:
    """python -m train continuing the case's copy of the run (resume=auto), as the fixture trained it."""
    overrides = tiny_run_overrides(world, world / "zen.txt", "run", **{**RUN, "trainer.max_steps": 4})
    return [o for o in overrides if not o.startswith("paths.run_dir=")] + [f"paths.runs_dir={case}", "resume=auto"]


def assert_one_error_line(cli: str, args: list[str], file: Path, case: Path, monkeypatch, capsys) -> str:
    """Run the command line: exit status 2, one `error:` line naming the file, no traceback, no file changed."""
    if cli == "train":  # its check of the command line, the same in every case, runs whole in the end-to-end test
        import train.__main__

        monkeypatch.setattr(train.__main__, "check_overrides", lambda args: None)
    before = snapshot(case)
    code, err = run_cli(cli, args, monkeypatch, capsys)
    assert code == 2, f"{cli}: exit status {code}\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, f"{cli}:\n{err}"
    assert str(file.parent) in lines[0] and file.name in lines[0], f"{cli} does not name {file}:\n{lines[0]}"
    assert snapshot(case) == before, f"{cli} changed files"
    return lines[0]


def checkpoint_clis(checkpoint: Path, case: Path) -> dict[str, list[str]]:
    """Every command line that reads a checkpoint, given one (a directory, a run directory or a pointer file)."""
    return {
        "sample": [f"checkpoint={checkpoint}", "prompt=Beautiful", "max_new_tokens=2"],
        "evaluate": [f"checkpoint={checkpoint}", f"file={case / 'zen.txt'}"],
        "export": [f"checkpoint={checkpoint}", f"out={case / 'exported'}"],
    }


def assert_load_model_refuses(checkpoint: Path, file: Path, allowed: tuple[type, ...] = (ValueError,)) -> None:
    """The API: one of the allowed errors (a ValueError; a FileNotFoundError for a pointer to nothing), one line
    naming the file's directory."""
    with pytest.raises(Exception) as e:
        load_model(checkpoint)
    assert isinstance(e.value, allowed), repr(e.value)
    assert str(file.parent) in str(e.value) and "\n" not in str(e.value), str(e.value)


# ------------------------------------------------------------------------------------------------------------------
# the tests: each format's damages through each entry point that reads the format


def cases(variants: Callable[[], Iterator[tuple[str, Damage]]]) -> list:
    return [pytest.param(name, damage, id=name) for name, damage in variants()]


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", cases(model_json_variants))
def test_damaged_model_json(name: str, damage: Damage, case: Path, world: Path, monkeypatch, capsys):
    checkpoint = case / "run" / "checkpoints" / STEP
    damage(checkpoint / "model.json")
    assert_load_model_refuses(checkpoint, checkpoint / "model.json")
    clis = {**checkpoint_clis(checkpoint, case), "train": train_args(case, world)}
    for cli, args in clis.items():
        assert_one_error_line(cli, args, checkpoint / "model.json", case, monkeypatch, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", cases(weights_variants))
def test_damaged_weights(name: str, damage: Damage, case: Path, world: Path, monkeypatch, capsys):
    checkpoint = case / "run" / "checkpoints" / STEP
    damage(checkpoint / "model.safetensors")
    assert_load_model_refuses(checkpoint, checkpoint / "model.safetensors")
    clis = {**checkpoint_clis(checkpoint, case), "train": train_args(case, world)}
    for cli, args in clis.items():
        line = assert_one_error_line(cli, args, checkpoint / "model.safetensors", case, monkeypatch, capsys)
        if name in ("nan", "inf"):
            assert "non-finite weights" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", cases(train_state_variants))
def test_damaged_train_state(name: str, damage: Damage, case: Path, world: Path, optimizer, monkeypatch, capsys):
    checkpoint = case / "run" / "checkpoints" / STEP
    damage(checkpoint / TRAIN_STATE)
    with pytest.raises(ValueError, match="is damaged") as e:
        load_train_state(checkpoint, optimizer)
    assert "could run code" not in str(e.value) and "\n" not in str(e.value)
    line = assert_one_error_line("train", train_args(case, world), checkpoint / TRAIN_STATE, case, monkeypatch, capsys)
    assert "is damaged" in line and "could run code" not in line


@pytest.mark.slow
@pytest.mark.parametrize("pointer", ["latest", "best"])
@pytest.mark.parametrize("name, damage", cases(pointer_variants))
def test_damaged_pointer(pointer: str, name: str, damage: Damage, case: Path, world: Path, monkeypatch, capsys):
    run = case / "run"
    file = run / "checkpoints" / pointer
    damage(file)
    source = run if pointer == "latest" else file  # a run directory reads its latest; best is passed itself
    assert_load_model_refuses(source, file, allowed=(ValueError, FileNotFoundError))
    clis = checkpoint_clis(source, case)
    if pointer == "latest":
        clis["train"] = train_args(case, world)
    for cli, args in clis.items():
        line = assert_one_error_line(cli, args, file, case, monkeypatch, capsys)
        if name not in ("dot-dot", "a-path-out"):
            assert STEP in line, f"the fix names the checkpoint to write into {file}: {line}"


@pytest.mark.e2e
@pytest.mark.parametrize("name, damage", cases(record_variants))
def test_damaged_replay_record(name: str, damage: Damage, case: Path, monkeypatch, capsys):
    file = case / "samples.jsonl"
    damage(file)
    line = assert_one_error_line("sample", [f"replay={file}"], file, case, monkeypatch, capsys)
    if name == "checkpoint-missing":  # the record is whole; the checkpoint it names is not there
        assert "/nonexistent/checkpoint" in line and "record 1" in line, line


@pytest.mark.parametrize("name, damage", cases(peak_cache_variants))
def test_damaged_peak_cache_is_measured_again(name: str, damage: Damage, world: Path, tmp_path: Path, monkeypatch,
                                             capsys):  # fmt: skip
    from train import perf as device_module

    cache = tmp_path / "peak_flops.json"
    shutil.copy(world / "cache" / "peak_flops.json", cache)
    damage(cache)
    monkeypatch.setattr(device_module, "measure_peak", lambda device, dtype: (123e9, True))
    assert device_module.peak_flops(torch.device("cpu"), torch.float32, tmp_path) == 123e9
    err = capsys.readouterr().err
    assert err.count("\n") <= 1 and "Traceback" not in err, err
    assert not err or (err.startswith("warning: ") and str(cache) in err), err
    assert 123e9 in json.loads(cache.read_text()).values()  # rewritten whole, with the new measurement


@pytest.mark.e2e
def test_resume_with_a_damaged_peak_cache_trains_on(case: Path, world: Path, monkeypatch, capsys):
    """End to end: python -m train resume=auto (two more steps) measures the peak again and finishes the run."""
    from train import perf

    monkeypatch.setattr(perf, "measure_peak", lambda device, dtype: (123e9, True))  # steady on a busy machine too
    shutil.copytree(world / "cache", case / "cache")
    cache = case / "cache" / "peak_flops.json"
    cache.write_bytes(BINARY)
    code, err = run_cli("train", [*train_args(case, world), f"paths.cache_dir={case / 'cache'}"], monkeypatch, capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert "Traceback" not in err and len(warnings) == 1 and str(cache) in warnings[0], err
    assert (case / "run" / "checkpoints" / "step_0000004").is_dir()
    assert 123e9 in json.loads(cache.read_text()).values()  # rewritten whole, with the new measurement


def test_the_variants_are_many_and_distinct():
    for variants in (model_json_variants, weights_variants, train_state_variants, pointer_variants, record_variants,
                     peak_cache_variants):  # fmt: skip
        names = [name for name, _ in variants()]
        assert len(names) >= 8 and len(set(names)) == len(names), variants.__name__


def test_the_world_is_undamaged(world: Path, tmp_path: Path, optimizer, monkeypatch, capsys):
    """Every entry point accepts the undamaged copy: the failures above are the damage's."""
    shutil.copytree(world / "run", tmp_path / "run")
    shutil.copy(world / "zen.txt", tmp_path / "zen.txt")
    model, tokenizer = load_model(tmp_path / "run")
    assert tokenizer.vocab_size == model.config.vocab_size == 257
    load_train_state(tmp_path / "run" / "checkpoints" / STEP, optimizer)
    for cli, args in checkpoint_clis(tmp_path / "run", tmp_path).items():
        code, err = run_cli(cli, args, monkeypatch, capsys)
        assert code == 0, f"{cli}: {err}"
    code, err = run_cli("sample", [f"replay={world / 'samples.jsonl'}"], monkeypatch, capsys)
    assert code == 0, err


def test_absurd_sizes_are_refused_before_building(world: Path, tmp_path: Path, monkeypatch):
    """n_layer in the billions is refused from arithmetic on the config: no model is built."""
    from model import checkpoint

    shutil.copytree(world / "run" / "checkpoints" / STEP, tmp_path / "ckpt")
    rewrite_json(setter("config", "n_layer", value=10**9))(tmp_path / "ckpt" / "model.json")
    monkeypatch.setattr(checkpoint, "build_model", lambda *a, **k: pytest.fail("built a model"))
    with pytest.raises(ValueError, match=r"describes a model of about .* parameters but .* holds"):
        load_model(tmp_path / "ckpt")


def test_estimated_numel_matches_the_built_models():
    from model.config import GPT_PRESETS, T5_PRESETS, GPTConfig, T5Config
    from model.registry import build_model

    configs = [GPTConfig.from_name(n, vocab_size=257) for n in GPT_PRESETS]
    configs += [GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, pos="rope", mlp="swiglu", norm="rmsnorm",
                          qk_norm=True, tie_embeddings=False, bias=False)]  # fmt: skip
    configs += [T5Config.from_name(n) for n in T5_PRESETS]
    for config in configs:
        with torch.device("meta"):
            model = build_model(config)
        actual = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
        assert actual <= config.estimated_numel() <= 1.02 * actual, config


@pytest.mark.parametrize(
    "change, message",
    [
        (setter("config", "n_decoder_layer", value=10**9), "describes a model of about"),
        (setter("config", "pad_id", value=-1), "model.pad_id=-1 is not a token id"),
        (setter("config", "mlp", value="gated-gelu"), r"do not match model\.json \(missing"),
    ],
    ids=["decoder-layers-billions", "pad-id-negative", "other-mlp"],
)
def test_a_t5_model_json_is_checked_the_same_way(tmp_path: Path, change: Callable[[object], None], message: str):
    from data.tokenizer import get_tokenizer
    from model import T5, T5Config
    from model.checkpoint import save_model

    config = T5Config(n_encoder_layer=1, n_decoder_layer=1, n_head=2, n_embd=16, intermediate_size=32, vocab_size=257)
    checkpoint = save_model(T5(config), tmp_path / "t5", get_tokenizer("byte").spec())
    load_model(checkpoint)
    rewrite_json(change)(checkpoint / "model.json")
    with pytest.raises(ValueError, match=message) as e:
        load_model(checkpoint)
    assert str(checkpoint) in str(e.value) and "\n" not in str(e.value)
