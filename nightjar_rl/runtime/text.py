"""Text in and out of the server: prompts, chat messages and incremental detokenisation.

- Completion prompts are tokenised as plain text (no chat template), or taken as token ids.
- Chat messages use the tokenizer's chat template when it has one. Otherwise (documented fallback)
  a single user message is its content verbatim, exactly what `nightjar-rl generate` feeds the
  model; several messages become "role: content" lines followed by "assistant: ".
- Tokenizer-less models (tiny-random) read text as UTF-8 bytes folded into the vocabulary (as
  `generate` does) and render each output token id t as "<t>".
"""

from __future__ import annotations

from nightjar_rl.serving.workload import encode_prompt


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
            ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
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
