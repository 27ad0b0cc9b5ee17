"""One row of :class:`~edgecloud.cloud.transformers_engine.TransformersEngine`'s batch, token by
token: what its prompt is, whether it may start, which token it takes next and what that token
streams, and its result.

The thinking budget is enforced here: once a row has spent its budget of reasoning tokens (the
tokens strictly between ``<think>`` and ``</think>``), ``</think>`` is forced as its next token and
it goes on to the answer. An end token inside the think block is replaced by ``</think>`` too, so
an answer always comes. Each row's :class:`~edgecloud.shared.reasoner.thinking.ThinkTracker`
decides both and counts the reasoning; the row streams what it says each token was.

A job that continues a session cut by a restart (``Job.resume``) is prefilled with its prompt,
``<think>`` and the reasoning so far and, once the answer had begun, ``</think>`` and the answer so
far; its counts start where the session's stopped, and it reports only the text that follows.

Nothing here touches the model or the batch: :class:`RowDecoder` takes the token the engine picked
from the logits and reports :class:`EngineEvent` objects through the row's job callback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from edgecloud.cloud.engine import (
    EngineConfig,
    EngineEvent,
    EngineEventKind,
    GenerationResult,
    Job,
    encode_prompt,
    resolve_sampling,
)
from edgecloud.shared.reasoner.session import Message, Sampling, Usage
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START, Phase, Piece, ThinkTracker

__all__ = ["Detokenizer", "Row", "RowDecoder", "Sampler", "emit"]

log = logging.getLogger(__name__)


class Detokenizer:
    """Incremental decoding: emits only text that can no longer change."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, lstrip: bool) -> None:
        self.tokenizer, self.lstrip = tokenizer, lstrip
        self.ids: list[int] = []
        self.emitted = 0
        self.prefix = ""
        """Text emitted before a restart; ``ids`` are the tokens generated after it."""
        self._context: list[int] = []
        self._context_chars = 0

    def resume(self, text: str, ids: list[int]) -> None:
        """Continue after ``text`` (tokenized as ``ids``), which counts as emitted. Its last tokens
        are decoded along with the new ones, so a word boundary decodes as it would have in one
        piece (a SentencePiece tokenizer drops the space of a word that starts a sequence)."""
        self.prefix, self._context = text, ids[-4:]
        self._context_chars = len(self.tokenizer.decode(self._context, skip_special_tokens=True))
        self.emitted = len(self.text())

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self.take()

    def take(self) -> str:
        """The text since the last call that can no longer change."""
        text = self.text()
        if text.endswith("\ufffd"):  # an incomplete multi-byte character
            return ""
        delta, self.emitted = text[self.emitted :], len(text)
        return delta

    def text(self) -> str:
        text = self.tokenizer.decode(self._context + self.ids, skip_special_tokens=True)
        text = self.prefix + text[self._context_chars :]
        return text.lstrip() if self.lstrip else text


class Sampler:
    """Picks a row's tokens: greedy at temperature 0, else temperature and top-p sampling from the
    row's own seeded generator, so a row's draws do not depend on the rest of the batch."""

    def __init__(self, sampling: Sampling) -> None:
        self.temperature = sampling.temperature or 0.0
        self.top_p = sampling.top_p if sampling.top_p is not None else 1.0
        self.generator: torch.Generator | None = None
        if self.temperature > 0:
            self.generator = torch.Generator()
            if sampling.seed is not None:
                self.generator.manual_seed(sampling.seed)
            else:
                self.generator.seed()

    @property
    def greedy(self) -> bool:
        return self.generator is None

    def pick(self, logits: torch.Tensor) -> int:
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always).
            keep = (sorted_probs.cumsum(-1) - sorted_probs) < self.top_p
            choice = torch.multinomial(sorted_probs * keep, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))


@dataclass
class Row:
    job: Job
    prompt_tokens: int
    think: ThinkTracker
    """The think block: its phase, the reasoning tokens spent and whether the budget forced its close."""
    started: float
    reasoning: Detokenizer
    answer: Detokenizer
    sampler: Sampler
    output_tokens: int = 0
    answer_tokens: int = 0
    reported_progress: int = 0
    thinking_ended: float | None = None
    first_answer: float | None = None
    first_token: float | None = None
    finish_reason: str = ""
    done: bool = False


def emit(row: Row, kind: EngineEventKind, **fields) -> None:
    """Report an event of ``row``'s job to its listener; a listener that fails is logged, not raised."""
    listener = row.job.on_event
    if listener is None:  # submit refuses such a job
        return
    try:
        listener(EngineEvent(row.job.session_id, kind, **fields))
    except Exception:
        log.exception("event listener of session %s failed", row.job.session_id)


class RowDecoder:
    """The per-row decoding step of one model's tokenizer: builds a job's row and prompt, then
    takes each token the engine picked through the think block, the budget and the limits."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, config: EngineConfig, default_sampling: Sampling, max_positions: int
    ) -> None:
        self.tokenizer, self.config = tokenizer, config
        self.default_sampling, self.max_positions = default_sampling, max_positions
        ids = tokenizer.convert_tokens_to_ids
        self.think_start, self.think_end = ids(THINK_START), ids(THINK_END)
        self.eos = tokenizer.eos_token_id

    def encode(self, messages: tuple[Message, ...], *, thinking: bool) -> list[int]:
        return encode_prompt(self.tokenizer, messages, thinking=thinking)

    def _encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def new_row(self, job: Job, now: float) -> tuple[Row, list[int]]:
        """``job``'s row and the tokens to prefill it with (its prompt, and a resumed job's past)."""
        prompt = self.encode(job.conversation, thinking=job.reasoning_budget > 0)
        row = Row(
            job,
            len(prompt),
            ThinkTracker(
                self.think_start,
                self.think_end,
                eos=self.eos,
                budget=job.reasoning_budget,
                phase=Phase.BEFORE if job.reasoning_budget > 0 else Phase.AFTER,
            ),
            now,
            Detokenizer(self.tokenizer, lstrip=True),
            Detokenizer(self.tokenizer, lstrip=True),
            Sampler(resolve_sampling(job.sampling, self.default_sampling)),
        )
        return row, (prompt + self._resume(row) if job.resume is not None else prompt)

    def refusal(self, row: Row, length: int) -> tuple[str, str] | None:
        """(code, message) when the row cannot start: a prompt over the input limit, or a resumed
        session with no room left to continue (its past is never generated again instead)."""
        limit = min(self.config.max_input_tokens, self.max_positions - 2)
        if row.prompt_tokens > limit:
            return "INVALID_ARGUMENT", f"prompt has {row.prompt_tokens} tokens; the limit is {limit}"
        if length >= self.max_positions - 1:
            return "RESUME_FAILED", (
                f"cannot continue after the restart: the prompt and the text streamed before it take {length} "
                f"tokens; the model reads at most {self.max_positions - 1} (nothing is generated again)"
            )
        return None

    def _resume(self, row: Row) -> list[int]:
        """The tokens after the prompt that put ``row`` where its session stood before the restart
        (the think block as far as it went, then the answer so far), with its counts and streams
        set to continue from there."""
        resume, encode = row.job.resume, self._encode_text
        assert resume is not None
        answering = bool(resume.answer) or row.job.reasoning_budget == 0
        ids: list[int] = []
        if row.job.reasoning_budget > 0 and (answering or resume.reasoning or resume.reasoning_tokens):
            # The streams drop the whitespace around the reasoning and the answer; put back Qwen3's.
            reasoning = encode(resume.reasoning)
            ids += [self.think_start, *encode("\n"), *reasoning]
            row.reasoning.resume(resume.reasoning, reasoning)
            row.think.reasoning_tokens = row.reported_progress = resume.reasoning_tokens
            row.think.phase, row.output_tokens = Phase.INSIDE, 1
            if answering:
                ids += [*encode("\n"), self.think_end, *encode("\n\n")]
                row.think.phase, row.output_tokens = Phase.AFTER, 2
                row.think.forced = row.think.spent
        if resume.answer:
            answer = encode(resume.answer)
            ids += answer
            row.answer.resume(resume.answer, answer)
            row.answer_tokens = resume.answer_tokens
            row.output_tokens += resume.answer_tokens
            row.first_answer = row.started
        return ids

    def advance(self, row: Row, token: int, position: int) -> int:
        """Apply the budget and limits to the picked ``token``; update the row; emit deltas."""
        job = row.job
        row.first_token = row.first_token or time.monotonic()
        out_of_room = position + 1 >= self.max_positions
        token = row.think.choose(token, close=out_of_room)
        piece = row.think.push(token)
        if piece is Piece.OPEN:
            row.output_tokens += 1
            return token
        if piece is Piece.CLOSE:
            row.output_tokens += 1
            row.thinking_ended = time.monotonic()
            if not job.stream_reasoning and row.reported_progress != row.think.reasoning_tokens:
                self._report_progress(row)
            return token
        if piece is Piece.REASONING:
            if job.stream_reasoning:
                delta = row.reasoning.push(token)
                if delta:
                    emit(row, EngineEventKind.REASONING_DELTA, text=delta, reasoning_tokens=row.think.reasoning_tokens)
                return token
            row.reasoning.ids.append(token)  # decoded at each progress event, not each token
            if row.think.reasoning_tokens % self.config.progress_every == 0:
                self._report_progress(row)
            return token
        row.output_tokens += 1
        if token == self.eos:
            row.done, row.finish_reason = True, "stop"
            return token
        row.answer_tokens += 1
        delta = row.answer.push(token)
        if delta:
            if row.first_answer is None:
                row.first_answer = time.monotonic()
            emit(
                row,
                EngineEventKind.ANSWER_DELTA,
                text=delta,
                reasoning_tokens=row.think.reasoning_tokens,
                answer_tokens=row.answer_tokens,
            )
        if row.answer_tokens >= job.max_output_tokens or out_of_room:
            row.done, row.finish_reason = True, "length"
        return token

    def _report_progress(self, row: Row) -> None:
        """A progress count for a session that hides its reasoning, with the hidden text since the
        last one: the session keeps it, so a restart can continue this reasoning."""
        row.reported_progress = row.think.reasoning_tokens
        text = row.reasoning.take()
        emit(row, EngineEventKind.REASONING_PROGRESS, text=text, reasoning_tokens=row.think.reasoning_tokens)

    def finish(self, row: Row) -> None:
        now = time.monotonic()
        ended = row.thinking_ended or row.started
        result = GenerationResult(
            answer=row.answer.text().strip(),
            usage=Usage(
                input_tokens=row.prompt_tokens,
                reasoning_tokens=row.think.reasoning_tokens,
                output_tokens=row.output_tokens,
            ),
            budget_reached=row.think.forced,
            finish_reason=row.finish_reason,
            reasoning_ms=(ended - row.started) * 1e3,
            answer_ms=(now - ended) * 1e3,
            first_answer_token_ms=((row.first_answer or now) - row.started) * 1e3,
            prefill_ms=((row.first_token or now) - row.started) * 1e3,
            reasoning=row.reasoning.text().strip(),
        )
        emit(row, EngineEventKind.FINISHED, result=result)
