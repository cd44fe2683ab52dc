"""Weight-only int8 (model/quant.py): per-channel quantisation, logits near float32's, the same greedy text on a
peaked model, and dtype=int8 through the pipeline and the sample command."""

from __future__ import annotations

import pytest
import torch

from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import save_model
from model.quant import Int8Linear, is_quantized, quantize_int8
from sample.generate import generate_tokens


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    options = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=257) | overrides
    return GPT(GPTConfig(**options)).eval()


def test_int8_linear_is_the_per_channel_rounding_of_the_weights():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 40)
    q = Int8Linear(linear)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() == 127  # each row's largest weight is +-127
    scale = linear.weight.abs().amax(dim=1) / 127
    dequantised = q.weight.float() * q.scales.float()[:, None]
    assert (dequantised - linear.weight).abs().max() <= scale.max()  # half a step, plus the bf16 scale's rounding
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(q(x).float(), linear(x), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("options", [{}, {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "tie_embeddings": False}])
def test_an_int8_model_decodes_close_to_float32(options):
    model = tiny_gpt(**options)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaked next-token distributions: greedy choices far from ties
    idx = torch.randint(0, 257, (2, 12))
    with torch.no_grad():
        want = model(idx)[0]
    plain = torch.stack(list(generate_tokens(model, idx, 16)), 1)
    quantize_int8(model)
    assert is_quantized(model) and not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    with torch.no_grad():
        got = model(idx)[0].float()
        _, loss = model(idx, targets=idx)  # scoring an int8 model takes the logits path
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95
    assert torch.isfinite(loss)
    fast = torch.stack(list(generate_tokens(model, idx, 16)), 1)  # the int8 model's own greedy decoding
    assert fast.shape == plain.shape and torch.equal(fast[:, 0], got[:, -1].argmax(-1))


def test_dtype_int8_in_the_pipeline_and_the_sample_command(tmp_path, capsys):
    from train_helpers import run_sample_main

    from sample import pipeline

    ckpt = save_model(tiny_gpt(), tmp_path / "m", tokenizer_spec=get_tokenizer("byte").spec())
    pipe = pipeline("text-generation", model=ckpt, dtype="int8")
    assert is_quantized(pipe.model)
    [out] = pipe("Once upon", max_new_tokens=8, do_sample=False)
    assert out["generated_text"].startswith("Once upon")
    code, text, _ = run_sample_main(capsys, f"checkpoint={ckpt}", "prompt=Once upon", "max_new_tokens=8",
                                    "do_sample=false", "dtype=int8")  # fmt: skip
    assert code == 0 and out["generated_text"] in text
    code, _, err = run_sample_main(capsys, f"checkpoint={ckpt}", "prompt=x", "dtype=int4")
    assert code != 0 and "dtype='int4' is not one of auto, float32, bfloat16, float16, int8" in err
    with pytest.raises(ValueError, match="float16 or int8"):
        pipeline("text-generation", model=ckpt, dtype="int4")
