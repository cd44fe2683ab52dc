"""python -m train.evaluate: loss, perplexity and bits per byte of a checkpoint on a file or a prepared split.

Tiny random-init checkpoints: the numbers are checked against the same sums done by hand, not against quality.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.config import DataConfig
from data.prepare import load_meta, prepare
from data.tokenizer import CharTokenizer, get_tokenizer, tokenizer_from_spec
from model import GPT, T5, GPTConfig, T5Config
from model.checkpoint import save_model
from train.evaluate import main

ROOT = Path(__file__).resolve().parents[1]
STORY = "Once upon a time, a naïve fox met a café owner.\nThe fox said: « bonjour »! The owner smiled.\n"
BLOCK = 16


def _gpt(tokenizer, directory: Path) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=tokenizer.vocab_size))
    return save_model(model, directory, tokenizer_spec=tokenizer.spec(), meta={"step": 7})


def _t5(tokenizer, directory: Path) -> Path:
    torch.manual_seed(0)
    config = T5Config(n_encoder_layer=1, n_decoder_layer=1, n_head=2, n_embd=16, intermediate_size=32, block_size=24,
                      vocab_size=tokenizer.vocab_size, decoder_start_id=tokenizer.eot_id, pad_id=tokenizer.eot_id,
                      dropout=0.0)  # fmt: skip
    return save_model(T5(config), directory, tokenizer_spec=tokenizer.spec(), meta={"step": 3})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A story file, a char-level GPT that knows its characters, a prepared document dataset of the same text
    (char tokenizer), a prepared pair dataset (byte tokenizer) and a T5 for it."""
    w = tmp_path_factory.mktemp("eval")
    (w / "story.txt").write_text(STORY * 3, encoding="utf-8")
    (w / "short.txt").write_text("a café\n", encoding="utf-8")
    (w / "empty.txt").write_text("")
    docs = w / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"{i}.txt").write_text(STORY * (i + 1), encoding="utf-8")
    data = prepare(DataConfig(name="docs", corpora=["text"], tokenizer="char", paths=[str(docs)], val_fraction=0.25),
                   w / "cache", progress=False)  # fmt: skip
    char = tokenizer_from_spec(load_meta(data)["tokenizer"])
    words = "fox owl cat hen yak emu gnu elk bee ant".split()  # pairs of different lengths: batches are padded
    pair_lines = [
        json.dumps({"input": f"{w} " * (i % 3 + 1), "target": f"a {w}" + "!" * i}) for i, w in enumerate(words)
    ]
    (w / "pairs.jsonl").write_text("\n".join(pair_lines) + "\n")
    pairs = prepare(DataConfig(name="pairs", corpora=["pairs"], tokenizer="byte", paths=[str(w / "pairs.jsonl")],
                               val_fraction=0.4), w / "cache", progress=False)  # fmt: skip
    return {
        "dir": w,
        "gpt": _gpt(char, w / "gpt"),
        "data": data,
        "pairs": pairs,
        "t5": _t5(get_tokenizer("byte").with_sentinels(100), w / "t5"),
        "byte_gpt": _gpt(get_tokenizer("byte"), w / "byte_gpt"),
    }


def evaluate(capsys, *args: str) -> tuple[dict, list[str]]:
    """main() in-process on CPU in fp32: (result, stdout lines)."""
    result = main([*args, "device=cpu", "dtype=float32"])
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == result  # the last stdout line is the JSON, the summary comes before it
    return result, out


def by_hand(model: GPT, ids: torch.Tensor, stride: int) -> tuple[float, int]:
    """(total nats, predictions) over every prediction of ids: windows of BLOCK inputs starting every stride tokens,
    the last moved back to end at the last token; each window counts only predictions no earlier one made."""
    total, count, done, start = 0.0, 0, 0, 0  # predictions [0, done) are counted; prediction j is of token j + 1
    length = min(BLOCK, len(ids) - 1)
    while done < len(ids) - 1:
        start = min(start, len(ids) - 1 - length)
        with torch.no_grad():
            logits, _ = model(ids[start : start + length][None])
        nll = F.cross_entropy(logits[0].double(), ids[start + 1 : start + length + 1], reduction="none")
        new = nll[done - start :] if done > start else nll
        total, count = total + new.sum().item(), count + len(new)
        done, start = start + length, start + stride
    return total, count


def test_bits_per_byte_of_a_file_by_hand(world, capsys):
    from model.checkpoint import load_model

    result, out = evaluate(capsys, f"checkpoint={world['gpt']}", f"file={world['dir'] / 'short.txt'}")
    model, tokenizer = load_model(world["gpt"])
    text = (world["dir"] / "short.txt").read_text(encoding="utf-8")
    ids = torch.tensor([tokenizer.eot_id, *tokenizer.encode(text)])  # eot in front: every character is scored
    with torch.no_grad():
        logits, _ = model(ids[:-1][None])  # one window: the file is shorter than the context
    nats = F.cross_entropy(logits[0].double(), ids[1:], reduction="sum").item()
    num_bytes = len(text.encode("utf-8"))
    assert num_bytes == len(text) + 1  # "é" is two bytes: bits per byte is not bits per character
    assert result["tokens"] == len(text) and result["bytes"] == num_bytes and result["windows"] == 1
    assert result["loss"] == pytest.approx(nats / len(text), rel=1e-6)
    assert result["bpb"] == pytest.approx(nats / math.log(2) / num_bytes, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(nats / len(text)), rel=1e-6)
    assert result["kind"] == "gpt" and result["step"] == 7 and result["method"] == "strided windows"
    assert out[0].startswith("gpt, step 7 on ") and "bits/byte" in out[0]


def test_stride_changes_the_windows_and_matches_a_loop_by_hand(world, capsys):
    from model.checkpoint import load_model

    model, tokenizer = load_model(world["gpt"])
    text = (world["dir"] / "story.txt").read_text(encoding="utf-8")
    ids = torch.tensor([tokenizer.eot_id, *tokenizer.encode(text)])
    results = {}
    for stride in (BLOCK, 5, 1):
        r, _ = evaluate(capsys, f"checkpoint={world['gpt']}", f"file={world['dir'] / 'story.txt'}", f"stride={stride}")
        total, count = by_hand(model, ids, stride)
        assert r["tokens"] == count == len(text)  # every character scored once, whatever the stride
        assert r["loss"] == pytest.approx(total / count, rel=1e-6)
        assert r["stride"] == stride
        results[stride] = r
    assert results[BLOCK]["windows"] == math.ceil(len(text) / BLOCK)
    assert results[BLOCK]["windows"] < results[5]["windows"] < results[1]["windows"] == len(text) - BLOCK + 1
    assert results[5]["loss"] != pytest.approx(results[BLOCK]["loss"], rel=1e-9)  # more context, other numbers
    default, _ = evaluate(capsys, f"checkpoint={world['gpt']}", f"file={world['dir'] / 'story.txt'}")
    assert default["stride"] == BLOCK and default["loss"] == results[BLOCK]["loss"]


def test_a_prepared_split_is_scored_whole(world, capsys):
    meta = load_meta(world["data"])
    tokenizer = tokenizer_from_spec(meta["tokenizer"])
    assert isinstance(tokenizer, CharTokenizer)
    result, _ = evaluate(capsys, f"checkpoint={world['gpt']}", f"data={world['data']}", "batch_size=3")
    val = np.fromfile(world["data"] / "val.bin", dtype=meta["dtype"])
    assert result["split"] == "val" and result["tokens"] == len(val)  # eot in front: every token is a target
    text_bytes = len(tokenizer.decode_bytes([t for t in val.tolist() if t != tokenizer.eot_id]))
    assert result["bytes"] == text_bytes  # document separators are scored but hold no bytes
    assert result["bpb"] == pytest.approx(result["loss"] * result["tokens"] / math.log(2) / text_bytes)
    train, _ = evaluate(capsys, f"checkpoint={world['gpt']}", f"data={world['data']}", "split=train")
    assert train["tokens"] == meta["splits"]["train"]["tokens"]


def test_t5_on_pairs_scores_every_target_once(world, capsys):
    from data.loader import Seq2SeqLoader
    from model.checkpoint import load_model

    result, _ = evaluate(capsys, f"checkpoint={world['t5']}", f"data={world['pairs']}", "batch_size=2")
    model, tokenizer = load_model(world["t5"])
    pairs = list(Seq2SeqLoader(world["pairs"], "val", 1, 24, 24, tokenizer).pairs())
    assert len(pairs) >= 3 and all(len(i) <= 24 and len(t) <= 24 for i, t in pairs)  # nothing is cut
    assert len({len(t) for _, t in pairs}) > 1  # so batches of two are padded
    total = 0.0
    for input_ids, target_ids in pairs:  # unpadded, one by one: the batches must not change a pair's loss
        dec = torch.tensor([[tokenizer.eot_id, *target_ids[:-1]]])
        with torch.no_grad():
            logits, _ = model(enc_idx=torch.tensor([input_ids]), dec_idx=dec)
        total += F.cross_entropy(logits[0].double(), torch.tensor(target_ids), reduction="sum").item()
    count = sum(len(t) for _, t in pairs)
    assert result["method"] == "seq2seq targets, teacher-forced" and result["pairs"] == len(pairs)
    assert result["tokens"] == count and result["loss"] == pytest.approx(total / count, rel=1e-5)
    target_bytes = sum(len(t) - 1 for _, t in pairs)  # byte tokenizer: one byte per token, eot aside
    assert result["bpb"] == pytest.approx(total / math.log(2) / target_bytes, rel=1e-5)


def test_training_bits_per_byte_is_the_commands(world, capsys):
    """val/bpb in training is val/loss / ln 2 / bytes_per_token(val split): on a whole split, the command's bpb."""
    from data.loader import CausalLMLoader, Seq2SeqLoader, SpanCorruptionLoader
    from model.checkpoint import load_model
    from train.scoring import bytes_per_token

    _, char = load_model(world["gpt"])
    loader = CausalLMLoader(world["data"], "val", batch_size=2, block_size=BLOCK)
    per_token = bytes_per_token(char, loader)
    result, _ = evaluate(capsys, f"checkpoint={world['gpt']}", f"data={world['data']}")
    assert per_token == pytest.approx(result["bytes"] / result["tokens"], rel=1e-12)
    assert result["loss"] / math.log(2) / per_token == pytest.approx(result["bpb"], rel=1e-9)

    _, byte = load_model(world["t5"])
    pairs = Seq2SeqLoader(world["pairs"], "val", 2, 24, 24, byte)
    t5, _ = evaluate(capsys, f"checkpoint={world['t5']}", f"data={world['pairs']}")
    assert bytes_per_token(byte, pairs) == pytest.approx(t5["bytes"] / t5["tokens"], rel=1e-12)
    assert bytes_per_token(byte, pairs) < 1  # a byte per target token, and an eot that holds none
    span = SpanCorruptionLoader(world["data"], "val", 2, input_length=16, tokenizer=char.with_sentinels(10))
    assert bytes_per_token(char, span) is None  # span targets are no text of their own


def test_pairs_are_cut_as_the_loader_cuts_them():
    from data.loader import cut_pair

    source, target = cut_pair(list(range(30)), list(range(30)), 24, 10, eot_id=99)
    assert source == list(range(24)) and target == [*range(9), 99]  # a cut target still ends in eot
    assert cut_pair([1], [2, 99], 24, 10, eot_id=99) == ([1], [2, 99])


def test_t5_on_documents_is_span_corruption_without_bpb(world, capsys):
    args = (f"checkpoint={world['t5']}", f"file={world['dir'] / 'story.txt'}")
    first, _ = evaluate(capsys, *args)
    again, _ = evaluate(capsys, *args, "batch_size=1")
    assert first["method"] == "span corruption" and first["bpb"] is None and "span corruption" in first["bpb_note"]
    assert first["loss"] == pytest.approx(again["loss"], rel=1e-6)  # fixed masks: the same windows every call
    assert first["tokens"] % first["windows"] == 0  # every window's target has the same length
    raw_bytes = len((world["dir"] / "story.txt").read_bytes())
    assert first["windows"] >= raw_bytes // 24  # the windows cover the text (byte tokenizer: a token per byte)


def test_out_writes_the_result(world, capsys, tmp_path):
    out = tmp_path / "results" / "eval.json"
    result, _ = evaluate(capsys, f"checkpoint={world['gpt']}", f"file={world['dir'] / 'short.txt'}", f"out={out}")
    assert json.loads(out.read_text()) == result


@pytest.mark.parametrize(
    "args, message",
    [
        (("checkpoint={gpt}", "file={dir}/empty.txt"), "empty.txt' is empty; pass a file with text to score"),
        (
            ("checkpoint={gpt}", "data={dir}/docs"),
            "is not a prepared dataset (no meta.json); run python -m data.prepare",
        ),
        (("checkpoint={t5}", "file={dir}/story.txt", "stride=4"), "is a t5: leave stride out"),
        (("checkpoint={byte_gpt}", "data={data}"), "was prepared with another tokenizer (char) than the checkpoint's"),
        (("checkpoint={gpt}", "data={pairs}"), "holds input/target pairs, which score a t5 checkpoint"),
        (("checkpoint={gpt}", "file={dir}/story.txt", "split=val"), "a file= is scored whole: leave split out"),
        (("checkpoint={gpt}", "data={data}", "split=test"), "split='test' is not a split; choose one of train, val"),
        (("checkpoint={gpt}", "file={dir}/story.txt", "stride=0"), "stride=0 must be in [1, block_size=16]"),
        (("checkpoint={gpt}", "file={dir}/story.txt", "batch_size=x"), "(set batch_size to a whole number)"),
        (("checkpoint={gpt}", "file={dir}/story.txt", "dtype=fp8"), "dtype='fp8' is not a dtype; choose one of"),
        (("checkpoint={gpt}", "file={dir}/story.txt", "out={dir}"), "is a directory; pass a file for the result"),
        (
            ("checkpoint={byte_gpt}", "file={dir}/story.txt", "colour=red"),
            "Key 'colour' not in 'EvaluateConfig' (valid keys:",
        ),
        (("checkpoint={gpt}", "story.txt"), "cannot parse override 'story.txt'"),
        (("checkpoint={gpt}", "file={dir}/story.txt", "btach_size=2"), "(did you mean batch_size?)"),
        (("checkpoint={gpt}", "data=shakespeare", "data.tokeniser=gpt2"), "(did you mean data.tokenizer?)"),
    ],
)
@pytest.mark.e2e
def test_bad_input_is_one_error_line(world, capsys, monkeypatch, args, message):
    monkeypatch.delenv("NANOLOOM_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as e:
        main([a.format(**world) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def test_debug_switch_raises(world, monkeypatch):
    monkeypatch.setenv("NANOLOOM_DEBUG", "1")
    with pytest.raises(ValueError, match="is empty"):
        main([f"checkpoint={world['gpt']}", f"file={world['dir'] / 'empty.txt'}"])


@pytest.mark.e2e
def test_help_and_the_command_line(world, capsys):
    assert main(["--help"]) == {} and "usage: nanoloom evaluate checkpoint=" in capsys.readouterr().out
    assert main(["--cfg", "job", f"checkpoint={world['gpt']}", "stride=4"]) == {}
    shown = capsys.readouterr().out
    assert f"checkpoint: {world['gpt']}" in shown and "stride: 4" in shown and "batch_size: 8" in shown
    cmd = [
        sys.executable,
        "-m",
        "train.evaluate",
        f"checkpoint={world['byte_gpt']}",
        f"file={world['dir'] / 'story.txt'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bytes"] == result["tokens"] == len(STORY.encode("utf-8")) * 3  # byte tokenizer: a token a byte


def test_a_sweep_evaluates_every_combination(world, capsys):
    """-m: one evaluation per combination of the comma-separated values, in Hydra's order, each printed."""
    story = world["dir"] / "story.txt"
    results = main(["-m", f"checkpoint={world['gpt']},{world['byte_gpt']}", f"file={story}", "stride=4,8",
                    "device=cpu", "dtype=float32"])  # fmt: skip
    assert [(Path(r["checkpoint"]).name, r["stride"]) for r in results] == [
        ("gpt", 4), ("gpt", 8), ("byte_gpt", 4), ("byte_gpt", 8)
    ]  # fmt: skip
    singles = [evaluate(capsys, f"checkpoint={world[k]}", f"file={story}", f"stride={n}")[0]["loss"]
               for k in ("gpt", "byte_gpt") for n in (4, 8)]  # fmt: skip
    assert [r["loss"] for r in results] == pytest.approx(singles, rel=1e-9)


def test_data_names_a_data_config_prepared_with_the_checkpoints_tokenizer(world, capsys, tmp_path):
    """data=<config name> composes configs/data/<name>.yaml (data.<key>= edits it) and prepares it with the
    checkpoint's own tokenizer, as training's data.tokenizer=model does; the score equals the prepared directory's."""
    args = (f"checkpoint={world['byte_gpt']}", "data=text", f"data.paths=[{world['dir'] / 'docs'}]",
            "data.val_fraction=0.25", f"cache_dir={tmp_path}")  # fmt: skip
    by_name, _ = evaluate(capsys, *args)
    prepared = Path(by_name["data"])
    assert prepared.parent == tmp_path and load_meta(prepared)["tokenizer"]["name"] == "byte"
    by_dir, _ = evaluate(capsys, f"checkpoint={world['byte_gpt']}", f"data={prepared}")
    assert by_dir["loss"] == pytest.approx(by_name["loss"], rel=1e-12) and by_dir["tokens"] == by_name["tokens"]
