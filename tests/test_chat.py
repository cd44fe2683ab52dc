"""The chat template (data/chat.py): chat ids appended to every tokenizer, the rendered ids and the learned mask,
and the template exported so that transformers' apply_chat_template gives nanoloom's ids."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
import torch
import transformers

from data.chat import check_messages, render
from data.tokenizer import BPETokenizer, CharTokenizer, get_tokenizer, tokenizer_from_spec
from data.tokenizer.base import CHAT_TEXTS
from model import GPT, GPTConfig
from model.checkpoint import save_model
from model.export import export_hf

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Sort: 3 1 2"},
    {"role": "assistant", "content": "1 2 3"},
    {"role": "user", "content": "Reverse: ab"},
]


def _tokenizers():
    corpus = ["Answer briefly. Sort: 3 1 2 Reverse: ab ba 1 2 3 the cat sat\n"] * 8
    chars = "".join(sorted(set("".join(corpus))))
    hf_json = BPETokenizer.train(corpus, 300).spec()["tokenizer_json"]
    return {
        "byte": get_tokenizer("byte"),
        "gpt2": get_tokenizer("gpt2"),
        "char": CharTokenizer(chars),
        "bpe": BPETokenizer.train(corpus, 300),
        "hf": get_tokenizer("hf", tokenizer_json=hf_json),
        "byte+fim+sentinels": get_tokenizer("byte", sentinels=3, fim=True),
    }


@pytest.mark.parametrize("name", list(_tokenizers()))
def test_chat_ids_come_after_everything_else_and_survive_the_spec(name):
    plain = _tokenizers()[name]
    tok = plain.with_chat()
    assert tok.with_chat() is tok and tok.vocab_size == plain.vocab_size + 4
    assert list(tok.chat_ids) == list(range(plain.vocab_size, plain.vocab_size + 4))  # appended last
    assert tok.decode(list(tok.chat_ids)) == "".join(CHAT_TEXTS)
    assert tokenizer_from_spec(tok.spec()).chat_ids == tok.chat_ids
    if name != "char":  # (a char vocabulary without '<' refuses the text outright)
        assert not set(tok.encode("<|user|> ab <|end|>")) & set(tok.chat_ids)  # text never makes a control id
    assert tok.encode("Sort: 3 1 2") == plain.encode("Sort: 3 1 2")  # text keeps its ids


def test_render_marks_the_assistant_turns_and_ends_with_the_generation_prompt():
    tok = get_tokenizer("byte").with_chat()
    system, user, assistant, end = tok.chat_ids
    ids, learned = render(tok, MESSAGES, add_generation_prompt=True)
    enc = tok.encode
    expected = [system, *enc("Answer briefly."), end, user, *enc("Sort: 3 1 2"), end,
                assistant, *enc("1 2 3"), end, user, *enc("Reverse: ab"), end, assistant]  # fmt: skip
    assert ids == expected
    assert [i for i, m in zip(ids, learned) if m] == [*enc("1 2 3"), end]  # the reply and its end of turn only
    with pytest.raises(ValueError, match="has no chat ids"):
        render(get_tokenizer("byte"), MESSAGES)


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty list"),
        ([{"content": "hi"}], r"messages\[0\] must be a {'role': ..., 'content': ...} message"),
        ([{"role": "robot", "content": "hi"}], r"messages\[0\] has role 'robot'; roles are system, user, assistant"),
        ([{"role": "user", "content": 3}], r"messages\[0\]'s content must be text"),
    ],
)
def test_bad_messages_name_the_message(messages, message):
    with pytest.raises(ValueError, match=message):
        check_messages(messages)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["byte", "gpt2", "char", "bpe", "hf"])
def test_exported_chat_template_gives_our_ids_in_transformers(tmp_path, name):
    """tokenizer_config.json carries the template: apply_chat_template on the export equals render()."""
    tok = _tokenizers()[name].with_chat()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=64))
    out = export_hf(save_model(model, tmp_path / "ckpt", tok.spec()), tmp_path / "hf")
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for generation_prompt in (False, True):
        got = hf_tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=generation_prompt)
        got = got["input_ids"] if isinstance(got, Mapping) else got
        assert list(got) == render(tok, MESSAGES, generation_prompt)[0]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([render(tok, MESSAGES, True)[0]])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits[..., : tok.vocab_size], model(ids)[0][..., : tok.vocab_size])


def test_the_pipeline_answers_a_conversation_as_transformers_shapes_it():
    """A chat in, the conversation with the assistant's reply appended out (one or several chats); the reply is
    the text generated after <|assistant|> up to <|end|>; return_full_text=False gives the reply alone."""
    from sample.pipeline import pipeline

    tok = get_tokenizer("byte").with_chat()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=128)).eval()
    end = tok.chat_ids[-1]
    with torch.no_grad():  # make <|end|> likely after a few tokens: the reply then ends its turn
        model.lm_head.weight[end] += 0.5 * model.lm_head.weight.mean(0)
    chat = pipeline("text-generation", model=model, tokenizer=tok)
    question = MESSAGES[:2]
    [out] = chat(question, max_new_tokens=12, seed=1)
    conversation = out["generated_text"]
    assert conversation[:2] == question and conversation[2]["role"] == "assistant" and len(conversation) == 3
    [reply] = chat(question, max_new_tokens=12, seed=1, return_full_text=False)
    assert reply["generated_text"] == conversation[2]["content"]
    [ids] = chat(question, max_new_tokens=12, seed=1, return_tensors=True)
    prompt = render(tok, question, add_generation_prompt=True)[0]
    generated = ids["generated_token_ids"][len(prompt) :]
    assert ids["generated_token_ids"][: len(prompt)] == prompt
    assert end not in generated[:-1] and tok.decode([t for t in generated if t != end]) == reply["generated_text"]
    both = chat([question, MESSAGES[:1] + MESSAGES[3:]], max_new_tokens=5, seed=1)
    assert len(both) == 2 and both[0][0]["generated_text"][:2] == question
    with pytest.raises(ValueError, match="ends with the assistant's turn"):
        chat(MESSAGES[:3])
    with pytest.raises(ValueError, match=r"text_inputs\[1\]\[0\] has role 'bot'"):
        chat([MESSAGES[:2], [{"role": "bot", "content": "x"}]])
