"""T5 model: relative-position buckets, encoder bidirectional / decoder causal, cached decoding, HF parity."""

from __future__ import annotations

import pytest
import torch

from model import T5, T5Config, build_model
from model.hf import t5_config_from_hf, t5_state_dict_from_hf
from model.t5 import relative_position_bucket

TINY = dict(n_encoder_layer=2, n_decoder_layer=2, n_head=2, n_embd=16, intermediate_size=32, block_size=32,
            vocab_size=100, dropout=0.0)  # fmt: skip
VARIANTS = {"v1.0": {}, "v1.1": dict(mlp="gated-gelu", tie_embeddings=False)}


def tiny(**overrides) -> T5:
    return T5(T5Config(**{**TINY, **overrides})).eval()


def test_relative_position_buckets_match_hand_computed_values():
    rel = torch.tensor([-200, -128, -20, -8, -7, -1, 0, 1, 7, 8, 20, 128, 200])  # key minus query
    # bidirectional, 32 buckets: 16 per direction, exact below 8, log-spaced from 8 to 128
    # e.g. distance 20: 8 + int(log(20/8) / log(128/8) * 8) = 8 + int(2.643) = 10
    bi = relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert bi.tolist() == [15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31]
    # causal, 32 buckets: keys before the query only (distance = query - key), exact below 16
    # distance 20: 16 + int(log(20/16) / log(128/16) * 16) = 16 + int(1.716) = 17; later keys -> bucket 0
    causal = relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
    assert causal.tolist() == [31, 31, 17, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_encoder_is_bidirectional_and_decoder_causal(variant):
    model = tiny(**VARIANTS[variant])
    enc = torch.randint(0, 100, (1, 10))
    dec = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        out = model.encode(enc)
        edited = enc.clone()
        edited[0, -1] = (edited[0, -1] + 1) % 100
        assert not torch.allclose(model.encode(edited)[0, 0], out[0, 0])  # the first position sees the last
        logits = model.decode(dec, out)
        dec2 = dec.clone()
        dec2[0, 5:] = (dec2[0, 5:] + 1) % 100
        logits2 = model.decode(dec2, out)
    torch.testing.assert_close(logits[:, :5], logits2[:, :5], rtol=0, atol=0)
    assert not torch.allclose(logits[:, 5:], logits2[:, 5:])


def test_padding_is_masked_out():
    model = tiny()
    enc = torch.randint(0, 100, (1, 6))
    padded = torch.cat([enc, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    dec = torch.randint(0, 100, (1, 5))
    with torch.no_grad():
        a, _ = model(enc, dec)
        b, _ = model(padded, dec, enc_mask=mask)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_greedy_decoding_equals_uncached(variant):
    model = tiny(**VARIANTS[variant])
    enc = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        enc_out = model.encode(enc)
        seq = torch.zeros(2, 1, dtype=torch.long)  # decoder start
        for _ in range(12):  # no cache: rerun the decoder on the whole prefix
            seq = torch.cat([seq, model.decode(seq, enc_out)[:, -1].argmax(-1, keepdim=True)], dim=1)
        model.set_kv_cache(batch_size=2, max_seq_len=13)
        token, cached = torch.zeros(2, dtype=torch.long), []
        for pos in range(12):
            token = model.decode(token[:, None], enc_out, input_pos=torch.tensor([pos]))[:, -1].argmax(-1)
            cached.append(token)
        model.clear_kv_cache()
    assert torch.equal(torch.stack(cached, dim=1), seq[:, 1:])


def test_config_validation_and_registry():
    with pytest.raises(ValueError, match="n_embd=15 is not divisible by model.n_head=2"):
        T5Config(**{**TINY, "n_embd": 15})
    with pytest.raises(ValueError, match="model.mlp='swiglu'"):
        T5Config(**{**TINY, "mlp": "swiglu"})
    assert T5Config(**{**TINY, "n_embd": 15, "head_size": 8}).head_size == 8
    assert isinstance(build_model({"kind": "t5", **TINY}), T5)
    assert T5Config.from_name("t5-small").n_embd == 512


def test_t5_small_parameter_count():
    with torch.device("meta"):
        model = T5(T5Config.from_name("t5-small", padding_multiple=1))
    assert model.num_params() == 60_506_624  # t5-small as published (tied embeddings)


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    "hf_kwargs",
    [
        dict(feed_forward_proj="relu", tie_word_embeddings=True),  # v1.0
        dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=8),  # v1.1, n_head*d_kv != d_model
    ],
    ids=["v1.0", "v1.1"],
)
def test_t5_matches_transformers(hf_kwargs):
    torch.manual_seed(0)
    base = dict(vocab_size=120, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
                dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
    config = transformers.T5Config(**{**base, **hf_kwargs})
    hf = transformers.T5ForConditionalGeneration(config).eval()
    ours = T5(t5_config_from_hf(hf.config.to_dict())).eval()
    ours.load_state_dict(t5_state_dict_from_hf(hf.state_dict()))

    enc = torch.randint(2, 120, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False  # the second row is padded
    dec = torch.randint(2, 120, (2, 7))
    with torch.no_grad():
        expected = hf(input_ids=enc, attention_mask=mask, decoder_input_ids=dec)
        enc_out = ours.encode(enc, mask)
        logits = ours.decode(dec, enc_out, mask)
    torch.testing.assert_close(enc_out, expected.encoder_last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, expected.logits, rtol=1e-4, atol=1e-4)

    with torch.no_grad():  # greedy decoding with the cache, 20 tokens, eos disabled on both sides
        hf_tokens = hf.generate(input_ids=enc, attention_mask=mask, max_new_tokens=20, min_new_tokens=20,
                                do_sample=False, num_beams=1)[:, 1:]  # fmt: skip
        ours.set_kv_cache(batch_size=2, max_seq_len=21)
        token, tokens = torch.zeros(2, dtype=torch.long), []
        for pos in range(20):
            logits = ours.decode(token[:, None], enc_out, mask, input_pos=torch.tensor([pos]))[:, -1]
            logits[:, 1] = float("-inf")  # min_new_tokens: eos suppressed, as hf.generate does
            token = logits.argmax(-1)
            tokens.append(token)
        ours.clear_kv_cache()
    assert torch.equal(torch.stack(tokens, dim=1), hf_tokens)


def test_training_flops_count_each_stack_with_its_own_tokens():
    """A T5 row's FLOPs: encoder tokens through the encoder (and the decoder's cross-attention keys/values), decoder
    tokens through the decoder and the head; a batch counts its padded shapes, not 2 x block_size per row."""
    model = T5(T5Config(vocab_size=50, n_embd=16, n_head=2, n_encoder_layer=2, n_decoder_layer=1, intermediate_size=32))
    C, F, V, inner = 16, 32, model.config.padded_vocab_size, 16
    attn, mlp = 4 * C * inner, 2 * C * F
    enc = 2 * (attn + mlp) + 2 * C * inner  # two encoder blocks + the decoder block's cross k, v
    dec = 1 * (attn + 2 * C * inner + mlp) + V * C  # self-attention, cross q and o, MLP, the head
    S, L = 7, 3
    expected = 6 * (enc * S + dec * L) + 12 * inner * (2 * S * S + 1 * L * (L + S))
    assert model.flops_per_row(S, L) == expected
    batch = {"enc_idx": torch.zeros(4, S, dtype=torch.long), "dec_idx": torch.zeros(4, L, dtype=torch.long)}
    assert model.batch_flops(batch) == 4 * expected
