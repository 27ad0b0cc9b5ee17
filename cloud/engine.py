"""The seam between sessions and whatever generates tokens: the reasoning engine contract.

Sessions (:mod:`edgecloud.cloud.sessions`) and the gRPC server drive an engine through
:class:`ReasoningEngine` and nothing else: shaped like vLLM's ``EngineClient``, ``generate(job)``
returns the job's :class:`EngineEvent` objects as an async iterator, and closing that iterator
early cancels the job. Unlike vLLM's, admission happens in the call itself (a full queue or a bad
job raises there, before the session records anything), so a caller never holds a stream for a job
that was refused. This module imports no torch, so sessions, the server and every edge module load
without it; the backend is chosen where the service is built.

Backends:

- :class:`edgecloud.cloud.transformers_engine.TransformersEngine`: a Hugging Face causal
  LM with continuous batching on CPU or one GPU (the shipped one). Its decode thread reports
  through callbacks; :class:`EventStream` turns them into the iterator.
- :class:`edgecloud.cloud.openai_engine.OpenAIEngine`: an OpenAI-compatible serving engine over
  HTTP (vLLM, SGLang, llama.cpp's server), natively an async generator.

What every backend must do: render the whole conversation with the model's chat template (earlier
think blocks stripped from assistant turns), sample as the job's :class:`Sampling` says (filling
what it leaves unset from ``default_sampling``; a seed makes it repeatable), enforce the thinking
budget token by token (reasoning tokens are those strictly between ``<think>`` and ``</think>``;
once a job has spent its budget, ``</think>`` is forced and the answer follows:
:class:`edgecloud.shared.reasoner.thinking.ThinkTracker` does both), report a job's events in order
on any one thread, and after ``cancel`` report nothing more for that job. A job with a
:class:`Resume` continues a session cut by a restart: the backend reads the prompt and the text the
session had streamed, counts the tokens it had spent against the budget and the output limit, and
reports only what comes next, or fails the job (``RESUME_FAILED``) when it cannot: it never
generates that past again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.reasoner.session import Message, Sampling, Usage
from edgecloud.shared.reasoner.thinking import strip_reasoning

__all__ = [
    "EngineConfig",
    "EngineEvent",
    "EngineEventKind",
    "EventStream",
    "GenerationResult",
    "Job",
    "ReasoningEngine",
    "Resume",
    "chat_messages",
    "encode_prompt",
    "resolve_sampling",
    "sampling_of",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    max_batch: int = 16
    """Sessions decoding together; more wait in the queue."""
    max_queue: int = 256
    """Waiting sessions beyond which new ones are refused (RESOURCE_EXHAUSTED)."""
    max_input_tokens: int = 1024
    """Longest prompt, after the chat template."""
    default_max_output_tokens: int = 64
    """Answer tokens when the request does not say."""
    max_output_tokens: int = 1024
    """Ceiling on any request's answer tokens."""
    max_reasoning_tokens: int = 4096
    """Ceiling on any thinking budget."""
    progress_every: int = 16
    """Reasoning tokens between two progress events when reasoning is hidden."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``."""
    threads: int = 0
    """torch intra-op threads on CPU; 0 keeps torch's default."""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_input_tokens", "default_max_output_tokens", "max_output_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"engine.{name} must be >= 1, got {getattr(self, name)}")
        if self.progress_every < 1 or self.max_reasoning_tokens < 0 or self.threads < 0:
            raise ConfigError("engine.progress_every must be >= 1; max_reasoning_tokens and threads >= 0")
        if self.default_max_output_tokens > self.max_output_tokens:
            raise ConfigError("engine.default_max_output_tokens exceeds engine.max_output_tokens")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"engine.device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass(frozen=True)
class Resume:
    """What a session had generated and streamed before a restart: where its job continues."""

    reasoning: str = ""
    """The reasoning text so far (streamed as deltas, or hidden behind progress counts)."""
    reasoning_tokens: int = 0
    """Reasoning tokens spent so far: they count against the job's budget."""
    answer: str = ""
    """The answer text streamed so far; not empty means the think block had closed."""
    answer_tokens: int = 0
    """Answer tokens generated so far: they count against ``max_output_tokens``."""


@dataclass
class Job:
    session_id: str
    query: str
    reasoning_budget: int
    """0: answer without thinking (the template pre-fills an empty think block)."""
    max_output_tokens: int
    stream_reasoning: bool
    on_event: Callable[[EngineEvent], None] | None = None
    """Where a callback-driven backend reports the job's events (its own thread-level API);
    sessions leave it unset and read the stream ``generate`` returns."""
    messages: tuple[Message, ...] = ()
    """The whole conversation, ending with the user's ``query``; empty: the query alone."""
    sampling: Sampling = field(default_factory=Sampling)
    """As the request asked; the engine fills what is unset from the model's defaults."""
    resume: Resume | None = None
    """Set when the job continues a session a restart cut: the engine starts after this text."""
    verification: bool = False
    """A shadow check of an edge answer: a backend that schedules starts interactive jobs first."""

    @property
    def conversation(self) -> tuple[Message, ...]:
        return self.messages or (Message("user", self.query),)


class EngineEventKind(enum.Enum):
    STARTED = "started"
    REASONING_PROGRESS = "reasoning_progress"
    REASONING_DELTA = "reasoning_delta"
    ANSWER_DELTA = "answer_delta"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class GenerationResult:
    answer: str
    usage: Usage
    budget_reached: bool
    finish_reason: str
    reasoning_ms: float
    answer_ms: float
    first_answer_token_ms: float
    """From the job's start in the engine."""
    reasoning: str = ""
    """The hidden reasoning's text (what the escalation log records for the next edge student)."""
    prefill_ms: float = 0.0
    """From the job's start in the engine to its first generated token: reading the prompt."""


@dataclass(frozen=True)
class EngineEvent:
    session_id: str
    kind: EngineEventKind
    text: str = ""
    """A delta's text; on REASONING_PROGRESS, the hidden reasoning text since the last progress
    (never shown to readers: what a restart continues the reasoning from)."""
    reasoning_tokens: int = 0
    """Reasoning tokens generated so far (on progress and delta events)."""
    answer_tokens: int = 0
    """Answer tokens generated so far (on answer deltas)."""
    result: GenerationResult | None = None
    error: str = ""
    error_code: str = ""


@runtime_checkable
class ReasoningEngine(Protocol):
    """What sessions need from a backend. ``submit`` and ``cancel`` are called from any thread."""

    config: EngineConfig
    name: str
    """The served model's name (its bundle name, or its folder's)."""
    version: int
    """The served model's bundle version (0 when it has none)."""
    steps: int
    """Decode steps run so far (a metric)."""
    tokens_generated: int
    """Tokens generated so far, reasoning and answer (a metric)."""
    default_sampling: Sampling
    """What a request that leaves sampling unset gets: the model's ``generation_config.json``
    (temperature 0 when it does not sample)."""

    def start(self) -> None:
        """Start generating (idempotent); jobs submitted before wait for it."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop within ``timeout`` seconds; running and waiting jobs get no further events."""

    def count_prompt_tokens(self, messages: tuple[Message, ...], reasoning_budget: int) -> int:
        """Tokens the prompt of the conversation takes (after the chat template), for admission checks."""

    def generate(self, job: Job) -> AsyncIterator[EngineEvent]:
        """Admit ``job`` and return its events: STARTED, progress or deltas, then FINISHED or FAILED,
        after which the iterator ends. Called on the event loop the iterator is read on.

        Raises :class:`~edgecloud.shared.base.errors.InvalidInputError` for a negative budget or no output
        tokens, :class:`~edgecloud.shared.base.errors.ResourceExhaustedError` when the queue is full,
        in the call (nothing is queued then). Closing the iterator before it ends cancels the job.
        """

    def cancel(self, session_id: str) -> None:
        """Drop the job, waiting or running, at the next step boundary; no event follows."""

    @property
    def queue_depth(self) -> int:
        """Jobs waiting to start."""

    @property
    def active(self) -> int:
        """Jobs generating now."""


_LAST = (EngineEventKind.FINISHED, EngineEventKind.FAILED)


class EventStream:
    """One job's events as an async iterator, fed by a backend that reports through callbacks on
    its own thread. Made on the loop that reads it; ``push`` is called from any thread; closing the
    stream before its last event calls ``cancel`` (once)."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self._cancel = cancel
        self._ended = False

    def push(self, event: EngineEvent) -> None:
        if threading.get_ident() == self._loop_thread:
            self._queue.put_nowait(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop closed: nobody reads this job any more
            log.debug("dropped an event of session %s: its loop is closed", event.session_id)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> EngineEvent:
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        self._ended = event.kind in _LAST
        return event

    async def aclose(self) -> None:
        if not self._ended:
            self._ended = True
            self._cancel()


def chat_messages(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    """The conversation as a chat template takes it, with the think blocks of earlier assistant
    turns stripped (as Qwen3's own template does): a model never reads its old hidden reasoning."""
    return [
        {"role": m.role, "content": strip_reasoning(m.content) if m.role == "assistant" else m.content}
        for m in messages
    ]


def encode_prompt(tokenizer: Any, messages: tuple[Message, ...], *, thinking: bool) -> list[int]:
    """The conversation's prompt ids: the model's chat template (a Hugging Face tokenizer's), then its
    tokenizer; every backend that renders prompts itself reads the same ids."""
    prompt = tokenizer.apply_chat_template(
        chat_messages(messages), tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def sampling_of(generation_config: object | None) -> Sampling:
    """A model's default sampling from its ``generation_config.json``: Qwen3's asks for temperature
    0.6 and top-p 0.95 in thinking mode (greedy repeats itself); a config that does not sample is greedy."""
    if generation_config is None or not getattr(generation_config, "do_sample", False):
        return Sampling(temperature=0.0, top_p=1.0)
    temperature = float(getattr(generation_config, "temperature", None) or 1.0)
    top_p = float(getattr(generation_config, "top_p", None) or 1.0)
    return Sampling(temperature=min(max(temperature, 0.0), 2.0), top_p=min(max(top_p, 1e-6), 1.0))


def resolve_sampling(sampling: Sampling, default: Sampling) -> Sampling:
    """What a job samples with: the request's fields, and the model's default where it left one unset."""
    return Sampling(
        temperature=default.temperature if sampling.temperature is None else sampling.temperature,
        top_p=default.top_p if sampling.top_p is None else sampling.top_p,
        seed=sampling.seed,
    )
