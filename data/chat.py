"""The chat template: a conversation of {role, content} messages as token ids, and which of them a model learns.

A turn is the role's id, the content's text tokens, then the end-of-turn id:

    <|system|> You are terse. <|end|> <|user|> Sort 3 1 2 <|end|> <|assistant|> 1 2 3 <|end|>

The four ids are appended to any tokenizer by with_chat() (data/tokenizer/base.py's SpecialLayout, after the T5
sentinels and the fill-in-the-middle ids), so text can never produce them: "<|user|>" typed in a message is plain
text. A reply is generated after <|assistant|> and ends at <|end|>. Training learns the assistant turns' tokens and
their <|end|> (render's mask); the system and user turns are context. CHAT_TEMPLATE is the same template in
transformers' Jinja form, written into an export's tokenizer_config.json, so tokenizer.apply_chat_template on the
export gives these ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from data.tokenizer.base import CHAT_END_TEXT, CHAT_ROLES

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '" + CHAT_END_TEXT + "' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def check_messages(messages: object, where: str = "messages") -> list[dict[str, str]]:
    """A conversation as a list of {"role", "content"} dicts, checked: roles system, user or assistant, contents
    strings; a ValueError naming the message (where[i]) and what is wrong."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise ValueError(f"{where} must be a non-empty list of {{'role', 'content'}} messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}[{i}] must be a {{'role': ..., 'content': ...}} message, got {message!r:.80}")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise ValueError(f"{where}[{i}] has role {role!r}; roles are {', '.join(CHAT_ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}[{i}]'s content must be text, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def render(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """(ids, learned) of a conversation: learned[i] is True for the tokens of assistant turns and their end of turn
    (what fine-tuning's loss counts). add_generation_prompt: end with <|assistant|>, where a reply starts."""
    turns = [(m["role"], tokenizer.encode(m["content"])) for m in check_messages(messages)]
    return turn_ids(tokenizer, turns, add_generation_prompt)


def turn_ids(
    tokenizer: Any, turns: Sequence[tuple[str, Sequence[int]]], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """(ids, learned) of (role, content ids) turns laid out by the template: the role's id, the content, the end of
    turn; learned for an assistant turn's content and end. The one layout render() and the instruction loader use."""
    chat_ids = getattr(tokenizer, "chat_ids", None)
    if chat_ids is None:
        raise ValueError(
            f"the {getattr(tokenizer, 'name', 'model')} tokenizer has no chat ids: the model was not tuned for chat "
            "(fine-tune it with task=instruct, which adds them)"
        )
    *role_ids, end_id = chat_ids
    role_id = dict(zip(CHAT_ROLES, role_ids))
    ids: list[int] = []
    learned: list[bool] = []
    for role, content in turns:
        body = [*(int(t) for t in content), end_id]
        ids += [role_id[role], *body]
        learned += [False] + [role == "assistant"] * len(body)
    if add_generation_prompt:
        ids.append(role_id["assistant"])
        learned.append(False)
    return ids, learned
