"""The transformers backend of :class:`edgecloud.cloud.engine.ReasoningEngine`: a Hugging Face
causal LM decoding many sessions at once.

Continuous (iteration-level) batching: one thread owns the model and runs a
loop of decode steps over the *running batch*. Between two steps, waiting
jobs are prefilled and join the batch, and finished or cancelled ones leave
it, so a short answer never waits for a long reasoning chain. Each row keeps
its own keys and values inside one left-padded batch cache (:mod:`edgecloud.cloud.batch_cache`);
joining pads the shorter side on the left, leaving selects rows and trims columns nobody uses.

The thinking budget is enforced here, token by token: once a row has spent
its budget of reasoning tokens (the tokens strictly between ``<think>`` and
``</think>``), ``</think>`` is forced as its next token and it goes on to the
answer. An end token inside the think block is replaced by ``</think>`` too,
so an answer always comes. Each row's :class:`~edgecloud.shared.reasoner.thinking.ThinkTracker`
decides both and counts the reasoning; the engine streams what it says each token was.

A job that continues a session cut by a restart (``Job.resume``) is prefilled with its prompt,
``<think>`` and the reasoning so far and, once the answer had begun, ``</think>`` and the answer so
far; its counts start where the session's stopped, and it reports only the text that follows.

The engine knows nothing of gRPC or sessions: it takes :class:`Job` objects
and reports :class:`EngineEvent` objects through each job's callback, on the
engine thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from edgecloud.cloud.batch_cache import Batch, GrowingCache, merge_batches
from edgecloud.cloud.engine import EngineConfig, EngineEvent, EngineEventKind, GenerationResult, Job
from edgecloud.shared.base.errors import ConfigError, InvalidInputError, ResourceExhaustedError
from edgecloud.shared.reasoner.session import Message, Sampling, Usage
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START, Phase, Piece, ThinkTracker, strip_reasoning

__all__ = ["LoadedModel", "TransformersEngine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    version: int

    @property
    def default_sampling(self) -> Sampling:
        """The model's own ``generation_config.json``: Qwen3's asks for temperature 0.6 and top-p
        0.95 in thinking mode (greedy repeats itself); a config that does not sample is greedy."""
        config = getattr(self.model, "generation_config", None)
        if config is None or not getattr(config, "do_sample", False):
            return Sampling(temperature=0.0, top_p=1.0)
        temperature = float(getattr(config, "temperature", None) or 1.0)
        top_p = float(getattr(config, "top_p", None) or 1.0)
        return Sampling(temperature=min(max(temperature, 0.0), 2.0), top_p=min(max(top_p, 1e-6), 1.0))

    @classmethod
    def from_dir(cls, directory: Path, *, device: str = "auto", name: str = "", version: int = 0) -> LoadedModel:
        """Load a causal LM with a ``<think>`` chat template, the one path for demo and real models."""
        if not (directory / "config.json").is_file():
            raise ConfigError(f"{directory} is not a Hugging Face model directory (no config.json)")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        for token in (THINK_START, THINK_END):
            if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
                raise ConfigError(f"{directory}: the tokenizer has no {token} token; a thinking model is required")
        if not tokenizer.chat_template:
            raise ConfigError(f"{directory}: the tokenizer has no chat template")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype).to(device).eval()
        return cls(model, tokenizer, name or directory.name, version)


class _Detokenizer:
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


class _Sampler:
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


def chat_messages(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    """The conversation as a chat template takes it, with the think blocks of earlier assistant
    turns stripped (as Qwen3's own template does): a model never reads its old hidden reasoning."""
    return [
        {"role": m.role, "content": strip_reasoning(m.content) if m.role == "assistant" else m.content}
        for m in messages
    ]


@dataclass
class _Row:
    job: Job
    prompt_tokens: int
    think: ThinkTracker
    """The think block: its phase, the reasoning tokens spent and whether the budget forced its close."""
    started: float
    reasoning: _Detokenizer
    answer: _Detokenizer
    sampler: _Sampler
    output_tokens: int = 0
    answer_tokens: int = 0
    reported_progress: int = 0
    thinking_ended: float | None = None
    first_answer: float | None = None
    first_token: float | None = None
    finish_reason: str = ""
    done: bool = False


class TransformersEngine:
    """Owns the model and one decode thread. Thread-safe ``submit`` and ``cancel``."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.name, self.version = loaded.name, loaded.version
        self.default_sampling = loaded.default_sampling
        self.device = next(self.model.parameters()).device
        ids = self.tokenizer.convert_tokens_to_ids
        self.think_start, self.think_end = ids(THINK_START), ids(THINK_END)
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        self._attention = getattr(self.model.config, "_attn_implementation", None)
        self._waiting: collections.deque[Job] = collections.deque()
        self._cancelled: set[str] = set()
        self._cv = threading.Condition()
        self._batch = Batch()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.tokens_generated = 0

    # -- public, any thread ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgecloud-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def count_prompt_tokens(self, messages: tuple[Message, ...], reasoning_budget: int) -> int:
        return len(self._encode(messages, thinking=reasoning_budget > 0))

    def submit(self, job: Job) -> int:
        """Queue ``job``; returns its queue position. Raises ResourceExhaustedError when the queue is full."""
        if job.reasoning_budget < 0 or job.max_output_tokens < 1:
            raise InvalidInputError("reasoning_budget must be >= 0 and max_output_tokens >= 1")
        with self._cv:
            if len(self._waiting) >= self.config.max_queue:
                raise ResourceExhaustedError(f"the engine queue is full ({self.config.max_queue} waiting); retry later")
            self._waiting.append(job)
            self._cv.notify_all()
            return len(self._waiting) + len(self._batch.rows)

    def cancel(self, session_id: str) -> None:
        """Drop the job at the next step boundary, whether it waits or runs. No event follows."""
        with self._cv:
            self._cancelled.add(session_id)
            self._cv.notify_all()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._batch.rows)

    # -- the decode thread ------------------------------------------------------------

    def _run(self) -> None:
        if self.device.type == "cpu" and self.config.threads:
            torch.set_num_threads(self.config.threads)
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._batch.rows and not self._cancelled:
                    self._cv.wait()
                if self._stopping:
                    return
                cancelled, self._cancelled = self._cancelled, set()
                if cancelled:
                    self._waiting = collections.deque(j for j in self._waiting if j.session_id not in cancelled)
                free = self.config.max_batch - sum(r.job.session_id not in cancelled for r in self._batch.rows)
                admitted = [self._waiting.popleft() for _ in range(min(max(free, 0), len(self._waiting)))]
            try:
                with torch.inference_mode():
                    if cancelled:
                        self._keep([i for i, r in enumerate(self._batch.rows) if r.job.session_id not in cancelled])
                    if admitted:
                        self._admit(admitted)
                    if self._batch.rows:
                        self._step()
            except Exception as exc:
                log.exception("engine step failed; failing %d running sessions", len(self._batch.rows))
                for row in self._batch.rows:
                    self._emit(row, EngineEventKind.FAILED, error=f"engine error: {exc}", error_code="ENGINE_ERROR")
                self._batch = Batch()

    def _encode(self, messages: tuple[Message, ...], *, thinking: bool) -> list[int]:
        prompt = self.tokenizer.apply_chat_template(
            chat_messages(messages), tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _resolve(self, sampling: Sampling) -> Sampling:
        default = self.default_sampling
        return Sampling(
            temperature=default.temperature if sampling.temperature is None else sampling.temperature,
            top_p=default.top_p if sampling.top_p is None else sampling.top_p,
            seed=sampling.seed,
        )

    def _emit(self, row: _Row, kind: EngineEventKind, **fields) -> None:
        try:
            row.job.on_event(EngineEvent(row.job.session_id, kind, **fields))
        except Exception:
            log.exception("event listener of session %s failed", row.job.session_id)

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill ``jobs`` together (left padded) and merge them into the running batch."""
        now = time.monotonic()
        rows, encoded = [], []
        for job in jobs:
            prompt = self._encode(job.conversation, thinking=job.reasoning_budget > 0)
            row = _Row(
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
                _Detokenizer(self.tokenizer, lstrip=True),
                _Detokenizer(self.tokenizer, lstrip=True),
                _Sampler(self._resolve(job.sampling)),
            )
            ids = prompt + self._resume(row) if job.resume is not None else prompt
            refusal = self._refusal(row, len(ids))
            if refusal:
                self._emit(row, EngineEventKind.FAILED, error=refusal[1], error_code=refusal[0])
                continue
            self._emit(row, EngineEventKind.STARTED)
            rows.append(row)
            encoded.append(ids)
        if not rows:
            return
        width = max(map(len, encoded))
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = GrowingCache()
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        new = Batch(
            rows, cache, mask.to(self.device), torch.tensor([len(e) for e in encoded], device=self.device), logits
        )
        self._batch = new if not self._batch.rows else merge_batches(self._batch, new)

    def _refusal(self, row: _Row, length: int) -> tuple[str, str] | None:
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

    def _resume(self, row: _Row) -> list[int]:
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

    def _encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _keep(self, indices: list[int]) -> None:
        batch = self._batch
        if len(indices) == len(batch.rows):
            return
        if not indices:
            self._batch = Batch()
            return
        index = torch.tensor(indices, device=self.device)
        mask = batch.mask[index]
        start = int(mask.any(0).int().argmax())  # the first column some row still uses
        layers = [(l.keys[index, :, start:], l.values[index, :, start:]) for l in batch.cache.layers]
        self._batch = Batch(
            [batch.rows[i] for i in indices],
            GrowingCache(layers),
            mask[:, start:],
            batch.positions[index],
            batch.next_logits[index],
        )

    def _step(self) -> None:
        batch = self._batch
        tokens = batch.next_logits.argmax(-1).tolist()
        for i, row in enumerate(batch.rows):
            if not row.sampler.greedy:
                tokens[i] = row.sampler.pick(batch.next_logits[i])
            tokens[i] = self._advance(row, tokens[i], int(batch.positions[i]))
        finished = [row for row in batch.rows if row.done]
        for row in finished:
            self._finish(row)
        self.steps += 1
        self.tokens_generated += len(batch.rows)
        if finished:
            keep = [i for i, row in enumerate(batch.rows) if not row.done]
            tokens = [tokens[i] for i in keep]
            self._keep(keep)
            batch = self._batch
            if not batch.rows:
                return
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        batch.next_logits = self.model(
            input_ids=torch.tensor(tokens, device=self.device)[:, None],
            attention_mask=self._decode_mask(batch.mask),
            position_ids=batch.positions[:, None],
            past_key_values=batch.cache,
            use_cache=True,
        ).logits[:, -1]
        batch.positions = batch.positions + 1

    def _decode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The attention mask of a one-token decode step.

        With SDPA, hand the model the 4-D boolean mask directly: a single query
        token needs no causal part, and transformers' own mask builder (vmap
        over the batch) cost a sixth of a step on a batch of 16.
        """
        if self._attention == "sdpa":
            return mask.bool()[:, None, None, :]
        return mask

    def _advance(self, row: _Row, token: int, position: int) -> int:
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
                    self._emit(
                        row, EngineEventKind.REASONING_DELTA, text=delta, reasoning_tokens=row.think.reasoning_tokens
                    )
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
            self._emit(
                row,
                EngineEventKind.ANSWER_DELTA,
                text=delta,
                reasoning_tokens=row.think.reasoning_tokens,
                answer_tokens=row.answer_tokens,
            )
        if row.answer_tokens >= job.max_output_tokens or out_of_room:
            row.done, row.finish_reason = True, "length"
        return token

    def _report_progress(self, row: _Row) -> None:
        """A progress count for a session that hides its reasoning, with the hidden text since the
        last one: the session keeps it, so a restart can continue this reasoning."""
        row.reported_progress = row.think.reasoning_tokens
        text = row.reasoning.take()
        self._emit(row, EngineEventKind.REASONING_PROGRESS, text=text, reasoning_tokens=row.think.reasoning_tokens)

    def _finish(self, row: _Row) -> None:
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
        self._emit(row, EngineEventKind.FINISHED, result=result)
