"""Training loop: smoke run with checkpoint + samples, exact resume, time budget, refusals, schedules, optimizer."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import compose_train, losses, tiny_run_overrides, train_killed_then_resumed, zen_of_python

from model import GPT, GPTConfig
from model.checkpoint import load_model
from train import loop
from train.config import ScheduleConfig
from train.loop import run
from train.optim import build_optimizer, get_lr

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny finished run, shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("trained")
    run(compose_train(tiny_run_overrides(tmp, zen_of_python(tmp))))
    return tmp / "run"


@pytest.mark.e2e
def test_smoke_run_writes_checkpoint_metrics_and_samples(trained):
    latest = (trained / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_0000008"
    ckpt = trained / "checkpoints" / latest
    for name in ("model.safetensors", "model.json", "train_state.pt", "config.yaml"):
        assert (ckpt / name).is_file(), name
    assert sorted(losses(trained)) == list(range(1, 9))
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("val/loss" in r and "val/ppl" in r for r in records)
    assert any("perf/tokens_per_sec" in r and "perf/mfu" in r for r in records)
    logged = [r for r in records if "train/loss" in r]
    assert all(0 < r["train/update_ratio"] < 1 and 0 < r["train/update_ratio_max"] < 1 for r in logged)
    assert all(r["train/grad_norm"] > 0 and r["train/param_norm"] > 0 for r in logged)
    evals = [r for r in records if "val/loss" in r]
    # byte tokenizer: a byte per token but for the document separators, which hold none (bpb a little higher)
    assert evals and all(1 < r["val/bpb"] * math.log(2) / r["val/loss"] < 1.01 for r in evals)
    samples = [json.loads(line) for line in (trained / "samples.jsonl").read_text().splitlines()]
    assert {s["prompt"] for s in samples} == {"Once upon a time,", "def fibonacci(n):"}
    assert (trained / "config.yaml").is_file()


def test_checkpoint_loads_for_sampling(trained):
    model, tokenizer = load_model(trained)
    assert tokenizer.name == "byte" and model.config.vocab_size == tokenizer.vocab_size
    from sample import pipeline

    out = pipeline("text-generation", model=str(trained))("Beautiful is", max_new_tokens=5, seed=0)
    assert out[0]["generated_text"].startswith("Beautiful is")


def test_train_state_loads_weights_only(trained):
    ckpt = trained / "checkpoints" / "step_0000008"
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    assert state["state"]["step"] == 8 and state["loader"]["position"] == 8


def test_keep_last_prunes_old_checkpoints(trained):
    # keep_last=2 (default): step 4 and step 8 remain
    assert sorted(p.name for p in (trained / "checkpoints").glob("step_*")) == ["step_0000004", "step_0000008"]


@pytest.mark.e2e
def test_resume_continues_exactly(tmp_path, monkeypatch):
    corpus = zen_of_python(tmp_path)
    run(compose_train(tiny_run_overrides(tmp_path, corpus, "straight", **{"model.dropout": 0.1})))

    # the same run, killed during step 6 (after the step-4 checkpoint), then resumed: steps 5..8 give
    # bit-identical losses (dropout on: the RNG state is restored too)
    train_killed_then_resumed(monkeypatch, tiny_run_overrides(tmp_path, corpus, "resumed", **{"model.dropout": 0.1}))
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [resumed[s] for s in range(5, 9)] == [straight[s] for s in range(5, 9)]
    a, _ = load_model(tmp_path / "straight")
    b, _ = load_model(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_fresh_run_refuses_a_run_dir_with_checkpoints(trained, tmp_path):
    cfg = compose_train(tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **{"paths.run_dir": str(trained)}))
    with pytest.raises(ValueError, match="already has checkpoints; pass resume=auto"):
        run(cfg)


def test_resume_refuses_a_different_architecture(trained, tmp_path):
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), resume=str(trained), **{"model.n_layer": 4})
    with pytest.raises(ValueError, match="different model.*n_layer: checkpoint 3 vs config 4"):
        run(compose_train(overrides))


@pytest.mark.e2e
def test_time_budget_stops_and_saves(tmp_path):
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **{"trainer.max_time": 1e-6})
    result = run(compose_train(overrides))
    assert result["step"] == 1
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_0000001"


def test_vocab_mismatch_is_refused(tmp_path):
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **{"model.vocab_size": 50257})
    with pytest.raises(ValueError, match="vocabulary mismatch: model.vocab_size=50257.*byte tokenizer has 257"):
        run(compose_train(overrides))


def test_corpus_shorter_than_a_window_is_refused(tmp_path):
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **{"model.block_size": 256})
    with pytest.raises(ValueError, match="block_size=256"):
        run(compose_train(overrides))


@pytest.mark.e2e
def test_golden_loss_trace(tmp_path):
    """A fixed-seed debug run must reproduce the stored trace: catches silent numerics changes.

    Update tests/assets/losses/debug_zen.json only for an intended change, and say why in the commit message.
    """
    run(compose_train(tiny_run_overrides(tmp_path, zen_of_python(tmp_path))))
    golden = json.loads((ROOT / "tests" / "assets" / "losses" / "debug_zen.json").read_text())
    got = losses(tmp_path / "run")
    assert [round(got[s], 4) for s in sorted(got)] == pytest.approx(golden["train_loss"], abs=2e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_layerz=3", "Key 'n_layerz' not in 'GPTConfig' (did you mean model.n_layer?)"),
        ("trainer.max_stepz=3", "(did you mean trainer.max_steps?)"),
        ("model=gpt-huge", "unknown model 'gpt-huge'; choose one of gpt-mini, gpt-nano, gpt2,"),
        ("trainer.max_steps=many", "'many' of type 'str' could not be converted to Integer"),
        ("model.n_embd=50", "model.n_embd=50 is not divisible by model.n_head=6"),
        ("trainer.dtype=fp8", "trainer.dtype='fp8' is not one of auto, float32, bfloat16, float16"),
    ],
)
@pytest.mark.slow
def test_cli_config_errors_are_one_line(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, "-m", "train", override, f"paths.runs_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not any(tmp_path.iterdir())  # nothing written for a run that never started


@pytest.mark.parametrize("name", ["cosine", "constant", "wsd"])
def test_schedules(name):
    cfg = ScheduleConfig(name=name, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2)
    lrs = [get_lr(s, 1.0, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)  # linear warmup
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))
    if name == "constant":
        assert lrs[10:] == [1.0] * 90
    elif name == "cosine":
        assert lrs[10] == 1.0 and get_lr(100, 1.0, 100, cfg) == pytest.approx(0.1)
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    else:
        assert lrs[10:80] == [1.0] * 70 and lrs[99] < 0.15 and lrs[90] == pytest.approx(0.55)


def test_optimizer_decays_only_matrices():
    from model import GPT, GPTConfig
    from train.config import OptimConfig

    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()
    assert not math.isnan(sum(p.sum().item() for p in model.parameters()))


def test_update_ratio_is_the_update_norm_over_the_weight_norm():
    from train.optim import UpdateRatio

    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)  # a matrix and a bias
    tracked = UpdateRatio(list(layer.parameters()))
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    dw, db = 0.01 * torch.randn_like(w), 0.5 * torch.randn_like(b)
    with torch.no_grad():
        layer.weight += dw
        layer.bias += db
    got = {k: v.item() for k, v in tracked.read().items()}
    weights = math.sqrt(w.square().sum() + b.square().sum())
    assert got["param_norm"] == pytest.approx(weights, rel=1e-6)  # the norm before the update
    assert got["update_ratio"] == pytest.approx(math.sqrt(dw.square().sum() + db.square().sum()) / weights, rel=1e-6)
    assert got["update_ratio_max"] == pytest.approx((dw.norm() / w.norm()).item(), rel=1e-6)  # the bias's is left out
    # reduce sums the per-tensor squares over ranks: two equal shards of the same update give the same ratios
    doubled = {k: v.item() for k, v in tracked.read(lambda t: 2 * t).items()}
    assert doubled["update_ratio"] == pytest.approx(got["update_ratio"], rel=1e-6)
    assert doubled["param_norm"] == pytest.approx(math.sqrt(2) * weights, rel=1e-6)


def test_grad_accumulation_matches_one_big_batch():
    """Two micro-batches of 4 rows give the same update as one batch of 8 (the mean of token means)."""
    from data.loader import CausalLMLoader  # noqa: F401  (the loader protocol forward_backward relies on)
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=50))
    twin = GPT(model.config)
    twin.load_state_dict(model.state_dict())
    batch = {"idx": torch.randint(0, 50, (8, 8)), "targets": torch.randint(0, 50, (8, 8))}

    class Halves:
        def __init__(self) -> None:
            self.i = 0

        def next_batch(self) -> dict:
            rows = slice(4 * self.i, 4 * self.i + 4)
            self.i += 1
            return {k: v[rows] for k, v in batch.items()}

    class Whole:
        def next_batch(self) -> dict:
            return batch

    ctx = torch.autocast("cpu", enabled=False)
    loss_accum, flops_accum = loop.forward_backward(model, Halves(), 2, ctx, None)
    loss_whole, flops_whole = loop.forward_backward(twin, Whole(), 1, ctx, None)
    torch.testing.assert_close(loss_accum, loss_whole)
    assert flops_accum == flops_whole == model.batch_flops(batch)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.e2e
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_is_caught_before_the_step(tmp_path, monkeypatch, policy):
    real = loop.forward_backward
    calls = {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        calls["n"] += 1
        loss, flops = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 3 else loss), flops

    monkeypatch.setattr(loop, "forward_backward", nan_at_step_3)
    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **{"trainer.nonfinite": policy})
    if policy == "stop":
        with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step 2"):
            run(compose_train(overrides))
        # the step-4 checkpoint was never reached, and no checkpoint holds non-finite weights
        assert not (tmp_path / "run" / "checkpoints" / "latest").exists()
    else:
        result = run(compose_train(overrides))
        assert result["step"] == 8 and math.isfinite(result["val/loss"])
        model, _ = load_model(tmp_path / "run")
        assert all(torch.isfinite(p).all() for p in model.parameters())
        state = torch.load(tmp_path / "run" / "checkpoints" / "step_0000008" / "train_state.pt", weights_only=True)
        assert state["state"]["skipped_steps"] == 1


@pytest.mark.e2e
def test_wandb_logger_keeps_the_run_id_and_logs_samples_and_plots(tmp_path, monkeypatch):
    """logger=wandb: metrics, the sample table and the loss plots reach wandb, and a resumed run reuses the same
    wandb run id. Not logged in and no WANDB_MODE: offline, so the run never stops to ask for a key."""
    import types

    inits, logged = [], []

    class FakeRun:
        def log(self, metrics, step):
            logged.append((step, metrics))

        def finish(self):
            pass

    def fake_init(**kwargs):
        inits.append(kwargs)
        return FakeRun()

    fake = types.SimpleNamespace(init=fake_init, util=types.SimpleNamespace(generate_id=lambda: "abc123"))
    fake.Table = lambda columns: types.SimpleNamespace(add_data=lambda *a: None, columns=columns)
    fake.Image = lambda path: types.SimpleNamespace(path=path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    corpus = zen_of_python(tmp_path)
    run(compose_train(tiny_run_overrides(tmp_path, corpus, logger="wandb")))
    fake.util.generate_id = lambda: "different"
    run(compose_train(tiny_run_overrides(tmp_path, corpus, logger="wandb", resume="auto", **{"trainer.max_steps": 10})))
    assert [i["id"] for i in inits] == ["abc123", "abc123"] and inits[0]["mode"] == "offline"
    assert inits[1]["resume"] == "allow" and inits[0]["config"]["optim"]["lr"] > 0  # the run's config
    assert any("train/loss" in m for _, m in logged) and any("val/loss" in m for _, m in logged)
    assert any("samples" in m for _, m in logged)
    images = [m["plots/loss_vs_tokens"] for _, m in logged if "plots/loss_vs_tokens" in m]
    assert images and Path(images[-1].path).name == "loss_vs_tokens.png" and Path(images[-1].path).is_file()


@pytest.mark.parametrize(
    ("mode", "env", "netrc_line", "expected"),
    [
        (None, {}, None, "offline"),  # not logged in
        (None, {"WANDB_API_KEY": "k" * 40}, None, "online"),
        (None, {}, "machine api.wandb.ai login user password " + "k" * 40, "online"),  # `wandb login` wrote it
        (None, {"WANDB_MODE": "disabled"}, "machine api.wandb.ai login user password x", "disabled"),
        ("offline", {"WANDB_API_KEY": "k" * 40}, None, "offline"),  # logger.mode set: as it says
    ],
)
def test_wandb_mode_follows_wandbs_rule(tmp_path, monkeypatch, mode, env, netrc_line, expected):
    from train.log import wandb_mode

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    netrc_file = tmp_path / ".netrc"
    if netrc_line:
        netrc_file.write_text(netrc_line + "\n")
        netrc_file.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode(mode) == expected


@pytest.mark.e2e
def test_sample_cli_on_a_training_run(trained):
    proc = subprocess.run(
        [sys.executable, "-m", "sample", f"checkpoint={trained}", "prompt=Beautiful is", "max_new_tokens=5", "seed=0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("--- sample 1/1 ---\nBeautiful is") and "step 8" in proc.stderr


def test_dtype_auto_picks_bf16_only_where_it_is_fast(monkeypatch):
    from nanoloom import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    assert dev.resolve_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    assert dev.resolve_dtype("auto", cpu) == torch.float32
    assert dev.resolve_dtype("float32", cpu) == torch.float32
    with pytest.raises(ValueError, match="float16 is not supported on CPU"):
        dev.resolve_dtype("float16", cpu)


@pytest.mark.parametrize(("capability", "dtype"), [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                   ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])  # fmt: skip
def test_dtype_auto_on_a_gpu_picks_bf16_only_with_bf16_tensor_cores(monkeypatch, capability, dtype):
    """T4 (7.5) and V100 (7.0) emulate bf16 (torch.cuda.is_bf16_supported() says True there): fp16 + grad scaler."""
    from nanoloom import device as dev

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what emulation reports
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability)
    gpu = torch.device("cuda", 1)
    assert dev.resolve_dtype("auto", gpu) == dtype
    assert asked == [gpu]  # the training device's capability, not the current device's


@pytest.mark.e2e
def test_resume_after_the_time_budget_is_spent_trains_no_more(tmp_path):
    corpus = zen_of_python(tmp_path)
    first = run(compose_train(tiny_run_overrides(tmp_path, corpus, **{"trainer.max_time": 1e-6})))
    again = run(compose_train(tiny_run_overrides(tmp_path, corpus, resume="auto", **{"trainer.max_time": 1e-6})))
    assert first["step"] == again["step"] == 1


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """trainer.compile=true runs the same training on CPU (inductor): losses equal to rounding."""
    corpus = zen_of_python(tmp_path)
    small = {"trainer.max_steps": 4, "trainer.eval_interval": 0, "trainer.save_interval": 0, "samples.prompts": "[]"}
    run(compose_train(tiny_run_overrides(tmp_path, corpus, "eager", **small)))
    run(compose_train(tiny_run_overrides(tmp_path, corpus, "compiled", **small, **{"trainer.compile": "true"})))
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert [compiled[s] for s in range(1, 5)] == pytest.approx([eager[s] for s in range(1, 5)], rel=1e-4)


@pytest.mark.e2e
def test_cli_run_time_error_is_one_line_and_leaves_no_run_dir(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "debug=default",
            "data=text",
            f"data.paths=[{tmp_path}/missing.txt]",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data.paths: '{tmp_path}/missing.txt' matches no file; give a file, directory or glob"
    ]
    assert not any((tmp_path / "runs").iterdir())


@pytest.mark.e2e
def test_init_from_fine_tunes_a_checkpoint(trained, tmp_path):
    corpus = zen_of_python(tmp_path)
    scratch = run(compose_train(tiny_run_overrides(tmp_path, corpus, "scratch", **{"trainer.max_steps": 2})))
    tuned = run(
        compose_train(
            tiny_run_overrides(
                tmp_path, corpus, "tuned", init_from=str(trained), **{"trainer.max_steps": 2, "model.block_size": 16}
            )
        )
    )
    assert tuned["val/loss"] < scratch["val/loss"]  # starts from 8 steps of training on the same text
    model, _ = load_model(tmp_path / "tuned")
    assert model.config.block_size == 16 and model.transformer.wpe.weight.shape[0] == 16  # positions cropped
    source, _ = load_model(trained)
    assert model.config.n_layer == source.config.n_layer  # the architecture is the source's


def test_init_from_refuses_another_tokenizer(trained, tmp_path):
    overrides = tiny_run_overrides(
        tmp_path, zen_of_python(tmp_path), init_from=str(trained), **{"data.tokenizer": "char"}
    )
    with pytest.raises(ValueError, match="uses the 'byte' tokenizer but data=text is tokenized with 'char'"):
        run(compose_train(overrides))


def test_keep_freed_memory_sets_glibcs_allocator_where_there_is_one():
    import platform

    from train.perf import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_compile_auto_is_on_for_cuda_and_long_cpu_runs():
    from train.perf import COMPILE_MIN_STEPS, use_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_compile(None, cuda, 10) and not use_compile(None, cpu, COMPILE_MIN_STEPS - 1)
    assert use_compile(None, cpu, COMPILE_MIN_STEPS) and use_compile(True, cpu, 1)
    assert not use_compile(False, cuda, 10**6)


@pytest.mark.e2e
def test_muon_takes_the_hidden_matrices_and_trains_and_resumes(tmp_path, monkeypatch):
    from train.optim import Optimizers, build_optimizer, muon_params

    cfg = compose_train(["debug=default", "optim=muon"])
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=64, tie_embeddings=False))
    hidden, rest = muon_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in hidden} == {n for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n}
    assert "lm_head.weight" in {names[id(p)] for p in rest} and "transformer.wte.weight" in {names[id(p)] for p in rest}
    optimizer = build_optimizer(model, cfg.optim, "cpu")
    assert isinstance(optimizer, Optimizers) and isinstance(optimizer.optimizers["muon"], torch.optim.Muon)
    corpus = zen_of_python(tmp_path)
    muon = {"optim": "muon", "samples.prompts": "[]"}
    run(compose_train(tiny_run_overrides(tmp_path, corpus, "straight", **muon)))
    straight = losses(tmp_path / "straight")
    assert straight[8] < straight[1]  # it learns
    train_killed_then_resumed(monkeypatch, tiny_run_overrides(tmp_path, corpus, "resumed", **muon))
    resumed = losses(tmp_path / "resumed")
    assert [resumed[s] for s in range(5, 9)] == [straight[s] for s in range(5, 9)]  # Muon's state resumes too


@pytest.mark.e2e
def test_whole_split_val_loss_is_score_tokens_over_the_val_split(tmp_path):
    import numpy as np

    from data.prepare import load_meta
    from train.scoring import score_tokens

    overrides = tiny_run_overrides(tmp_path, zen_of_python(tmp_path), **{"trainer.eval_batches": "null"})
    result = run(compose_train(overrides))
    data_dir = next(p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").is_file())
    val = np.memmap(data_dir / "val.bin", dtype=np.dtype(load_meta(data_dir)["dtype"]), mode="r")
    model, _ = load_model(tmp_path / "run")
    assert result["val/loss"] == pytest.approx(score_tokens(model, val, 32, batch_size=4)["loss"], rel=1e-6)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    times = [r["train/time"] for r in records if "train/loss" in r]
    assert len(times) == 8 and times == sorted(times) and times[0] > 0  # training seconds, growing each step


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA A10G", 70e12), ("NVIDIA A10", 125e12),
    ("NVIDIA GeForce RTX 4090", 165e12), ("Tesla T4", None), ("NVIDIA RTX A6000", None),
])  # fmt: skip
def test_gpu_peaks_match_whole_words_of_the_device_name(name, peak):
    from train.perf import gpu_datasheet_peak

    assert gpu_datasheet_peak(name) == peak


def test_a_measured_gpu_peak_is_cached_per_gpu_model(tmp_path, monkeypatch):
    from train import perf as dev

    names = iter(["Tesla T4", "Tesla V100-SXM2-16GB", "Tesla T4"])
    measured = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: next(names))
    monkeypatch.setattr(dev, "measure_peak", lambda d, t: (measured.append(d) or 65e12 + 1e12 * len(measured), True))
    gpu = torch.device("cuda", 0)
    assert [dev.peak_flops(gpu, torch.float16, tmp_path) for _ in range(3)] == [66e12, 67e12, 66e12]
    assert len(measured) == 2  # the second T4 reads the cache; the V100 is measured, not given the T4's peak


def test_keep_freed_memory_is_for_cpu_training_only(monkeypatch):
    from train import perf as dev

    calls = []
    monkeypatch.setattr(dev, "keep_freed_memory", lambda: calls.append(1) or True)
    assert dev.maybe_keep_freed_memory(True, torch.device("cuda", 0)) is False
    assert dev.maybe_keep_freed_memory(False, torch.device("cpu")) is False and calls == []
    assert dev.maybe_keep_freed_memory(True, torch.device("cpu")) is True and calls == [1]


@pytest.mark.e2e
def test_log_lines_show_elapsed_time_and_an_eta(tmp_path, capsys):
    """Every training log line ends with the run's elapsed wall time and the time left at its pace so far."""
    from train.log import eta_seconds, format_duration

    assert [format_duration(s) for s in (7.4, 245, 3725)] == ["7s", "4m05s", "1h02m"]
    assert eta_seconds(10, 100, 10, 20.0, 20.0, None) == pytest.approx(180.0)  # 90 steps left at 2 s each
    assert eta_seconds(10, 100, 10, 20.0, 20.0, max_time=50.0) == pytest.approx(30.0)  # the budget ends it first
    assert eta_seconds(5, 100, 0, 0.0, 3.0, None) is None  # a resumed run before its first step here
    run(compose_train(tiny_run_overrides(tmp_path, zen_of_python(tmp_path))))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step") and "loss" in line]
    step_lines = [line for line in lines if " ms/step" in line]
    assert step_lines and all(re.search(r"\| elapsed \d+s eta \d+s$", line) for line in step_lines)
    assert step_lines[-1].endswith("eta 0s")  # the last step: nothing left


def test_a_disturbed_peak_measurement_is_never_cached_and_a_steady_one_is(tmp_path, monkeypatch):
    """The two best runs far apart (other work on the machine) or a load average above the cores: the peak serves
    this run and is measured again next time; a steady one is cached; remeasure keeps the higher value."""
    from train import perf as dev

    runs = iter([[100e9, 60e9, 40e9], [200e9, 195e9, 150e9], [300e9, 290e9, 280e9]])
    monkeypatch.setattr(dev, "matmul_speeds", lambda device, dtype: next(runs))
    monkeypatch.setattr(dev.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    cpu = torch.device("cpu")
    assert dev.peak_flops(cpu, torch.float32, tmp_path) == 100e9  # disturbed: used, not cached
    assert not (tmp_path / "peak_flops.json").exists()
    assert dev.peak_flops(cpu, torch.float32, tmp_path) == 200e9  # steady: cached
    assert dev.peak_flops(cpu, torch.float32, tmp_path) == 200e9  # read from the cache, not measured
    assert dev.peak_flops(cpu, torch.float32, tmp_path, remeasure=True) == 300e9  # higher and steady: replaces it
    assert dev.peak_flops(cpu, torch.float32, tmp_path) == 300e9
    monkeypatch.setattr(dev, "matmul_speeds", lambda device, dtype: [900e9, 899e9])
    monkeypatch.setattr(dev.os, "getloadavg", lambda: (8.0, 8.0, 8.0))  # a busy machine: steady runs, but no cache
    assert dev.peak_flops(cpu, torch.float32, tmp_path, remeasure=True) == 900e9
    assert dev.peak_flops(cpu, torch.float32, tmp_path) == 300e9


@pytest.mark.parametrize(("remeasured", "still_above"), [(4e9, False), (1.5e9, True)])
def test_an_mfu_above_100_percent_measures_the_peak_again_and_warns(capsys, remeasured, still_above):
    from train.log import Meter

    calls = []
    meter = Meter(100, 1e9, torch.device("cpu"), remeasure=lambda: calls.append(1) or remeasured)
    meter.add(torch.tensor(1.0), flops=2e9)
    meter.t_last -= 1.0  # one step of one second: 2 GFLOP/s against a 1 GFLOP/s peak
    metrics = meter.read(lambda t: t)
    assert calls == [1] and metrics["perf/peak_flops"] == remeasured
    assert metrics["perf/mfu"] == pytest.approx(2e9 / remeasured, rel=0.01)
    err = capsys.readouterr().err
    assert "MFU 200% is above 100%" in err and ("overcount" in err) == still_above
    meter.add(torch.tensor(1.0), flops=2e9)
    meter.t_last -= 1.0
    meter.read(lambda t: t)
    assert calls == [1]  # measured again once per run, not at every log line
