"""The transformers backend of :class:`edgecloud.cloud.engine.ReasoningEngine`: a Hugging Face
causal LM decoding many sessions at once.

Continuous (iteration-level) batching: one thread owns the model and runs a
loop of decode steps over the *running batch*. Between two steps, waiting
jobs are prefilled and join the batch, and finished or cancelled ones leave
it, so a short answer never waits for a long reasoning chain. Each row keeps
its own keys and values inside one left-padded batch cache (:mod:`edgecloud.cloud.batch_cache`);
joining pads the shorter side on the left, leaving selects rows and trims columns nobody uses.

What each row does with its tokens (the thinking budget, a resumed session's past, the deltas it
streams) is :mod:`edgecloud.cloud.decoding`'s; this module owns the model, the queue and the batch.

The engine knows nothing of gRPC or sessions: it takes :class:`Job` objects and reports
:class:`EngineEvent` objects through each job's callback, on the engine thread; ``generate`` (the
seam sessions use) turns those callbacks into the job's async iterator.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from edgecloud.cloud.batch_cache import Batch, GrowingCache, merge_batches
from edgecloud.cloud.decoding import RowDecoder, emit
from edgecloud.cloud.engine import EngineConfig, EngineEvent, EngineEventKind, EventStream, Job, sampling_of
from edgecloud.shared.base.errors import ConfigError, InvalidInputError, ResourceExhaustedError
from edgecloud.shared.reasoner.session import Message, Sampling
from edgecloud.shared.reasoner.thinking import THINK_END, THINK_START

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
        """The model's own ``generation_config.json`` (:func:`~edgecloud.cloud.engine.sampling_of`)."""
        return sampling_of(getattr(self.model, "generation_config", None))

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


class TransformersEngine:
    """Owns the model and one decode thread. Thread-safe ``submit`` and ``cancel``."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.name, self.version = loaded.name, loaded.version
        self.default_sampling = loaded.default_sampling
        self.device = next(self.model.parameters()).device
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        self.rows = RowDecoder(self.tokenizer, self.config, self.default_sampling, self.max_positions)
        """What each row does with its tokens."""
        eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
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
        return len(self.rows.encode(messages, thinking=reasoning_budget > 0))

    def generate(self, job: Job) -> AsyncIterator[EngineEvent]:
        """Queue ``job`` (raising as :meth:`submit` does) and return its events as they are decoded."""
        stream = EventStream(cancel=lambda: self.cancel(job.session_id))
        self.submit(replace(job, on_event=stream.push))
        return stream

    def submit(self, job: Job) -> int:
        """Queue ``job``, whose events go to ``job.on_event`` on the decode thread; returns its queue
        position. Raises ResourceExhaustedError when the queue is full."""
        if job.on_event is None:
            raise InvalidInputError("a job submitted without a stream needs on_event")
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
                admitted = self._next_jobs(max(free, 0))
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
                    emit(row, EngineEventKind.FAILED, error=f"engine error: {exc}", error_code="ENGINE_ERROR")
                self._batch = Batch()

    def _next_jobs(self, free: int) -> list[Job]:
        """Up to ``free`` waiting jobs, interactive ones first (verification waits behind them),
        each kind in arrival order. Called holding the lock."""
        if not free or not self._waiting:
            return []
        if not any(job.verification for job in self._waiting):
            return [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
        ordered = sorted(self._waiting, key=lambda job: job.verification)  # stable: arrival order kept
        self._waiting = collections.deque(ordered[free:])
        return ordered[:free]

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill ``jobs`` together (left padded) and merge them into the running batch."""
        now = time.monotonic()
        rows, encoded = [], []
        for job in jobs:
            row, ids = self.rows.new_row(job, now)
            refusal = self.rows.refusal(row, len(ids))
            if refusal:
                emit(row, EngineEventKind.FAILED, error=refusal[1], error_code=refusal[0])
                continue
            emit(row, EngineEventKind.STARTED)
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
            tokens[i] = self.rows.advance(row, tokens[i], int(batch.positions[i]))
        finished = [row for row in batch.rows if row.done]
        for row in finished:
            self.rows.finish(row)
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
