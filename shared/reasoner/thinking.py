"""The think block: how a thinking model separates its reasoning from its answer.

A thinking model (Qwen3, the cloud teachers built on its chat format, the edge students that learnt
the cloud's reasoning) writes ``<think>``, its reasoning, ``</think>`` and then its answer. The
reasoning tokens are the tokens strictly between the two tags: a thinking budget counts them, and
once it is spent ``</think>`` is forced as the next token, so an answer always follows. A model
re-reading a conversation never sees its old reasoning: earlier assistant turns lose their think
block, as Qwen3's own chat template does.

Three parts of the project read think blocks, and they must agree token for token on what counts
as reasoning, when the budget forces the close and where the answer begins: the cloud engine
(:mod:`edgecloud.cloud.decoding`) enforces a session's budget while it streams, the model
kit's batch decoder (:mod:`edgecloud.modelkit.decoding`) does the same when it measures and trains
the models the cloud serves, and the edge runtime (:mod:`edgecloud.edge.runtime`) keeps only the
answer of a student that reasons. The tags are defined here and nowhere else; the chat template of
:mod:`edgecloud.modelkit.tokenizer` and the teachers' training targets are written with them.

:class:`ThinkTracker` follows one sequence token by token. It reads the tags in one of two ways:

- **Leading block** (Qwen3's chat format: the cloud engine, the edge student): the block, if any,
  opens the generation. Inside it only ``</think>`` is markup (any other token is reasoning, and
  the end token closes the block); once it closes, or when the first token is not ``<think>``,
  every token is the answer.
- **Tags anywhere** (``tags_anywhere=True``, the model kit's decoder, which measures a model as it
  is): every ``<think>`` opens (or re-opens) a block and every ``</think>`` closes one; neither tag
  nor the end token is ever reasoning, and an end token inside a block stops the sequence there.

Pure Python with no project imports: the edge installs without torch.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

__all__ = [
    "THINK_END",
    "THINK_START",
    "THINK_TAG_TOKENS",
    "Phase",
    "Piece",
    "ThinkTracker",
    "split_reasoning",
    "strip_reasoning",
]

THINK_START = "<think>"
THINK_END = "</think>"
THINK_TAG_TOKENS = 2
"""The cloud counts its think block's opening and closing tags as output tokens."""


class Phase(enum.Enum):
    """Where a sequence stands around its think block."""

    BEFORE = "before"
    """Nothing generated yet; the next token may open the block."""
    INSIDE = "inside"
    """Reasoning: the block is open."""
    AFTER = "after"
    """Answering: the block closed, or never opened."""


class Piece(enum.Enum):
    """What one generated token was."""

    OPEN = "open"
    """A ``<think>`` that opened the block (or, tags anywhere, any ``<think>``)."""
    REASONING = "reasoning"
    """A reasoning token: it counts against the budget."""
    CLOSE = "close"
    """The ``</think>`` that closed the block (or, tags anywhere, any ``</think>``)."""
    ANSWER = "answer"
    """A token after the block (or of a generation without one)."""
    STOP = "stop"
    """Tags anywhere: the end token inside a block, which stops the sequence unanswered."""


class ThinkTracker:
    """One sequence's think block, fed token ids as they are generated.

    For each generated token, :meth:`choose` says which token to emit instead (``</think>`` when
    the budget is spent), then :meth:`push` records the emitted one. ``start``, ``end`` and ``eos``
    are the ids of ``<think>``, ``</think>`` and the end token; ``budget`` None never forces.
    ``phase`` is where the prompt left the sequence: :attr:`Phase.INSIDE` when it opened the block
    itself, :attr:`Phase.AFTER` when it pre-filled an empty one (thinking disabled).
    """

    __slots__ = (
        "_closed",
        "answer_from",
        "budget",
        "end",
        "eos",
        "forced",
        "phase",
        "pushed",
        "reasoning_tokens",
        "start",
        "tags_anywhere",
    )

    def __init__(
        self,
        start: int,
        end: int,
        *,
        eos: int | None = None,
        budget: int | None = None,
        phase: Phase = Phase.BEFORE,
        tags_anywhere: bool = False,
    ) -> None:
        self.start, self.end, self.eos, self.budget = start, end, eos, budget
        self.tags_anywhere = tags_anywhere
        self.phase = phase
        self.reasoning_tokens = 0
        """Tokens strictly between the tags so far."""
        self.forced = False
        """The budget forced ``</think>`` at least once."""
        self.pushed = 0
        """Tokens pushed so far."""
        self.answer_from: int | None = 0 if tags_anywhere or phase is Phase.AFTER else None
        """Index, among the pushed tokens, where the answer begins; None: no answer (yet)."""
        self._closed = False

    @property
    def spent(self) -> bool:
        """The reasoning has used its whole budget."""
        return self.budget is not None and self.reasoning_tokens >= self.budget

    def choose(self, token: int, *, close: bool = False) -> int:
        """The token to emit for the picked ``token``: ``</think>`` inside the block once the budget
        is spent (the close is then forced), or for ``close`` (no room left) or the end token (an
        answer always comes; tags anywhere keep the end token); else ``token``."""
        if self.phase is not Phase.INSIDE or token == self.end:
            return token
        if token == self.eos and self.tags_anywhere:
            return token
        if self.spent:
            self.forced = True
            return self.end
        return self.end if close or token == self.eos else token

    def push(self, token: int) -> Piece:
        """Record the emitted ``token``: update the phase and the counts, and say what it was."""
        index, self.pushed = self.pushed, self.pushed + 1
        if self.tags_anywhere:
            return self._push_anywhere(token, index)
        if self.phase is Phase.BEFORE:
            if token == self.start:
                self.phase = Phase.INSIDE
                return Piece.OPEN
            self.phase, self.answer_from = Phase.AFTER, index  # a model that answers without a block
        if self.phase is Phase.INSIDE:
            if token == self.end:
                self.phase, self.answer_from = Phase.AFTER, index + 1
                return Piece.CLOSE
            self.reasoning_tokens += 1
            return Piece.REASONING
        return Piece.ANSWER

    def _push_anywhere(self, token: int, index: int) -> Piece:
        """Tags anywhere: the answer follows the last ``</think>``; with none, it is all the tokens
        when nothing was reasoned, and nothing when a block was cut before it closed."""
        if token == self.end:
            self.phase, self.answer_from, self._closed = Phase.AFTER, index + 1, True
            return Piece.CLOSE
        if token == self.start:
            self.phase = Phase.INSIDE
            return Piece.OPEN
        if self.phase is Phase.INSIDE:
            if token == self.eos:
                return Piece.STOP
            self.reasoning_tokens += 1
            if not self._closed:
                self.answer_from = None
            return Piece.REASONING
        self.phase = Phase.AFTER
        return Piece.ANSWER

    def answer(self, tokens: Sequence[int]) -> list[int]:
        """The answer's tokens among ``tokens``, the tokens pushed so far in order."""
        return [] if self.answer_from is None else list(tokens[self.answer_from :])


def strip_reasoning(content: str) -> str:
    """An earlier assistant turn as a model re-reads it: the text after its last ``</think>``,
    leading newlines dropped, as Qwen3's chat template does; a turn without ``</think>`` as it is."""
    if THINK_END not in content:
        return content
    return content.rsplit(THINK_END, 1)[1].lstrip("\n")


def split_reasoning(text: str) -> tuple[str, str]:
    """``(reasoning, answer)`` of a generated text. The reasoning lies between ``<think>`` (absent
    when the prompt opened the block) and the last ``</think>``, its surrounding newlines dropped;
    the answer is :func:`strip_reasoning` of the text. No block: ``("", text)``; a block that never
    closed: its reasoning and no answer."""
    if THINK_END not in text:
        if THINK_START not in text:
            return "", text
        return text.split(THINK_START, 1)[1].strip("\n"), ""
    head = text.rsplit(THINK_END, 1)[0]
    reasoning = head.split(THINK_START, 1)[1] if THINK_START in head else head
    return reasoning.strip("\n"), strip_reasoning(text)
