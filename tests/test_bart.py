"""BART (model/bart.py) from Hugging Face folders: random transformers models saved with a byte-level BPE tokenizer
built here, loaded through hf:, equal to transformers (encoder output, logits, greedy and beam outputs with BART's
forced <s> and </s>), through the text2text pipeline, and refused with one line when the folder does not fit."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from model import Bart  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from sample import pipeline  # noqa: E402
from sample.generate import beam_search, generate_tokens  # noqa: E402

TEXT = ["the cat sat on the mat", "a dog ran in the park", "summarise the text: the sun is hot", "hello world"] * 20


def bart_tokenizer(path, vocab_size: int = 300):
    """A byte-level BPE tokenizer.json with BART's special tokens first (<s> 0, <pad> 1, </s> 2, <unk> 3)."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TEXT, vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return tok.get_vocab_size()


def bart_folder(path, **config):
    """A random BartForConditionalGeneration (odd sizes, a vocabulary not a multiple of 64, a non-zero
    final_logits_bias) saved with its tokenizer; returns the transformers model."""
    vocab = bart_tokenizer(path)
    options = dict(vocab_size=vocab + 3, d_model=24, encoder_layers=2, decoder_layers=3, encoder_attention_heads=3,
                   decoder_attention_heads=3, encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=48,
                   dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
                   eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0,
                   forced_eos_token_id=2) | config  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.BartForConditionalGeneration(transformers.BartConfig(**options)).eval()
    with torch.no_grad():
        hf.final_logits_bias.normal_(std=0.5)
    hf.generation_config.forced_bos_token_id = 0  # as facebook/bart-large's generation_config.json says
    hf.save_pretrained(path)
    return hf


@pytest.mark.e2e
def test_a_bart_folder_matches_transformers(tmp_path):
    hf = bart_folder(tmp_path)
    model, tok = load_model(f"hf:{tmp_path}")
    assert isinstance(model, Bart) and model.config.vocab_size == hf.config.vocab_size and hf.config.vocab_size % 64
    assert tok.eot_id == 2 and tok.bos_id == 0 and tok.pad_id == 1
    first, second = tok.encode("the cat sat on the mat"), tok.encode("hello world")
    enc = torch.tensor([[0, *first, 2], [0, *second, 2] + [1] * (len(first) - len(second))])  # padded on the right
    mask = (enc != 1).long()
    dec = torch.randint(3, 50, (2, 5))
    with torch.no_grad():
        expected = hf(input_ids=enc, attention_mask=mask, decoder_input_ids=dec)
        enc_out = model.encode(enc, mask.bool())
        real = mask.bool()[..., None]  # the encoder's padded positions hold values no query reads
        torch.testing.assert_close(enc_out * real, expected.encoder_last_hidden_state * real, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode(dec, enc_out, mask.bool()), expected.logits, rtol=1e-5, atol=1e-5)
        greedy = hf.generate(enc, attention_mask=mask, max_new_tokens=10, do_sample=False, num_beams=1)
        beams = hf.generate(enc[:1], max_new_tokens=10, do_sample=False, num_beams=3, num_return_sequences=3,
                            length_penalty=1.0, early_stopping=True, output_scores=True,
                            return_dict_in_generate=True)  # fmt: skip
    assert hf.generation_config.forced_bos_token_id == 0  # generation starts </s> <s>: forced, as ours
    ours = torch.stack(list(generate_tokens(model, enc, 10, attention_mask=mask, eos_token_id=2, temperature=0.0,
                                            forced_bos_token_id=0, forced_eos_token_id=2)), dim=1)  # fmt: skip
    for row, want in zip(ours.tolist(), greedy[:, 1:].tolist()):  # after the decoder start
        end = row.index(2) + 1 if 2 in row else len(row)
        assert row[:end] == want[:end]
    forced = {"forced_bos_token_id": 0, "forced_eos_token_id": 2}
    hyps = beam_search(model, enc[:1], 10, num_beams=3, num_return_sequences=3, length_penalty=1.0,
                       early_stopping=True, eos_token_id=2, **forced)[0]  # fmt: skip
    assert [tokens for tokens, _ in hyps] == [[t for t in row[1:].tolist() if t != 1] for row in beams.sequences]
    assert [score for _, score in hyps] == pytest.approx(beams.sequences_scores.tolist(), abs=1e-5)


def test_the_text2text_pipeline_reads_a_bart_folder_with_its_decoding_defaults(tmp_path):
    hf = bart_folder(tmp_path)
    t2t = pipeline("text2text-generation", model=f"hf:{tmp_path}")
    [out] = t2t("the cat sat on the mat", max_new_tokens=8, do_sample=False)
    _, tok = load_model(f"hf:{tmp_path}")
    enc = torch.tensor([[0, *tok.encode("the cat sat on the mat"), 2]])  # BART's framing: <s> text </s>
    with torch.no_grad():
        want = hf.generate(enc, max_new_tokens=8, do_sample=False, num_beams=1)[0, 1:].tolist()
    ids = [t for t in want if t not in (0, 1, 2)]
    assert out["generated_text"] == tok.decode(ids)


@pytest.mark.parametrize("model_type", ["mbart", "pegasus", "marian"])
def test_other_encoder_decoders_are_refused_naming_what_is_supported(tmp_path, model_type):
    bart_folder(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    with pytest.raises(ValueError, match=rf"model_type='{model_type}'; nanoloom imports only gpt2, t5, bart") as e:
        load_model(f"hf:{tmp_path}")
    assert "\n" not in str(e.value)


def test_a_bart_folder_whose_tokenizer_does_not_fit_is_one_line(tmp_path):
    bart_folder(tmp_path, vocab_size=40)  # the tokenizer has some 300 ids, the model 40
    with pytest.raises(ValueError, match="tokens but the model only 40; the folder mixes files") as e:
        load_model(f"hf:{tmp_path}")
    assert "\n" not in str(e.value)
    bart_folder(tmp_path / "prenorm", normalize_before=True)
    with pytest.raises(ValueError, match="normalize_before=True; nanoloom's BART supports only"):
        load_model(f"hf:{tmp_path / 'prenorm'}")


def test_python_m_sample_decodes_a_bart_folder_as_transformers_does(tmp_path, capsys):
    from train_helpers import run_sample_main

    hf = bart_folder(tmp_path)
    _, tok = load_model(f"hf:{tmp_path}")
    enc = torch.tensor([[0, *tok.encode("hello world"), 2]])
    with torch.no_grad():
        want = [t for t in hf.generate(enc, max_new_tokens=6, do_sample=False)[0, 1:].tolist() if t not in (0, 1, 2)]
    code, out, err = run_sample_main(capsys, f"checkpoint=hf:{tmp_path}", "prompt=hello world", "max_new_tokens=6",
                                      "do_sample=false")  # fmt: skip
    assert code == 0, err
    assert tok.decode(want) in out and "bart: the prompt is the encoder input" in out + err


def test_a_bart_checkpoint_exports_to_a_folder_transformers_loads(tmp_path):
    """hf: folder -> nanoloom checkpoint -> python -m model.export -> transformers: no missing or unexpected keys,
    equal logits, the same <s> text </s> framing from AutoTokenizer, and the same greedy output."""
    from model.checkpoint import save_model
    from model.export import export_hf

    bart_folder(tmp_path / "hf")
    model, tok = load_model(f"hf:{tmp_path / 'hf'}")
    decoding = {"forced_bos_token_id": 0, "forced_eos_token_id": 2, "num_beams": 1, "do_sample": False}
    ckpt = save_model(model, tmp_path / "ckpt", tokenizer_spec=tok.spec(), meta={"generation": decoding})
    out = export_hf(ckpt, tmp_path / "out")
    hf, info = transformers.BartForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    enc = transformers.AutoTokenizer.from_pretrained(out)("the cat sat on the mat", return_tensors="pt").input_ids
    assert enc[0].tolist() == [0, *tok.encode("the cat sat on the mat"), 2]
    dec = torch.randint(3, 50, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(input_ids=enc, decoder_input_ids=dec).logits,
                                   model.decode(dec, model.encode(enc)), rtol=1e-5, atol=1e-5)  # fmt: skip
        want = hf.generate(enc, max_new_tokens=8)[0, 1:].tolist()  # the exported generation_config's decoding
    t2t = pipeline("text2text-generation", model=str(ckpt))
    [ours] = t2t("the cat sat on the mat", max_new_tokens=8, return_tensors=True)
    assert ours["generated_token_ids"] == want and want[0] == 0 and want[-1] == 2  # forced <s> and </s>


@pytest.mark.slow
def test_bart_fine_tunes_from_an_hf_folder_and_resumes_exactly(tmp_path, monkeypatch):
    """python -m train init_from=hf:<bart folder> task=seq2seq data.tokenizer=model: the pairs are tokenized with
    BART's BPE and framed <s> ... </s> as BART's tokenizer frames them, the same loop trains it, a run killed in a
    step resumes to the same losses, and the checkpoint is a BART cropped to the run's context."""
    from train_helpers import compose_train, losses, tiny_run_overrides, train_killed_then_resumed

    from train.loop import run

    bart_folder(tmp_path / "hf")
    words = ["the", "cat", "sat", "mat", "dog", "park"]
    lines = [json.dumps({"input": f"{a} {b}", "target": f"{b} {a}"}) for a in words for b in words]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")

    def overrides(name: str, **extra: object) -> list[str]:
        return tiny_run_overrides(
            tmp_path, tmp_path / "pairs.jsonl", name, init_from=f"hf:{tmp_path / 'hf'}", task="seq2seq", data="pairs",
            **{"data.tokenizer": "model", "samples.eval_pairs": 2, "task.max_new_tokens": 6, "samples.prompts": "[]",
               "trainer.save_interval": 4, "optim.lr": 3e-3, **extra},
        )  # fmt: skip

    result = run(compose_train(overrides("straight")))
    assert result["step"] == 8
    train_killed_then_resumed(monkeypatch, overrides("resumed"))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    model, tokenizer = load_model(tmp_path / "straight")
    assert isinstance(model, Bart) and model.config.block_size == 32  # the 48 positions cropped to the run's 32
    from data.loader import Seq2SeqLoader  # the loader frames pairs as BART's tokenizer does

    data_dir = next((tmp_path / "cache").rglob("meta.json")).parent
    loader = Seq2SeqLoader(data_dir, "train", 2, 32, 32, tokenizer, start_id=2, bos_id=0)
    batch = loader.next_batch()
    assert batch["enc_idx"][:, 0].tolist() == [0, 0] and batch["targets"][:, 0].tolist() == [0, 0]
    assert batch["dec_idx"][:, :2].tolist() == [[2, 0], [2, 0]]  # </s> <s> ...: the labels shifted right


def test_an_older_bart_folder_keeps_its_decoding_settings_in_config_json(tmp_path):
    """Without generation_config.json the decoding settings come from config.json (as transformers reads them);
    BART's min_length counts the decoder start."""
    from model.checkpoint import read_generation_defaults

    bart_folder(tmp_path)
    (tmp_path / "generation_config.json").unlink()
    config = json.loads((tmp_path / "config.json").read_text())
    settings = {"forced_bos_token_id": 0, "min_length": 5, "num_beams": 4, "no_repeat_ngram_size": 3}
    (tmp_path / "config.json").write_text(json.dumps({**config, **settings}))
    record = read_generation_defaults(f"hf:{tmp_path}")
    assert record["forced_bos_token_id"] == 0 and record["min_new_tokens"] == 4 and record["num_beams"] == 4
