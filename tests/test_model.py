"""GPT model: shapes, loss, initial loss, overfitting, causality, KV-cache equivalence, config validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, build_model
from model.config import GPT_PRESETS

VARIANTS = {
    "gpt2": {},
    "modern": dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_embeddings=False),
    "gqa": dict(n_head=4, n_kv_head=2, pos="rope"),
    "mqa_qknorm_relu2": dict(n_head=4, n_kv_head=1, qk_norm=True, mlp="relu2"),
}


def make(kwargs: dict, **overrides) -> GPT:
    return GPT(GPTConfig(**{**kwargs, **overrides}))


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shapes_and_loss(tiny_gpt_kwargs, variant):
    model = make(tiny_gpt_kwargs, **VARIANTS[variant])
    idx = torch.randint(0, 100, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 100)  # the real vocabulary, not the padded 128
    assert loss is None
    logits, loss = model(idx, targets=idx)
    assert loss.shape == () and torch.isfinite(loss)


def test_vocab_padding(tiny_gpt_kwargs):
    model = make(tiny_gpt_kwargs)
    assert model.config.padded_vocab_size == 128
    assert model.lm_head.weight.shape == (128, 16)
    assert model.transformer.wte.weight is model.lm_head.weight  # tied, like GPT-2


def test_initial_loss_is_log_vocab(tiny_gpt_kwargs):
    model = make(tiny_gpt_kwargs, vocab_size=1000, n_embd=32)
    idx = torch.randint(0, 1000, (8, 16))
    _, loss = model(idx, targets=torch.randint(0, 1000, (8, 16)))
    assert abs(loss.item() - math.log(1000)) < 0.1


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_overfits_one_batch(tiny_gpt_kwargs, variant):
    model = make(tiny_gpt_kwargs, **VARIANTS[variant])
    idx = torch.randint(0, 100, (4, 16))
    targets = torch.randint(0, 100, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        _, loss = model(idx, targets=targets)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_ignore_index(tiny_gpt_kwargs):
    model = make(tiny_gpt_kwargs)
    idx = torch.randint(0, 100, (2, 8))
    targets = idx.clone()
    targets[:, 4:] = -1
    _, loss_masked = model(idx, targets=targets)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 100), idx[:, :4].reshape(-1))
    torch.testing.assert_close(loss_masked, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(tiny_gpt_kwargs, variant):
    model = make(tiny_gpt_kwargs, **VARIANTS[variant]).eval()
    idx = torch.randint(0, 100, (1, 16))
    edited = idx.clone()
    edited[0, 10:] = (edited[0, 10:] + 1) % 100
    a, _ = model(idx)
    b, _ = model(edited)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_matches_full_forward(tiny_gpt_kwargs, variant):
    model = make(tiny_gpt_kwargs, **VARIANTS[variant]).eval()
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        full, _ = model(idx)
        model.set_kv_cache(batch_size=2)
        pieces = [model(idx[:, :5], input_pos=torch.arange(5))[0]]  # prefill, then one token at a time
        for t in range(5, 16):
            pieces.append(model(idx[:, t : t + 1], input_pos=torch.tensor([t]))[0])
        model.clear_kv_cache()
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["gpt2", "gqa"])
def test_kv_cache_greedy_tokens_identical(tiny_gpt_kwargs, variant):
    model = make(tiny_gpt_kwargs, **VARIANTS[variant]).eval()
    prompt = torch.randint(0, 100, (1, 4))
    with torch.no_grad():
        seq = prompt
        for _ in range(12):  # no cache: rerun the whole sequence each step
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
        model.set_kv_cache(batch_size=1)
        logits, _ = model(prompt, input_pos=torch.arange(4))
        cached = [logits[:, -1].argmax(-1)]
        for pos in range(4, 15):
            logits, _ = model(cached[-1][:, None], input_pos=torch.tensor([pos]))
            cached.append(logits[:, -1].argmax(-1))
        model.clear_kv_cache()
    assert torch.equal(torch.stack(cached, dim=1), seq[:, 4:])


def test_cache_requires_input_pos(tiny_gpt_kwargs):
    model = make(tiny_gpt_kwargs)
    model.set_kv_cache(1)
    with pytest.raises(ValueError, match="input_pos"):
        model(torch.zeros(1, 2, dtype=torch.long))


def test_too_long_sequence_error(tiny_gpt_kwargs):
    with pytest.raises(ValueError, match="block_size=16"):
        make(tiny_gpt_kwargs)(torch.zeros(1, 17, dtype=torch.long))


def test_num_params_and_flops(tiny_gpt_kwargs):
    model = make(tiny_gpt_kwargs)
    n = sum(p.numel() for p in model.parameters())
    assert model.num_params() == n
    assert model.num_params(non_embedding=True) == n - 16 * 16  # minus wpe
    assert model.flops_per_token() == 6 * (n - 256) + 12 * 2 * 16 * 16


def test_gpt2_preset_param_count():
    # GPT-2 small has 124,439,808 parameters with the 50257-token vocabulary (tied head counted once)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = GPT(GPTConfig.from_name("gpt2", padding_multiple=1))
    assert model.num_params() == 124_439_808


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_embd=15), "not divisible by model.n_head"),
        (dict(n_layer=0), "n_layer=0 must be a positive integer"),
        (dict(norm="batchnorm"), "model.norm='batchnorm' is not one of"),
        (dict(pos="alibi"), "model.pos='alibi'"),
        (dict(mlp="geglu"), "model.mlp='geglu'"),
        (dict(n_kv_head=3, n_head=4, n_embd=16), "not divisible by model.n_kv_head=3"),
        (dict(dropout=1.5), "dropout=1.5"),
    ],
)
def test_config_validation(tiny_gpt_kwargs, overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**tiny_gpt_kwargs, **overrides})


def test_unknown_key_names_the_key():
    with pytest.raises(ValueError, match="n_layers.*did you mean model.n_layer"):
        GPTConfig.from_dict({"n_layers": 2})


def test_presets_and_registry():
    assert set(GPT_PRESETS) >= {"gpt-nano", "gpt-mini", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}
    model = build_model({"kind": "gpt", "n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 10, "block_size": 4})
    assert isinstance(model, GPT)
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model({"kind": "rnn"})


@pytest.mark.parametrize("grad", [True, False])
def test_chunked_linear_cross_entropy_equals_the_plain_loss_and_gradients(grad):
    from model.layers import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(3, 41, 16, requires_grad=True)
    weight = torch.randn(72, 16, requires_grad=True)  # 72 rows: a vocabulary of 64 padded, as GPT pads it
    targets = torch.randint(0, 64, (3, 41))
    targets[0, :7] = -1  # ignored positions
    plain = F.cross_entropy((h @ weight[:64].t()).reshape(-1, 64), targets.reshape(-1), ignore_index=-1)
    with torch.set_grad_enabled(grad):
        chunked = linear_cross_entropy(h, weight, targets, vocab_size=64, chunk_rows=10)  # 13 chunks, one partial
    torch.testing.assert_close(chunked, plain.detach() if not grad else plain)
    if grad:
        expected = torch.autograd.grad(plain * 3.0, (h, weight))
        for got, want in zip(torch.autograd.grad(chunked * 3.0, (h, weight)), expected):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_chunked_cross_entropy_multiplies_the_padded_weight_and_masks_the_padding():
    # a 50257-column matmul is what vocabulary padding exists to avoid: every matmul of the fused head must see the
    # padded (72-row) weight, and the 8 padded ids get neither probability nor gradient
    from torch.utils._python_dispatch import TorchDispatchMode

    from model.layers import linear_cross_entropy

    class MatmulShapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default):
                self.shapes.append(tuple(d for a in args if isinstance(a, torch.Tensor) for d in a.shape))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    h = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(72, 16, requires_grad=True)
    targets = torch.randint(0, 64, (40,))
    with MatmulShapes() as seen:
        loss = linear_cross_entropy(h, weight, targets, vocab_size=64, chunk_rows=16)
    # every matmul of forward (its backward is a scale) has the padded vocabulary as a dimension, none the real one
    assert seen.shapes and all(72 in dims and 64 not in dims for dims in seen.shapes), seen.shapes
    (grad_w,) = torch.autograd.grad(loss, weight)
    assert grad_w[64:].abs().max() == 0 and grad_w[:64].abs().max() > 0


def test_chunk_rows_follow_the_device_and_the_vocabulary():
    from model.layers import LOGITS_PER_CHUNK, ce_chunk_rows

    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    for device in (cpu, cuda):
        rows = ce_chunk_rows(50304, device)
        assert rows % 64 == 0 and rows * 50304 <= LOGITS_PER_CHUNK[device.type]
        assert ce_chunk_rows(4096, device) > rows  # a smaller vocabulary takes more rows per chunk
    # a GPT-2-small micro-batch (12 x 1024 rows) on a GPU: a few chunks, not one per 512 rows
    assert -(-12 * 1024 // ce_chunk_rows(50304, cuda)) <= 4
    assert ce_chunk_rows(10**9, cpu) == 64  # never fewer than 64 rows


def test_chunks_are_made_equal_within_the_budget():
    from model.layers import ce_chunk_rows

    cpu = torch.device("cpu")
    most = ce_chunk_rows(50304, cpu)
    assert most == 640 and ce_chunk_rows(50304, cpu, 2048) == 512  # 4 x 512, not 3 x 640 + 128
    for rows in (1, 63, 640, 641, 2048, 2049, 5000):
        per = ce_chunk_rows(50304, cpu, rows)
        chunks = -(-rows // per)
        assert per % 64 == 0 and 64 <= per <= most and chunks == -(-rows // most), rows  # no more chunks than needed
        assert per < -(-rows // chunks) + 64, rows  # as equal as multiples of 64 allow
    assert ce_chunk_rows(10**9, cpu, 1000) == 64  # never fewer than 64 rows


def test_chunked_loss_under_cpu_autocast_matches_the_autocast_plain_loss():
    """Under bf16 autocast the weight is cast once and every chunk multiplies in bf16, as autocast's plain head
    would: loss and gradients (returned in the inputs' fp32) within bf16's rounding of the plain ones."""
    from model.layers import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(96, 32, requires_grad=True)
    weight = (torch.randn(72, 32) * 0.3).requires_grad_()
    targets = torch.randint(0, 64, (96,))
    targets[:9] = -1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy((h @ weight.t())[:, :64].float(), targets, ignore_index=-1)
        chunked = linear_cross_entropy(h, weight, targets, vocab_size=64, chunk_rows=32)
    torch.testing.assert_close(chunked, plain, atol=2e-2, rtol=2e-2)
    got = torch.autograd.grad(chunked, (h, weight))
    want = torch.autograd.grad(plain, (h, weight))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=2e-3, rtol=5e-2)


def test_an_fp16_weight_gradient_is_summed_over_chunks_in_fp32():
    """Under fp16 autocast each chunk's weight gradient fits fp16 but their sum need not (largest value 65,504):
    10,000 rows of 8.0 all aiming at id 0 sum to about -80,000 in the gradient of w[0], which must come back
    finite (-8 after the mean), not inf."""
    from model.layers import linear_cross_entropy

    h = torch.full((10_000, 8), 8.0)
    weight = torch.zeros(64, 8, requires_grad=True)  # uniform softmax: d loss / d w[0] = (1/64 - 1) * 8
    targets = torch.zeros(10_000, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = linear_cross_entropy(h, weight, targets, vocab_size=64, chunk_rows=1_000)  # 10 chunks
    (grad,) = torch.autograd.grad(loss, weight)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    torch.testing.assert_close(grad[0], torch.full((8,), (1 / 64 - 1) * 8), atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_chunk_for_torch_compile_equals_the_in_place_chunk(dtype):
    """_chunk_fused (what a compiled model's loss compiles per chunk) gives _chunk_in_place's loss and gradients
    (for the rows and for the logits): ignored rows, padded columns and a target at the last real id included."""
    from model.layers import _chunk_fused, _chunk_in_place

    torch.manual_seed(0)
    hc = torch.randn(24, 16).to(dtype)
    w = torch.randn(72, 16).to(dtype)  # 64 real ids, 8 padded
    targets = torch.randint(0, 64, (24,))
    targets[:5] = -1
    targets[5] = 63
    fused = _chunk_fused(hc, w, targets, 64)
    in_place = _chunk_in_place(hc, w, targets, 64)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for a, b in zip(fused, in_place):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a.float(), b.float(), **tol)
    assert fused[2][:, 64:].abs().max() == 0  # padding: no gradient
    assert fused[1][:5].abs().max() == 0 and fused[2][:5].abs().max() == 0  # ignored rows: none either


def test_the_weight_gradient_is_summed_in_bf16_over_few_chunks_and_stays_near_autocasts_plain_head():
    """Under bf16 autocast, up to LOW_PRECISION_SUM_CHUNKS chunks sum the weight's gradient in bf16 (addmm_, no fp32
    copy beside the activations; the sum backward keeps is bf16), more chunks in fp32. Against an fp64 reference
    the error stays near autocast's unfused head's (one bf16 product): measured 1.18x at 4 chunks, 1.39x at 8."""
    from model.layers import LOW_PRECISION_SUM_CHUNKS, linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(1024, 64).bfloat16().float()  # inputs bf16 represents exactly: only the arithmetic differs
    weight = (torch.randn(1024, 64) * 0.3).bfloat16().float()
    targets = torch.randint(0, 1000, (1024,))
    w64 = weight.double().requires_grad_()
    reference = torch.autograd.grad(F.cross_entropy((h.double() @ w64.t())[:, :1000], targets), w64)[0]

    def error(loss_fn, sum_dtype=None) -> float:
        w = weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(w)
        if sum_dtype is not None:
            assert loss.grad_fn.saved_tensors[1].dtype == sum_dtype  # (grad_h, the weight's gradient, count)
        grad = torch.autograd.grad(loss, w)[0]
        assert grad.dtype == torch.float32
        return ((grad.double() - reference).norm() / reference.norm()).item()

    def chunked(rows: int):
        return lambda w: linear_cross_entropy(h, w, targets, vocab_size=1000, chunk_rows=rows)

    assert LOW_PRECISION_SUM_CHUNKS == 8
    plain = error(lambda w: F.cross_entropy((h @ w.t())[:, :1000].float(), targets))
    assert error(chunked(1024), torch.bfloat16) < 1.05 * plain
    assert error(chunked(256), torch.bfloat16) < 1.25 * plain  # 4 chunks
    assert error(chunked(128), torch.bfloat16) < 1.5 * plain  # 8 chunks
    assert error(chunked(64), torch.float32) < 1.05 * plain  # 16 chunks: an fp32 sum of bf16 products


def test_a_compiled_gpt_runs_its_loss_chunk_by_chunk_with_the_eager_loss_and_gradients(monkeypatch):
    """Under torch.compile the loss leaves the model's graph (a graph break) and each chunk runs as a compiled graph
    of _chunk_fused, one after another; loss and gradients equal the eager model's."""
    from torch._dynamo.testing import CompileCounter

    from model import layers

    counter, calls = CompileCounter(), []

    def compiled_chunk():
        fused = torch.compile(layers._chunk_fused, backend=counter)
        return lambda *args: (calls.append(args[0].shape[0]), fused(*args))[1]

    monkeypatch.setattr(layers, "_compiled_chunk", compiled_chunk)
    monkeypatch.setitem(layers.LOGITS_PER_CHUNK, "cpu", 64 * 320)  # at most 64 rows of the padded vocabulary
    torch._dynamo.reset()
    try:
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=300))  # padded to 320
        x, y = torch.randint(0, 300, (4, 32)), torch.randint(0, 300, (4, 32))
        y[0, :4] = -1
        eager_loss = model(x, y, return_logits=False)[1]
        eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
        assert calls == []  # eager: the in-place chunks
        loss = torch.compile(model, backend="eager")(x, y, return_logits=False)[1]
        grads = torch.autograd.grad(loss, list(model.parameters()))
        assert calls == [64, 64] and counter.frame_count == 1  # 128 rows: two equal chunks, one compiled shape
        torch.testing.assert_close(loss, eager_loss)
        for g, e in zip(grads, eager_grads):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
    finally:
        torch._dynamo.reset()


def test_gpt_loss_without_logits_equals_the_plain_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=100))  # padded to 128
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    logits, plain = model(idx, targets)
    none, chunked = model(idx, targets, return_logits=False)
    assert none is None and logits.shape == (2, 16, 100)
    torch.testing.assert_close(chunked, plain)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    chunked_grads = torch.autograd.grad(chunked, list(model.parameters()))
    for a, b in zip(plain_grads, chunked_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gpt", "t5"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(kind):
    from model import T5, T5Config

    def build():
        torch.manual_seed(0)
        if kind == "gpt":
            return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=64, dropout=0.2))
        return T5(T5Config(n_encoder_layer=2, n_decoder_layer=2, n_head=2, n_embd=16, intermediate_size=32,
                           block_size=16, vocab_size=64, dropout=0.2))  # fmt: skip

    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    args = (ids, ids) if kind == "gpt" else (ids, ids, ids)
    results = []
    for checkpointed in (False, True):
        model = build().train()
        model.activation_checkpointing = checkpointed
        torch.manual_seed(5)  # the same dropout masks: checkpointing replays the RNG when it recomputes
        _, loss = model(*args)
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    assert torch.equal(plain, checkpointed)
    for a, b in zip(plain_grads, checkpointed_grads):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("n_embd,expected", [(64, torch.float32), (256, torch.bfloat16)])
def test_cpu_bf16_attention_runs_in_fp32_below_head_size_64(monkeypatch, n_embd, expected):
    # torch's CPU flash-attention backward in bf16 is several times slower than fp32 at small head sizes
    import torch.nn.functional as F

    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: seen.append(q.dtype) or sdpa(q, *a, **k))
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=n_embd, block_size=8, vocab_size=17, pos="rope", qk_norm=True))
    idx = torch.randint(0, 17, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    loss.backward()
    assert seen == [expected] and torch.isfinite(loss)
    _, loss32 = model(idx, idx)
    assert loss.item() == pytest.approx(loss32.item(), abs=0.05)  # bf16 matmuls around it
