"""What only an NVIDIA GPU can show: the CUDA paths whose logic the CPU suite proves by simulation (mocked device
capabilities and names, gloo ranks, a CPU grad scaler), run for real. Skipped where CUDA is not available."""

from __future__ import annotations

import pytest
import torch
from train_helpers import compose_train, losses, tiny_run_overrides, zen_of_python

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA (none here)"),
]


def test_dtype_auto_trains_in_the_gpus_fast_dtype(tmp_path):
    from nanoloom.device import cuda_has_fast_bf16, resolve_dtype
    from train.loop import run

    device = torch.device("cuda")
    expected = torch.bfloat16 if cuda_has_fast_bf16(device) else torch.float16  # fp16 + grad scaler before Ampere
    assert resolve_dtype("auto", device) == expected
    overrides = tiny_run_overrides(
        tmp_path, zen_of_python(tmp_path), **{"trainer.device": "cuda", "trainer.dtype": "auto"}
    )
    result = run(compose_train(overrides))
    logged = losses(tmp_path / "run")
    assert result["step"] == 8 and logged[8] < logged[1]


def test_the_measured_peak_is_plausible_and_cached_per_gpu_model(tmp_path):
    import json

    from train.perf import peak_flops

    device = torch.device("cuda")
    peak = peak_flops(device, torch.float32, tmp_path)
    assert 1e12 < peak < 5e15  # FLOP/s: between a small laptop GPU and a B200
    cached = json.loads((tmp_path / "peak_flops.json").read_text()) if (tmp_path / "peak_flops.json").exists() else {}
    assert all(key.startswith("cuda:") for key in cached)  # keyed by the GPU model's name, when measured


def test_a_fused_adamw_step_never_syncs_the_host(tmp_path):
    """The non-finite guard, the loss meter and the optimizer step of a non-log step run with no host sync."""
    from train.dist import DistInfo
    from train.log import Meter
    from train.loop import _finite
    from train.optim import DeviceSkips

    model = torch.nn.Linear(64, 64, device="cuda")
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    skips, meter, info = DeviceSkips(torch.device("cuda")), Meter(1, 0.0, torch.device("cuda")), DistInfo()
    x = torch.randn(8, 64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3):
            loss = model(x).square().mean() * (float("nan") if step == 1 else 1.0)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            ok = _finite(loss, grad_norm, info)
            skips.arm(optimizer, ok, step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            meter.add(loss.detach(), ok)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert skips.read() == (1, 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_generation_loads_bf16_weights_and_compiles_decoding_once(tmp_path):
    from torch._dynamo.testing import CompileCounter

    from model import GPT, GPTConfig
    from nanoloom.device import cuda_has_fast_bf16, inference_dtype
    from sample.generate import generate_tokens

    if not cuda_has_fast_bf16(torch.device("cuda")):
        assert inference_dtype("cuda") is None
        pytest.skip("this GPU has no bf16 tensor cores: generation keeps fp32 weights")
    assert inference_dtype("cuda") == torch.bfloat16
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=256, vocab_size=257, pos="rope"))
    model.to("cuda", torch.bfloat16).eval()
    counter = CompileCounter()
    real = torch.compile
    torch.compile = lambda fn, **kw: real(fn, **{**kw, "backend": counter})
    try:
        for length in (3, 17, 40):
            prompt = torch.randint(0, 256, (1, length), device="cuda")
            list(generate_tokens(model, prompt, 8, compile=True))
    finally:
        torch.compile = real
    assert counter.frame_count == 1


def test_chunked_cross_entropy_in_bf16_matches_the_plain_loss():
    from model.layers import linear_cross_entropy

    h = torch.randn(2048, 256, device="cuda", requires_grad=True)
    weight = torch.randn(50304, 256, device="cuda", requires_grad=True) * 0.02
    targets = torch.randint(0, 50257, (2048,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        chunked = linear_cross_entropy(h, weight, targets, 50257)
        plain = torch.nn.functional.cross_entropy((h @ weight[:50257].t()).float(), targets)
    torch.testing.assert_close(chunked, plain, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_with_nccl_match_one(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from train.loop import run

    root = Path(__file__).resolve().parents[1]
    corpus = zen_of_python(tmp_path)
    run(
        compose_train(
            tiny_run_overrides(tmp_path, corpus, "single", **{"trainer.batch_size": 8, "trainer.device": "cuda"})
        )
    )
    overrides = tiny_run_overrides(tmp_path, corpus, "ddp", **{"trainer.batch_size": 4, "trainer.device": "cuda"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29571", "-m", "train"]
    proc = subprocess.run([*cmd, *overrides, f"hydra.run.dir={tmp_path / 'ddp'}"], cwd=root, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    single, ddp = list(losses(tmp_path / "single").values()), list(losses(tmp_path / "ddp").values())
    assert ddp == pytest.approx(single, rel=1e-3)
