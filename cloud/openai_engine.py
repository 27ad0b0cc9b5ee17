"""The OpenAI-compatible backend of :class:`edgecloud.cloud.engine.ReasoningEngine`: a serving
engine over HTTP (llama.cpp's server, vLLM, SGLang) does the decoding; this process renders the
prompt, enforces the thinking budget and streams the session.

The prompt is rendered here, with the model's own tokenizer and chat template (``--model DIR``
needs the tokenizer files, not the weights), and sent to ``/v1/completions`` as text: the text the
tokenizer's ids decode to, so a normaliser the server does not run has been applied already.

The thinking budget is enforced by **budget forcing in two calls**, which every such server can do:

1. the prompt, then ``<think>`` (and the reasoning so far, for a session resumed after a
   restart), generated with ``max_tokens`` set to what is left of the budget and ``</think>`` as a
   stop: the reasoning, streamed as deltas or hidden behind progress counts;
2. the same text plus the reasoning and ``</think>`` (forced when the first call ran out of
   budget), generated up to the answer's token limit: the answer. A server with prefix caching
   (vLLM, SGLang, llama.cpp) reads the shared prefix once.

A job without a budget is one call: the chat template pre-fills an empty think block.
Reasoning and answer tokens are counted apart, a streamed chunk a token, or from the server's
``usage`` where it reports one (vLLM with ``stream_options``). A stream that ends without a
finish reason (a server that cut it) is never passed off as complete.

A call the server drops (a lost connection, a 5xx, a stream cut short) is tried again, up to
``RemoteEngineConfig.retries`` times with a doubling wait, from where the session's stream stands:
the prompt, the reasoning and the answer streamed so far, exactly as a session resumed after a restart
(so readers see no gap and no duplicate; a sampled session samples on from there). A request the
server refuses (4xx) fails the session at once, with ``ENGINE_ERROR``, as do exhausted retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from edgecloud.cloud.config import RemoteEngineConfig
from edgecloud.cloud.engine import (
    EngineConfig,
    EngineEvent,
    EngineEventKind,
    GenerationResult,
    Job,
    encode_prompt,
    resolve_sampling,
    sampling_of,
)
from edgecloud.shared.base.errors import ConfigError, InvalidInputError, ResourceExhaustedError
from edgecloud.shared.reasoner.session import Message, Sampling, Usage
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

__all__ = ["EngineStreamError", "OpenAIEngine"]

log = logging.getLogger(__name__)

K = EngineEventKind


class EngineStreamError(RuntimeError):
    """The serving engine's answer was not a whole generation."""


_DROPPED = (openai.APIConnectionError, openai.InternalServerError, httpx.TransportError, EngineStreamError)
"""A call the server dropped (worth trying again), not one it refused (a 4xx). ``httpx``'s errors
reach us unwrapped when the connection breaks while the stream is read."""


@dataclass
class _Call:
    """What one completion call streamed."""

    text: str = ""
    tokens: int = 0
    """Chunks with text: a token each on llama.cpp's server."""
    tokens_reported: int | None = None
    """The server's own count (``usage``), where it sends one."""
    finish_reason: str | None = None
    first_token: float | None = None


@dataclass
class _Progress:
    """A job's counts, texts and times, resumed ones included."""

    started: float
    prompt_tokens: int = 0
    reasoning: str = ""
    raw_reasoning: str = ""
    raw_answer: str = ""
    """The think block's text as the model reads it (the stream drops its opening whitespace)."""
    budget_reached: bool = False
    first_token: float | None = None
    thinking_ended: float | None = None
    reasoning_tokens: int = 0
    answer: str = ""
    answer_tokens: int = 0
    output_tokens: int = 0
    unreported: list[str] = field(default_factory=list)
    reported_tokens: int = 0
    think_block_done: bool = False
    """The reasoning call ended (a retry goes on with the answer; ``<think>``/``</think>`` counted once)."""
    first_answer: float | None = None


class OpenAIEngine:
    """Sessions on an OpenAI-compatible server. At most ``config.max_batch`` calls run at once,
    ``config.max_queue`` more wait; the server batches what it is sent."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        remote: RemoteEngineConfig,
        config: EngineConfig | None = None,
        *,
        name: str,
        version: int = 0,
        default_sampling: Sampling | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.remote, self.tokenizer = remote, tokenizer
        self.name, self.version = name, version
        self.default_sampling = default_sampling or Sampling(temperature=0.0, top_p=1.0)
        key = Path(remote.api_key_file).read_text().strip() if remote.api_key_file else "unused"
        self._client = openai.AsyncOpenAI(base_url=remote.url, api_key=key, timeout=remote.timeout_s, max_retries=0)
        self._model = remote.served_model
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0
        self._running = 0
        self._cancelled: set[str] = set()
        self._stopped = False
        self.steps = 0
        self.tokens_generated = 0

    @classmethod
    def from_dir(cls, directory: Path, remote: RemoteEngineConfig, config: EngineConfig | None = None, **kw):
        """The tokenizer, chat template and ``generation_config.json`` of the model in ``directory``."""
        if not (Path(directory) / "tokenizer_config.json").is_file():
            raise ConfigError(f"{directory}: no tokenizer_config.json (the OpenAI backend renders prompts itself)")
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        if not tokenizer.chat_template:
            raise ConfigError(f"{directory}: the tokenizer has no chat template")
        try:
            generation = GenerationConfig.from_pretrained(str(directory))
        except OSError:
            generation = None
        return cls(tokenizer, remote, config, default_sampling=sampling_of(generation), **kw)

    # -- the ReasoningEngine contract ----------------------------------------------------

    def start(self) -> None:
        """Nothing to start: the server runs apart. Calls wait for a slot on the caller's loop."""

    def stop(self, timeout: float = 10.0) -> None:
        """No job reports anything more: each stream ends at its next chunk, without a last event
        (its session stays unfinished, for a restart or another replica to continue)."""
        self._stopped = True

    async def aclose(self) -> None:
        """Close the connections to the server (after the sessions stopped reading)."""
        await self._client.close()

    async def served_model(self) -> str:
        """The model name requests carry: configured, or the first one the server lists."""
        if not self._model:
            models = await self._client.models.list()
            if not models.data:
                raise ConfigError(f"the server at {self.remote.url} serves no model")
            self._model = models.data[0].id
        return self._model

    def count_prompt_tokens(self, messages: tuple[Message, ...], reasoning_budget: int) -> int:
        return len(encode_prompt(self.tokenizer, messages, thinking=reasoning_budget > 0))

    def generate(self, job: Job) -> AsyncIterator[EngineEvent]:
        if self._stopped:
            raise ResourceExhaustedError("the engine is stopping; retry on another replica")
        if job.reasoning_budget < 0 or job.max_output_tokens < 1:
            raise InvalidInputError("reasoning_budget must be >= 0 and max_output_tokens >= 1")
        if self._waiting >= self.config.max_queue:
            raise ResourceExhaustedError(f"the engine queue is full ({self.config.max_queue} waiting); retry later")
        self._cancelled.discard(job.session_id)
        self._waiting += 1
        return self._generate(job)

    def cancel(self, session_id: str) -> None:
        self._cancelled.add(session_id)

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def active(self) -> int:
        return self._running

    # -- one job -------------------------------------------------------------------------

    async def _generate(self, job: Job) -> AsyncIterator[EngineEvent]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.max_batch)
        waiting = True
        try:
            async with self._slots:
                self._waiting, self._running, waiting = self._waiting - 1, self._running + 1, False
                try:
                    async for event in self._run(job):
                        if job.session_id in self._cancelled or self._stopped:
                            return
                        yield event
                except (openai.APIError, httpx.TransportError, EngineStreamError) as exc:
                    log.warning("session %s: the serving engine failed: %s", job.session_id, exc)
                    yield _failed(job, "ENGINE_ERROR", f"the serving engine failed: {exc}")
                finally:
                    self._running -= 1
        finally:
            if waiting:  # closed before its turn came
                self._waiting -= 1
            self._cancelled.discard(job.session_id)

    async def _run(self, job: Job) -> AsyncIterator[EngineEvent]:
        progress = _Progress(started=time.monotonic())
        prompt_ids = encode_prompt(self.tokenizer, job.conversation, thinking=job.reasoning_budget > 0)
        if len(prompt_ids) > self.config.max_input_tokens:
            yield _failed(job, "INVALID_ARGUMENT", f"prompt has {len(prompt_ids)} tokens; the limit is "
                               f"{self.config.max_input_tokens}")  # fmt: skip
            return
        progress.prompt_tokens = len(prompt_ids)
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        sampling = resolve_sampling(job.sampling, self.default_sampling)
        if job.resume is not None:
            resume = job.resume
            progress.reasoning, progress.reasoning_tokens = resume.reasoning, resume.reasoning_tokens
            progress.answer, progress.answer_tokens = resume.answer, resume.answer_tokens
        # The texts the model reads back, whitespace included (the stream drops what opens each): a
        # resumed session's as the chat template lays it out, then each chunk as it comes.
        progress.raw_reasoning = ("\n" + progress.reasoning) if progress.reasoning else ""
        opening = "\n\n" if job.reasoning_budget > 0 else ""  # after </think>; the empty block has its own
        progress.raw_answer = (opening + progress.answer) if progress.answer else ""
        yield EngineEvent(job.session_id, K.STARTED)
        for attempt in range(self.remote.retries + 1):
            try:
                async for event in self._attempt(job, prompt, sampling, progress):
                    yield event
                return
            except _DROPPED as exc:
                if self._stopped:  # no last event: the session stays unfinished, as stop() says
                    return
                if attempt == self.remote.retries:
                    raise
                wait = self.remote.retry_backoff_s * 2**attempt
                log.warning(
                    "session %s: the serving engine dropped a call (%s); going on from %d reasoning and %d answer "
                    "tokens in %.1fs (retry %d of %d)", job.session_id, exc, progress.reasoning_tokens,
                    progress.answer_tokens, wait, attempt + 1, self.remote.retries,
                )  # fmt: skip
                await asyncio.sleep(wait)

    async def _attempt(self, job: Job, prompt: str, sampling: Sampling, progress: _Progress):
        """Generate from where ``progress`` stands (nothing yet, a restart's resume, or a dropped call)."""
        if job.reasoning_budget > 0:
            async for event in self._think_block(job, prompt, sampling, progress):
                yield event
            text = prompt + THINK_START + progress.raw_reasoning + THINK_END + progress.raw_answer
        else:
            text = prompt + progress.raw_answer
        call = _Call()
        left = job.max_output_tokens - progress.answer_tokens
        if left > 0:
            async for event in self._answer(job, text, left, sampling, call, progress):
                yield event
        progress.first_token = progress.first_token or call.first_token
        yield _finished(job, progress, call)

    async def _think_block(
        self, job: Job, prompt: str, sampling: Sampling, progress: _Progress
    ) -> AsyncIterator[EngineEvent]:
        """The reasoning up to ``</think>`` or the budget (first call), unless a resumed session's
        answer had begun or it ended before a retry; ``progress.raw_reasoning`` is the block's text."""
        if progress.think_block_done:  # a retry of the answer call
            return
        if progress.answer:  # resumed after the think block closed: Qwen3's whitespace around it
            progress.raw_reasoning = progress.raw_reasoning.rstrip("\n") + "\n"
        else:
            left = job.reasoning_budget - progress.reasoning_tokens
            call = _Call()
            if left > 0:
                text = prompt + THINK_START + progress.raw_reasoning
                async for event in self._reason(job, text, left, sampling, call, progress):
                    yield event
                progress.first_token = progress.first_token or call.first_token
            progress.budget_reached = left <= 0 or call.finish_reason == "length"
            if not job.stream_reasoning and progress.unreported:
                yield self._progress(job, progress)
            progress.thinking_ended = time.monotonic()
        progress.think_block_done = True
        progress.output_tokens += 2  # <think> and </think>

    async def _reason(self, job: Job, text: str, left: int, sampling: Sampling, call: _Call, progress: _Progress):
        """The think block up to ``</think>`` or the budget: deltas, or progress every so often."""
        fresh = not progress.reasoning
        async for piece in self._complete(job, text, left, sampling, call, stop=[THINK_END]):
            progress.raw_reasoning += piece
            if fresh:  # the stream drops the whitespace that opens the reasoning, as the transformers engine's
                piece = piece.lstrip()
                fresh = not piece
            progress.reasoning_tokens += 1
            progress.reasoning += piece
            if job.stream_reasoning:
                if piece:
                    yield EngineEvent(
                        job.session_id, K.REASONING_DELTA, text=piece, reasoning_tokens=progress.reasoning_tokens
                    )
            else:
                progress.unreported.append(piece)
                if progress.reasoning_tokens - progress.reported_tokens >= self.config.progress_every:
                    yield self._progress(job, progress)
        if call.tokens_reported is not None:
            progress.reasoning_tokens += call.tokens_reported - call.tokens

    async def _answer(self, job: Job, text: str, left: int, sampling: Sampling, call: _Call, progress: _Progress):
        fresh = not progress.answer
        async for piece in self._complete(job, text, left, sampling, call, stop=None):
            progress.raw_answer += piece
            if fresh:
                piece = piece.lstrip()
                fresh = not piece
            progress.answer_tokens += 1
            if piece:
                if not progress.answer:
                    progress.first_answer = time.monotonic()
                progress.answer += piece
                yield EngineEvent(
                    job.session_id,
                    K.ANSWER_DELTA,
                    text=piece,
                    reasoning_tokens=progress.reasoning_tokens,
                    answer_tokens=progress.answer_tokens,
                )
        if call.tokens_reported is not None:
            progress.answer_tokens += call.tokens_reported - call.tokens

    def _progress(self, job: Job, progress: _Progress) -> EngineEvent:
        text = "".join(progress.unreported)
        progress.unreported.clear()
        progress.reported_tokens = progress.reasoning_tokens
        return EngineEvent(job.session_id, K.REASONING_PROGRESS, text=text, reasoning_tokens=progress.reasoning_tokens)

    async def _complete(
        self, job: Job, text: str, max_tokens: int, sampling: Sampling, call: _Call, *, stop: list[str] | None
    ) -> AsyncIterator[str]:
        """Stream one completion of ``text``: its text pieces, a chunk a token; ``call`` gets the
        finish reason and the token count (the server's, where it reports usage)."""
        extra = {"seed": sampling.seed} if sampling.seed is not None else {}
        stream = await self._client.completions.create(
            model=await self.served_model(),
            prompt=text,
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=stop,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    call.tokens_reported = chunk.usage.completion_tokens
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.text:
                    call.first_token = call.first_token or time.monotonic()
                    call.tokens += 1
                    call.text += choice.text
                    self.steps += 1
                    self.tokens_generated += 1
                    yield choice.text
                if choice.finish_reason:
                    call.finish_reason = choice.finish_reason
        finally:
            await stream.close()
        if call.finish_reason is None:
            raise EngineStreamError(
                f"the serving engine ended session {job.session_id}'s stream without a finish reason"
            )
        if call.finish_reason == "length" and call.tokens_reported is None:
            call.tokens_reported = max_tokens  # exact, where a token with no text (a control token) sent no chunk


def _finished(job: Job, progress: _Progress, call: _Call) -> EngineEvent:
    finish = call.finish_reason or "length"
    progress.output_tokens += progress.answer_tokens + (1 if finish == "stop" else 0)
    now = time.monotonic()
    started, ended = progress.started, progress.thinking_ended or progress.started
    return EngineEvent(
        job.session_id,
        K.FINISHED,
        result=GenerationResult(
            answer=progress.answer.strip(),
            usage=Usage(
                input_tokens=progress.prompt_tokens,
                reasoning_tokens=progress.reasoning_tokens,
                output_tokens=progress.output_tokens,
            ),
            budget_reached=progress.budget_reached,
            finish_reason=finish,
            reasoning_ms=(ended - started) * 1e3,
            answer_ms=(now - ended) * 1e3,
            first_answer_token_ms=((progress.first_answer or now) - started) * 1e3,
            prefill_ms=((progress.first_token or now) - started) * 1e3,
            reasoning=progress.reasoning.strip(),
        ),
    )


def _failed(job: Job, code: str, message: str) -> EngineEvent:
    return EngineEvent(job.session_id, K.FAILED, error=message, error_code=code)
