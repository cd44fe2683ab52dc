"""Instruction tuning (task=instruct): a GPT learns replies to prompts laid out by the chat template, with the loss
on the replies alone; a base model grows its vocabulary by the chat ids; the run resumes exactly; the result
answers chats through the pipeline."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from train_helpers import compose_train, losses, tiny_run_overrides, train_killed_then_resumed, zen_of_python

from data.chat import render
from data.config import DataConfig
from data.loader import IGNORE_INDEX, InstructLoader
from data.prepare import prepare
from data.tokenizer import get_tokenizer
from model.checkpoint import load_model
from sample.pipeline import pipeline
from train.loop import run

WORDS = "red green blue cat dog sun moon tree bird fish".split()


def instructions(path: Path, n: int = 60) -> Path:
    """A jsonl of "reverse: a b c" -> "c b a" pairs (a task a tiny model can start to learn in seconds)."""
    rng = __import__("random").Random(0)
    lines = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        lines.append(json.dumps({"input": "reverse: " + " ".join(words), "target": " ".join(reversed(words))}))
    path.write_text("\n".join(lines) + "\n")
    return path


def instruct_overrides(tmp_path: Path, run_name: str = "tuned", **extra: object) -> list[str]:
    corpus = instructions(tmp_path / "instructions.jsonl")
    base = {"task": "instruct", "data": "pairs", "data.paths": f"[{corpus}]", "data.tokenizer": "byte",
            "model.block_size": 64, "samples.eval_pairs": 4, "samples.prompts": "['reverse: red cat sun']"}  # fmt: skip
    return tiny_run_overrides(tmp_path, corpus, run_name, **{**base, **extra})


def test_the_loss_learns_the_reply_and_its_end_only(tmp_path):
    corpus = instructions(tmp_path / "i.jsonl", n=10)
    data = prepare(DataConfig(name="i", corpora=["pairs"], tokenizer="byte", paths=[str(corpus)], val_fraction=0.2),
                   tmp_path / "cache", progress=False)  # fmt: skip
    tok = get_tokenizer("byte").with_chat()
    loader = InstructLoader(data, "train", batch_size=4, block_size=64, tokenizer=tok, seed=1, pack=False)
    batch = loader.batch_at(0)
    for idx, targets in zip(batch["idx"].tolist(), batch["targets"].tolist()):
        last = max(i for i, t in enumerate(targets) if t != IGNORE_INDEX)  # the reply's <|end|> is the last target
        row = idx[: last + 1] + [targets[last]]  # the conversation: the inputs, then the final id
        assert all(t == IGNORE_INDEX for t in targets[last + 1 :])  # padding learns nothing
        assert row[0] == tok.chat_ids[1]  # <|user|> first
        start = row.index(tok.chat_ids[2]) + 1  # the reply starts after <|assistant|>
        learned = [t for t in targets if t != IGNORE_INDEX]
        end = start + learned.index(tok.chat_ids[3]) + 1
        assert learned == row[start:end] and learned[-1] == tok.chat_ids[3]  # the reply and its <|end|>, nothing else
        assert tok.decode(learned[:-1]).count(" ") == 2  # three words
    assert torch.equal(loader.batch_at(0)["targets"], batch["targets"])  # deterministic
    short = InstructLoader(data, "train", batch_size=4, block_size=12, tokenizer=tok, seed=1, pack=False)
    with pytest.warns(UserWarning, match=r"conversation\(s\) longer than block_size \+ 1 = 13 ids cut"):
        cut = short.batch_at(0)
    assert cut["idx"].shape[1] == 12 and short.truncated == 4
    with pytest.raises(ValueError, match="has no chat ids"):
        InstructLoader(data, "train", batch_size=4, block_size=64, tokenizer=get_tokenizer("byte"))


@pytest.mark.slow
def test_instruct_from_scratch_learns_and_answers_chats(tmp_path):
    result = run(compose_train(instruct_overrides(tmp_path, **{"trainer.max_steps": 30, "optim.lr": 3e-3})))
    run_dir = tmp_path / "tuned"
    val = losses(run_dir, "val/loss")
    assert val[30] < val[0] and result["step"] == 30
    assert "val/exact_match" in {k for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                                 for k in json.loads(line)}  # fmt: skip
    model, tok = load_model(run_dir)
    assert tok.chat_ids is not None and model.config.vocab_size == tok.vocab_size == 257 + 4
    [out] = pipeline("text-generation", model=run_dir)([{"role": "user", "content": "reverse: red cat sun"}])
    assert out["generated_text"][-1]["role"] == "assistant"


@pytest.mark.slow
def test_fine_tuning_a_base_grows_the_vocabulary_by_the_mean_row_and_resumes_exactly(tmp_path, monkeypatch):
    base_run = run(compose_train(tiny_run_overrides(tmp_path, zen_of_python(tmp_path), "base")))
    assert base_run["step"] == 8
    base, base_tok = load_model(tmp_path / "base")
    assert base_tok.chat_ids is None
    from train.build import build_parts
    from train.dist import DistInfo

    overrides = instruct_overrides(tmp_path, "tuned", init_from=tmp_path / "base", **{"data.tokenizer": "model"})
    parts = build_parts(compose_train(overrides), DistInfo(), torch.device("cpu"))  # the model before any step
    grown, tok = parts.raw_model, parts.tokenizer
    old = base.config.vocab_size
    assert grown.config.vocab_size == old + 4 and list(tok.chat_ids) == list(range(old, old + 4))
    wte, base_wte = grown.transformer.wte.weight, base.transformer.wte.weight
    torch.testing.assert_close(wte[:old], base_wte[:old])
    torch.testing.assert_close(wte[old : old + 4], base_wte[:old].mean(0).expand(4, -1))
    # resume: killed during step 6, continued with resume=auto: the losses of an uninterrupted run
    straight = instruct_overrides(tmp_path, "straight", init_from=tmp_path / "base", **{"data.tokenizer": "model"})
    run(compose_train(straight))
    killed = instruct_overrides(tmp_path, "killed", init_from=tmp_path / "base", **{"data.tokenizer": "model"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_killed_then_resumed(monkeypatch, killed)
    assert losses(tmp_path / "killed") == pytest.approx(losses(tmp_path / "straight"), abs=1e-6)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("chat")
    run(compose_train(instruct_overrides(tmp, **{"trainer.max_steps": 10})))
    return tmp / "tuned"


@pytest.mark.slow
def test_chat_in_the_terminal_keeps_the_history_and_takes_commands(tuned):
    """python -m sample chat=true: one reply line per user line, /set changes a control, /reset forgets, Ctrl-D
    (end of input) ends; the same conversation through chat() holds each turn."""
    import subprocess
    import sys

    lines = "reverse: red cat sun\n/set max_new_tokens=4\nreverse: dog sun moon\n/reset\nhello\n"
    proc = subprocess.run([sys.executable, "-m", "sample", f"checkpoint={tuned}", "chat=true", "seed=0"],
                          input=lines, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3 and "(max_new_tokens = 4)" in proc.stderr
    assert "(conversation reset)" in proc.stderr
    from sample.__main__ import chat, load_config

    cfg = load_config([f"checkpoint={tuned}", "chat=true", "seed=0", "system=Be brief.", "max_new_tokens=6"])
    messages = chat(cfg, lines=["reverse: red cat sun", "/reset", "reverse: dog sun moon", "again"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == "reverse: dog sun moon"  # the turn before /reset is forgotten


@pytest.mark.e2e
def test_chat_needs_a_model_tuned_for_chat(tmp_path, capsys):
    from train_helpers import run_sample_main

    run(compose_train(tiny_run_overrides(tmp_path, zen_of_python(tmp_path), "plain")))
    code, _, err = run_sample_main(capsys, f"checkpoint={tmp_path / 'plain'}", "chat=true")
    assert code == 2 and "chat=true needs a gpt tuned for chat" in err
    code, _, err = run_sample_main(capsys, f"checkpoint={tmp_path / 'plain'}", "chat=true", "prompt=x")
    assert code == 2 and "chat=true reads the conversation from the terminal: leave prompt out" in err


def test_a_long_chat_drops_its_oldest_turns_to_leave_room_for_the_reply(tuned):
    from sample.__main__ import chat, load_config

    cfg = load_config([f"checkpoint={tuned}", "chat=true", "seed=0", "system=Hi.", "max_new_tokens=6"])
    messages = chat(cfg, lines=[f"reverse: {w} cat sun" for w in WORDS[:6]])
    assert (
        messages[0] == {"role": "system", "content": "Hi."}
        and messages[-2]["content"] == f"reverse: {WORDS[5]} cat sun"
    )
    assert len(messages) < 1 + 2 * 6  # the oldest turns went; the block is 64 ids
    ids = render(load_model(tuned)[1], messages[:-1], add_generation_prompt=True)[0]
    assert len(ids) + 6 <= 64


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_packed_rows_compute_what_each_conversation_computes_alone(tmp_path, pos):
    """pack=True: full rows of whole conversations; with doc_ids each conversation's logits equal its own forward
    (attention kept inside it, positions from 0), and the learned targets are exactly each reply and its <|end|>."""
    from model import GPT, GPTConfig

    corpus = instructions(tmp_path / "i.jsonl", n=12)
    data = prepare(DataConfig(name="i", corpora=["pairs"], tokenizer="byte", paths=[str(corpus)], val_fraction=0.2),
                   tmp_path / "cache", progress=False)  # fmt: skip
    tok = get_tokenizer("byte").with_chat()
    loader = InstructLoader(data, "train", batch_size=2, block_size=96, tokenizer=tok, seed=3)
    batch = loader.batch_at(0)
    assert batch["idx"].shape == (2, 96) and set(batch) == {"idx", "targets", "doc_ids"}
    torch.manual_seed(0)
    options = {"pos": "rope", "norm": "rmsnorm"} if pos == "rope" else {}
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=16, block_size=96, **options)).eval()
    with torch.no_grad():
        packed, _ = model(batch["idx"], doc_ids=batch["doc_ids"])
    for r in range(2):
        docs = batch["doc_ids"][r].tolist()
        conversations = [d for d in dict.fromkeys(docs) if docs.count(d) > 1 or d != max(docs)]
        assert len(conversations) >= 2  # several conversations share the row
        for d in conversations[:-1]:  # whole conversations (the last run may be the padding)
            cols = [i for i, x in enumerate(docs) if x == d]
            assert cols == list(range(cols[0], cols[-1] + 1))  # contiguous
            ids = batch["idx"][r, cols][None]
            with torch.no_grad():
                alone, _ = model(ids)
            torch.testing.assert_close(packed[r, cols], alone[0], rtol=1e-5, atol=1e-5)
            learned = [t for t in batch["targets"][r, cols].tolist() if t != IGNORE_INDEX]
            assert learned[-1] == tok.chat_ids[3] and tok.chat_ids[2] in ids[0].tolist()


def chats(path: Path) -> Path:
    """A .jsonl mixing the two forms: multi-turn `messages` (with a system turn) and prompt/response lines."""
    lines = []
    for i, word in enumerate(WORDS * 2):
        if i % 2:
            lines.append({"prompt": f"say {word}", "response": word})
        else:
            lines.append({"messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": f"say {word}"},
                                       {"role": "assistant", "content": word},
                                       {"role": "user", "content": "twice"},
                                       {"role": "assistant", "content": f"{word} {word}"}]})  # fmt: skip
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def chat_data(tmp_path: Path) -> Path:
    cfg = DataConfig(name="c", corpora=["pairs"], tokenizer="byte", paths=[str(chats(tmp_path / "c.jsonl"))],
                     input_field="prompt", target_field="response", val_fraction=0.2)  # fmt: skip
    return prepare(cfg, tmp_path / "cache", progress=False)


@pytest.mark.parametrize("pack", [True, False])
def test_multi_turn_conversations_learn_every_assistant_turn_and_nothing_else(tmp_path, pack):
    from data.prepare import is_complete, load_meta

    data = chat_data(tmp_path)
    meta = load_meta(data)
    assert meta["layout"] == "conversations" and meta["splits"]["train"]["conversations"] == 16
    assert is_complete(data, meta["fingerprint"]) and chat_data(tmp_path) == data  # cached: prepared once
    (data / "val_chats.idx").write_bytes(b"")  # a damaged index: the dataset is not complete any more
    assert not is_complete(data, meta["fingerprint"])
    data = chat_data(tmp_path)
    tok = get_tokenizer("byte").with_chat()
    system, user, assistant, end = tok.chat_ids
    loader = InstructLoader(data, "train", batch_size=2, block_size=128, tokenizer=tok, seed=0, pack=pack)
    assert loader.turns(0)[0] == ("system", tok.encode("Be brief."))
    batch = loader.batch_at(0)
    seen_multi = False
    for r, (idx, targets) in enumerate(zip(batch["idx"].tolist(), batch["targets"].tolist())):
        last = max(i for i, t in enumerate(targets) if t != IGNORE_INDEX)  # a reply's <|end|> ends the row's data
        docs = batch["doc_ids"][r].tolist() if pack else [0] * (last + 1) + [1] * (len(idx) - last - 1)
        learned, expected = [], []
        for d in dict.fromkeys(docs):  # each conversation of the row
            cols = [i for i, x in enumerate(docs) if x == d]
            ids = [idx[i] for i in cols] + [targets[cols[-1]]]  # the inputs, then the last position's target
            learned += [targets[i] for i in cols if targets[i] != IGNORE_INDEX]
            inside = False  # within an assistant turn: its content and its <|end|> are learned
            for prev, nxt in zip(ids, ids[1:]):
                inside = prev == assistant or (inside and prev != end)
                if inside and nxt >= 0:
                    expected.append(nxt)
            seen_multi |= [i for i in ids if i >= 0].count(assistant) == 2
        assert learned == expected and learned  # every assistant token and its <|end|>; no system or user token
        assert system not in learned and user not in learned
    assert seen_multi  # a conversation with two replies, both learned
    exchanges = list(loader.exchanges(limit=3))
    assert all(reply and turns[-1][0] == "user" for turns, reply in exchanges)


@pytest.mark.e2e
def test_a_multi_turn_dataset_trains_a_chat_model_through_the_loop(tmp_path):
    corpus = chats(tmp_path / "chats.jsonl")
    overrides = tiny_run_overrides(tmp_path, corpus, "chat", **{
        "task": "instruct", "data": "chat", "data.paths": f"[{corpus}]", "model.block_size": 64,
        "samples.eval_pairs": 2, "trainer.max_steps": 6})  # fmt: skip
    result = run(compose_train(overrides))
    assert result["step"] == 6
    metrics = [json.loads(line) for line in (tmp_path / "chat" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/exact_match" in m for m in metrics) and any("val/bpb" in m for m in metrics)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"question": "hi"}, r"c\.jsonl:2: neither 'prompt'/'response' fields nor a 'messages' list"),
        ({"prompt": "hi", "response": " "}, r"c\.jsonl:2: field 'response' is empty"),
        ({"messages": [{"content": "hi"}]}, r"c\.jsonl:2: messages\[0\] must be a \{'role'"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, r"c\.jsonl:2: messages\[0\] has role 'robot'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, r"c\.jsonl:2: messages must end with a non-empty"),
        ({"messages": "hi"}, r"c\.jsonl:2: messages must be a non-empty list"),
    ],
)
def test_bad_instruction_lines_are_one_error_naming_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps(line) + "\n")
    cfg = DataConfig(name="c", corpora=["pairs"], tokenizer="byte", paths=[str(path)], input_field="prompt",
                     target_field="response")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        prepare(cfg, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("c-*"))  # nothing written


def test_bad_instruction_line_on_the_command_line_is_one_error_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "data.prepare", "data=chat", f"data.paths=[{path}]",
                           f"paths.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}:1: messages must end with a non-empty assistant turn, the reply to learn (drop the line or "
        "complete it)"
    ]


@pytest.mark.e2e
def test_a_hugging_face_gpt2_folder_is_instruction_tuned(tmp_path):
    """init_from=hf:<GPT-2 folder>: the GPT-2 tokenizer gains the chat ids after its 50,257, the model's rows grow
    by the mean row, and the tuned run answers a chat."""
    from test_hf_import import gpt2_folder

    hf = gpt2_folder(tmp_path / "gpt2", "safetensors", n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=50257)
    overrides = instruct_overrides(tmp_path, init_from=f"hf:{tmp_path / 'gpt2'}",
                                   **{"data.tokenizer": "model", "trainer.max_steps": 2})  # fmt: skip
    run(compose_train(overrides))
    model, tok = load_model(tmp_path / "tuned")
    assert tok.name == "gpt2" and list(tok.chat_ids) == [50257, 50258, 50259, 50260]
    assert model.config.vocab_size >= 50261
    [out] = pipeline("text-generation", model=tmp_path / "tuned")([{"role": "user", "content": "reverse: a b"}],
                                                                   max_new_tokens=3)  # fmt: skip
    assert out["generated_text"][-1]["role"] == "assistant"
    from train.build import build_parts
    from train.dist import DistInfo

    grown = build_parts(compose_train(overrides), DistInfo(), torch.device("cpu")).raw_model  # before any step
    old = hf.transformer.wte.weight.detach()
    torch.testing.assert_close(grown.transformer.wte.weight[:50257], old)
    torch.testing.assert_close(grown.transformer.wte.weight[50257:50261], old.mean(0).expand(4, -1))
