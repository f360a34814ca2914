"""The text the local provider answers: derived from the prompt alone, so a test can predict it.

A token here is a word: the answer is a sequence of words, streamed one per delta (the first bare,
every later one with the whitespace before it), and both the prompt's and the answer's token counts
are word counts. That keeps the usage the server reports consistent with the text it sends.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# A small fixed vocabulary: the answer's words are drawn from it by a generator seeded with the prompt.
VOCABULARY = (
    "agents", "answer", "balance", "between", "bright", "careful", "clear", "context", "conversation",
    "decide", "detail", "each", "evidence", "example", "first", "follow", "gentle", "good", "idea",
    "issue", "just", "keep", "kind", "later", "light", "local", "measure", "model", "moment", "next",
    "note", "offer", "open", "order", "plain", "point", "question", "quiet", "reason", "reply",
    "right", "round", "short", "simple", "small", "speak", "steady", "story", "sure", "take", "think",
    "thread", "together", "turn", "useful", "value", "view", "warm", "well", "wide", "word", "work",
    "yes", "zone",
)  # fmt: skip

MIN_NATURAL_TOKENS = 12
NATURAL_TOKEN_SPREAD = 37  # natural answers have 12 to 48 tokens
SENTENCE_WORDS = (4, 10)  # the words of one sentence of an answer, fewest and most


def count_tokens(texts: Iterable[str]) -> int:
    """The prompt's tokens as this server counts them: its words (at least one per request)."""
    return max(1, sum(len(text.split()) for text in texts))


@dataclass(frozen=True)
class Answer:
    """One text reply: its tokens (each word with the whitespace before it), the prompt's token
    count, and whether max_tokens cut it short."""

    tokens: tuple[str, ...]
    input_tokens: int
    truncated: bool

    @property
    def output_tokens(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def pieces(self) -> Iterator[str]:
        """The text deltas of a stream, one token each; their concatenation is `text`."""
        yield from self.tokens


def answer_with_text(text: str, input_tokens: int, max_tokens: int | None) -> Answer:
    """An answer of exactly `text` (whitespace kept), capped at `max_tokens` words."""
    tokens = tuple(re.findall(r"\s*\S+", text)) or (text,)
    kept = tokens[:max_tokens] if max_tokens is not None else tokens
    return Answer(tokens=kept, input_tokens=input_tokens, truncated=len(kept) < len(tokens))


def compose_answer(prompt: list[str], max_tokens: int | None, exact_tokens: int | None = None) -> Answer:
    """The answer to `prompt` (system prompt and message texts, in order).

    Its natural length (12 to 48 words, in sentences of 4 to 10 ending with a full stop) comes
    from the prompt's hash; `exact_tokens` overrides it
    (benchmarks ask for long answers); `max_tokens` caps it, and a capped answer is `truncated`.
    """
    digest = hashlib.sha256("\x00".join(prompt).encode()).digest()
    generator = random.Random(int.from_bytes(digest[:8], "big"))
    natural = MIN_NATURAL_TOKENS + digest[8] % NATURAL_TOKEN_SPREAD
    wanted = exact_tokens if exact_tokens is not None else natural
    length = min(wanted, max_tokens) if max_tokens is not None else wanted
    words = [generator.choice(VOCABULARY) for _ in range(length)]
    # Sentences of 4 to 10 words, from a generator of their own (the words stay the prompt's):
    # speech made from an answer starts at its first full stop, as it would for a model's.
    ends = random.Random(int.from_bytes(digest[9:17], "big"))
    until_end = ends.randint(*SENTENCE_WORDS)
    for index in range(len(words)):
        until_end -= 1
        if until_end == 0 or index == len(words) - 1:
            words[index] += "."
            until_end = ends.randint(*SENTENCE_WORDS)
    tokens = tuple(word if index == 0 else f" {word}" for index, word in enumerate(words))
    return Answer(tokens=tokens, input_tokens=count_tokens(prompt), truncated=length < wanted)
