"""Prompt rendering: a string or an OpenAI message list -> token ids, one side at a time.

With a chat template: apply_chat_template(messages, add_generation_prompt=True) (the template
adds BOS itself, so no second one). Without: plain tokenizer(text). Not for: dataset fields and
templates over them (the pipeline renders those into strings or messages first).
"""
from __future__ import annotations


class PromptError(ValueError):
    """A prompt that cannot be rendered: reported per request, never fatal to the batch."""


def as_messages(prompt, system_prompt: str | None = None) -> list[dict]:
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        msgs = [dict(role=m["role"], content=m["content"]) for m in prompt]
    else:
        raise PromptError(f"a prompt must be a string or a list of {{'role', 'content'}} dicts, got {type(prompt).__name__}")
    if system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def render(tokenizer, prompt, *, chat_template: bool = True, system_prompt: str | None = None) -> list[int]:
    """Token ids of one side's prompt."""
    msgs = as_messages(prompt, system_prompt)
    if chat_template and getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        ids = list(ids[0] if ids and isinstance(ids[0], list) else ids)
    else:
        if not isinstance(prompt, str) and not chat_template:
            text = "\n\n".join(m["content"] for m in msgs)
        elif not isinstance(prompt, str):
            raise PromptError("a message-list prompt needs a tokenizer with a chat template; "
                              "pass a string prompt, or chat_template=False to join the contents")
        else:
            text = (system_prompt + "\n\n" + prompt) if system_prompt else prompt
        ids = list(tokenizer(text)["input_ids"])
    if not ids or (isinstance(prompt, str) and not prompt.strip()):
        raise PromptError("empty prompt")
    return [int(i) for i in ids]
