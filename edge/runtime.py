"""The edge model: greedy decoding of the student ONNX graph with a KV cache.

Needs only onnxruntime, ``tokenizers`` and numpy (no torch). One graph serves
the prefill (empty past) and each decode step; the prefill's ``features``
output is the query's feature vector, and the answer tokens' log-probabilities
give the calibrated confidence used for triage.

Everything model-specific comes from the bundle: the prompt format
(``io.prompt_template``), the stop token (``io.eos_token``), the answer
length limit (``io.max_new_tokens``) and the query's pre-processing, which is
the normaliser inside the bundle's ``tokenizer.json``.

An empty answer (the stop token first) is the model abstaining: its
confidence is 0, whatever the calibration says, so triage never keeps it.

A bundle may declare a reasoning block (``io.think_start`` and ``io.think_end``): a
student that learnt the cloud's reasoning writes ``<think>`` reasoning ``</think>``
answer on the queries it reasons on (a block that opens its output, read by
:class:`~edgecloud.shared.reasoner.thinking.ThinkTracker` as the cloud reads its own). Only the
answer is returned; a block the token limit cuts before it closes is an abstention. The confidence reads every generated
token, reasoning included: a shaky step is as telling as a shaky answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgecloud.edge.calibration import Calibration
from edgecloud.edge.cascade import CascadeModel
from edgecloud.edge.seams import AnswerModel
from edgecloud.shared.bundles.manifest import Manifest, canonical_bytes, load_manifest, verify_bundle
from edgecloud.shared.reasoner.thinking import ThinkTracker

__all__ = ["CascadeModel", "EdgeAnswer", "EdgeBundle", "EdgeModel", "ModelSlot", "load_edge_model"]

log = logging.getLogger(__name__)

#: Upper bound on a manifest's ``max_new_tokens``: the edge answers in milliseconds, not paragraphs.
MAX_NEW_TOKENS = 256


@dataclass(frozen=True, slots=True)
class EdgeAnswer:
    text: str
    """The decoded answer, special tokens removed."""
    token_logprobs: tuple[float, ...]
    """Log-probability of each generated token, end-of-turn included."""
    confidence: float
    """Calibrated probability that ``text`` is right (NaN without calibration; 0 for an empty answer)."""
    features: np.ndarray
    """float32 feature vector of the query (pooled final hidden state)."""
    input_tokens: int
    output_tokens: int
    latency_ms: float
    reasoning_tokens: int = 0
    """Tokens of the reasoning block (0 when the model answered directly)."""

    @property
    def abstained(self) -> bool:
        """The model stopped before saying anything: it has no answer (confidence 0)."""
        return not self.text


class EdgeModel:
    """A loaded student graph. Thread-safe: onnxruntime sessions allow concurrent ``run``."""

    def __init__(
        self,
        model_file: Path,
        tokenizer_file: Path,
        *,
        prompt_template: str,
        eos_token: str,
        max_new_tokens: int,
        calibration: Calibration | None = None,
        threads: int = 1,
        warmup: bool = True,
        think_start: str | None = None,
        think_end: str | None = None,
    ) -> None:
        if "{query}" not in prompt_template:
            raise ValueError("prompt_template must contain '{query}'")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS
        ):
            raise ValueError(f"max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS}, got {max_new_tokens!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.prompt_template = prompt_template
        self.calibration = calibration
        self.max_new_tokens = max_new_tokens
        self.model_file = Path(model_file)
        self.tokenizer_file = Path(tokenizer_file)
        self._past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self._output_names = [o.name for o in self.session.get_outputs()]
        eos = self.tokenizer.token_to_id(eos_token) if isinstance(eos_token, str) else None
        if eos is None:
            raise ValueError(f"{tokenizer_file}: the stop token {eos_token!r} is not in the vocabulary")
        self.eos_token = eos_token
        self.eos_id = eos
        if (think_start is None) != (think_end is None):
            raise ValueError("think_start and think_end go together")
        self.think_start, self.think_end = think_start, think_end
        self._think_ids: tuple[int, int] | None = None
        if think_start is not None and think_end is not None:
            ids = (self.tokenizer.token_to_id(think_start), self.tokenizer.token_to_id(think_end))
            if None in ids:
                raise ValueError(f"{tokenizer_file}: {think_start!r} or {think_end!r} is not in the vocabulary")
            self._think_ids = (int(ids[0]), int(ids[1]))
        if warmup:
            self.answer("1+1")

    @classmethod
    def from_bundle(
        cls, directory: Path, *, precision: str = "int8", threads: int = 1, warmup: bool = True
    ) -> EdgeModel:
        """Verify and load an edge bundle's first (or only) student; ``precision`` picks the graph
        (``int8``). :func:`load_edge_model` loads a pair's reasoner too."""
        directory = Path(directory)
        manifest: Manifest = verify_bundle(directory)
        if manifest.kind != "edge":
            raise ValueError(f"{directory} is a {manifest.kind} bundle, not an edge bundle")
        calibration = Calibration.from_dict(manifest.calibration) if manifest.calibration else None
        return cls.from_io(
            directory, manifest, manifest.io, calibration, precision=precision, threads=threads, warmup=warmup
        )

    @classmethod
    def from_io(
        cls,
        directory: Path,
        manifest: Manifest,
        io: dict,
        calibration: Calibration | None,
        *,
        precision: str = "int8",
        threads: int = 1,
        warmup: bool = True,
    ) -> EdgeModel:
        """The student an ``io`` block of a verified ``manifest`` describes (the bundle's own, or
        its ``reasoner``'s)."""
        where = f"{directory}" if io is manifest.io else f"{directory} (reasoner)"
        graphs = io.get("graphs", {})
        if precision not in graphs:
            raise ValueError(f"{where}: no {precision!r} graph (have {sorted(graphs)})")
        missing = [key for key in ("tokenizer", "prompt_template", "eos_token", "max_new_tokens") if key not in io]
        if missing:
            raise ValueError(f"{where}: the manifest's io has no {', '.join(missing)}")
        listed = {entry.path for entry in manifest.files}
        unlisted = [path for path in (graphs[precision], io["tokenizer"]) if path not in listed]
        if unlisted:  # only a listed file was checked against its sha256
            raise ValueError(f"{where}: the manifest's io names {', '.join(unlisted)}, not among its files")
        return cls(
            directory / graphs[precision],
            directory / io["tokenizer"],
            prompt_template=io["prompt_template"],
            eos_token=io["eos_token"],
            max_new_tokens=io["max_new_tokens"],
            calibration=calibration,
            threads=threads,
            warmup=warmup,
            think_start=io.get("think_start"),
            think_end=io.get("think_end"),
        )

    @property
    def decoding(self) -> dict[str, object]:
        """The bundle's decoding contract, to load another graph of the same model alike."""
        decoding: dict[str, object] = {
            "prompt_template": self.prompt_template,
            "eos_token": self.eos_token,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.think_start is not None:
            decoding.update(think_start=self.think_start, think_end=self.think_end)
        return decoding

    def _empty_past(self) -> dict[str, np.ndarray]:
        past = {}
        for spec in self._past_inputs:
            _, heads, _, head_dim = spec.shape
            past[spec.name] = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
        return past

    def answer(self, query: str) -> EdgeAnswer:
        """Greedy answer to ``query`` with its confidence and feature vector."""
        started = time.perf_counter()
        prompt_ids = self.tokenizer.encode(self.prompt_template.replace("{query}", query), add_special_tokens=False).ids
        ids = np.asarray([prompt_ids], dtype=np.int64)
        feeds: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": np.ones_like(ids), **self._empty_past()}
        generated: list[int] = []
        logprobs: list[float] = []
        features: np.ndarray | None = None
        length = ids.shape[1]
        for _ in range(self.max_new_tokens):
            outputs = dict(zip(self._output_names, self.session.run(self._output_names, feeds), strict=True))
            if features is None:
                features = outputs["features"][0].astype(np.float32, copy=True)
            logits = outputs["logits"][0, -1].astype(np.float64)
            token = int(logits.argmax())
            shifted = logits - logits.max()
            logprobs.append(float(shifted[token] - np.log(np.exp(shifted).sum())))
            generated.append(token)
            if token == self.eos_id:
                break
            length += 1
            feeds = {
                "input_ids": np.asarray([[token]], dtype=np.int64),
                "attention_mask": np.ones((1, length), dtype=np.int64),
            }
            for spec in self._past_inputs:
                feeds[spec.name] = outputs[spec.name.replace("past_key_values", "present")]
        answer_ids, reasoning_tokens = self._answer_ids(generated)
        text = self.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
        if not text:
            confidence = 0.0
        else:
            confidence = self.calibration.confidence(logprobs) if self.calibration else float("nan")
        assert features is not None
        return EdgeAnswer(
            text=text,
            token_logprobs=tuple(logprobs),
            confidence=confidence,
            features=features,
            input_tokens=len(prompt_ids),
            output_tokens=len(generated),
            latency_ms=(time.perf_counter() - started) * 1000,
            reasoning_tokens=reasoning_tokens,
        )

    def _answer_ids(self, generated: list[int]) -> tuple[list[int], int]:
        """The answer's tokens (stop token removed) and the reasoning block's length. A block that
        never closed leaves no answer: the model ran out of room while reasoning."""
        tokens = [t for t in generated if t != self.eos_id]
        if self._think_ids is None:
            return tokens, 0
        think = ThinkTracker(*self._think_ids)
        for token in tokens:
            think.push(token)
        return think.answer(tokens), think.reasoning_tokens


def load_edge_model(
    directory: Path, *, precision: str = "int8", threads: int = 1, warmup: bool = True
) -> EdgeModel | CascadeModel:
    """Verify an edge bundle and load what it serves: its student, or, when the manifest declares
    a ``reasoner``, the pair (:class:`CascadeModel`)."""
    directory = Path(directory)
    manifest: Manifest = verify_bundle(directory)
    if manifest.kind != "edge":
        raise ValueError(f"{directory} is a {manifest.kind} bundle, not an edge bundle")
    calibration = Calibration.from_dict(manifest.calibration) if manifest.calibration else None
    base = EdgeModel.from_io(
        directory, manifest, manifest.io, calibration, precision=precision, threads=threads, warmup=warmup
    )
    section = manifest.io.get("reasoner")
    if section is None:
        return base
    if "calibration" not in section:  # the manifest checked that io.reasoner is an object
        raise ValueError(f"{directory}: the manifest's io.reasoner needs its own calibration")
    reasoner = EdgeModel.from_io(
        directory,
        manifest,
        section,
        Calibration.from_dict(section["calibration"]),
        precision=precision,
        threads=threads,
        warmup=warmup,
    )
    return CascadeModel(base, reasoner)


@dataclass(frozen=True)
class EdgeBundle:
    """A loaded edge model with the identity of the bundle it came from."""

    model: AnswerModel
    manifest: Manifest
    directory: Path

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def sha256(self) -> str:
        """Digest of the canonical manifest, which pins every file of the bundle."""
        return hashlib.sha256(canonical_bytes(self.manifest)).hexdigest()

    @classmethod
    def load(cls, directory: Path, *, precision: str = "int8", threads: int = 1, warmup: bool = True) -> EdgeBundle:
        directory = Path(directory)
        model = load_edge_model(directory, precision=precision, threads=threads, warmup=warmup)
        return cls(model, load_manifest(directory), directory)


class ModelSlot:
    """The serving model, swapped atomically.

    A request takes the current bundle once (:meth:`acquire`) and uses it to
    the end, so in-flight requests finish on the old model while new ones get
    the new one; nothing fails across a swap. :meth:`swap` returns the old
    bundle, and :meth:`wait_idle` lets the caller wait until no request still
    holds it before releasing it.
    """

    def __init__(self, bundle: EdgeBundle) -> None:
        self._bundle = bundle
        self._lock = threading.Condition()
        self._holders: dict[int, int] = {}

    @property
    def current(self) -> EdgeBundle:
        return self._bundle

    @contextlib.contextmanager
    def acquire(self) -> Iterator[EdgeBundle]:
        with self._lock:
            bundle = self._bundle
            self._holders[id(bundle)] = self._holders.get(id(bundle), 0) + 1
        try:
            yield bundle
        finally:
            with self._lock:
                self._holders[id(bundle)] -= 1
                if not self._holders[id(bundle)]:
                    del self._holders[id(bundle)]
                    self._lock.notify_all()

    def swap(self, bundle: EdgeBundle) -> EdgeBundle:
        with self._lock:
            old, self._bundle = self._bundle, bundle
        log.info("model slot: %s v%d -> %s v%d", old.name, old.version, bundle.name, bundle.version)
        return old

    def wait_idle(self, bundle: EdgeBundle, timeout: float | None = None) -> bool:
        """True once no request holds ``bundle`` (False on timeout)."""
        with self._lock:
            return self._lock.wait_for(lambda: id(bundle) not in self._holders, timeout)
