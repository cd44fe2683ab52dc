"""Parity with the reference implementation: a random Hugging Face GPT-2, converted, gives the same logits.

transformers is a test dependency; models are randomly initialised from configs, so no network is needed.
"""

from __future__ import annotations

import pytest
import torch

from model import GPT
from model.hf import gpt_config_from_hf, gpt_state_dict_from_hf

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    "hf_kwargs",
    [
        dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=1000),
        dict(n_layer=3, n_head=4, n_embd=64, n_positions=40, vocab_size=257),  # vocab not a multiple of 64
    ],
)
def test_gpt2_logits_and_greedy_tokens_match_transformers(hf_kwargs):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_kwargs)).eval()
    ours = GPT(gpt_config_from_hf(hf.config.to_dict())).eval()
    ours.load_state_dict(gpt_state_dict_from_hf(hf.state_dict()))

    idx = torch.randint(0, hf_kwargs["vocab_size"], (2, 20))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)

    prompt = idx[:1, :5]
    with torch.no_grad():
        hf_tokens = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0)[0, 5:]
        ours.set_kv_cache(batch_size=1)
        logits, _ = ours(prompt, input_pos=torch.arange(5))
        tokens = [logits[0, -1].argmax()]
        for pos in range(5, 34):
            logits, _ = ours(tokens[-1].view(1, 1), input_pos=torch.tensor([pos]))
            tokens.append(logits[0, -1].argmax())
    assert torch.equal(torch.stack(tokens), hf_tokens)
