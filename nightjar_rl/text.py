"""Text in and out of models: prompts, chat messages and incremental detokenisation.

- `encode_prompt` / `encode_messages`: a user message or a conversation as the token ids a model
  answers (workloads, the datastore builder, the CLI): the chat template when the tokenizer has one.
- `TextCodec` (the server): completion prompts are tokenised as plain text (no chat template), or
  taken as token ids. Chat messages use the tokenizer's chat template when it has one. Otherwise
  (documented fallback) a single user message is its content verbatim, exactly what `nightjar-rl
  generate` feeds the model; several messages become "role: content" lines followed by "assistant: ".
- Tokenizer-less models (tiny-random) read text as UTF-8 bytes folded into the vocabulary (as
  `generate` does) and render each output token id t as "<t>".
"""

from __future__ import annotations


def encode_prompt(tokenizer, text: str, vocab_size: int, chat: bool = True) -> list[int]:
    """Token ids for a user message: the chat template when the tokenizer has one. Tiny random models
    have no tokenizer: their ids are the UTF-8 bytes folded into the vocabulary."""
    return encode_messages(tokenizer, [{"role": "user", "content": text}], vocab_size) if chat else (
        [b % vocab_size for b in text.encode("utf-8")] if tokenizer is None else tokenizer(text)["input_ids"])


def encode_messages(tokenizer, messages: list[dict], vocab_size: int) -> list[int]:
    """Token ids for a conversation, ready for the assistant's reply: the chat template when the
    tokenizer has one; else one user message is its content verbatim and several become
    `role: content` lines (as the server renders them)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    text = messages[0]["content"] if len(messages) == 1 else "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    if tokenizer is None:
        return [b % vocab_size for b in text.encode("utf-8")]
    return tokenizer(text)["input_ids"]


def message_text(content) -> str:
    """A chat message's content: a string, or OpenAI content parts (their text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


class TextCodec:
    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size

    def encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text, self.vocab_size, chat=False)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        msgs = [{"role": m["role"], "content": message_text(m.get("content"))} for m in messages]
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            return encode_messages(self.tokenizer, msgs, self.vocab_size)
        if len(msgs) == 1 and msgs[0]["role"] == "user":
            return self.encode(msgs[0]["content"])
        return self.encode("".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant: ")

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return "".join(f"<{t}>" for t in ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def stream(self) -> IncrementalDecoder:
        return IncrementalDecoder(self)


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas; holds back an incomplete UTF-8 character."""

    def __init__(self, codec: TextCodec):
        self.codec, self.ids, self.text = codec, [], ""

    def push(self, new_ids: list[int], final: bool = False) -> str:
        self.ids.extend(new_ids)
        if self.codec.tokenizer is None:
            delta = self.codec.decode(new_ids)
            self.text += delta
            return delta
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd") and not final:
            return ""
        delta = text[len(self.text):]
        self.text = text
        return delta
