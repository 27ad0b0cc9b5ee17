"""``edgecloud models recalibrate``: the same student with its triage refitted on field records.

A student's triage calibration (Platt weights and a threshold, :mod:`edgecloud.edge.calibration`)
is fitted at build time on the task's validation queries. The field's traffic is not that: users
ask other things, in other proportions. The cloud's escalation logs hold what the field says about
it: every query the devices escalated, and a sample of the answers they kept (shadow checks), each
with the cloud's answer. This refits only the calibration on them and ships the bundle again,
weights untouched, as the next version: no training, minutes on a CPU.

How the records become evidence:

- Only records of this bundle (its name and version) that the edge triaged (they carry its view),
  completed, with an answer, of one query (not a conversation), one per request id.
- The bundle's model answers each query again, so the signals (``w_sum``/``w_min`` inputs,
  :func:`~edgecloud.edge.calibration.confidence_signals`) are its own; an answer is right when it
  matches the cloud's by the bundle's rule (``io.answer_match``).
- The records are not the traffic: the devices escalated everything they were unsure of, but
  sent only ``shadow_share`` of what they kept. A shadow check counts as ``1 / shadow_share``
  answers (pass the share the fleet really checked: ``checks / kept`` in ``GET /v1/quality``);
  the threshold's precision bound rests on the effective sample size, never on the weights' sum.
- A pair (``io.reasoner``) is refitted stage by stage, as ``models build`` fits it: the base on
  every record, the reasoner on the records the refitted base hands off.

Refused (ConfigError, nothing written): too few usable records or shadow checks (without checks
nothing is known about the answers kept), or no threshold that reaches the target precision.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecloud.edge.cascade import CascadeModel
from edgecloud.edge.runtime import EdgeModel, load_edge_model
from edgecloud.modelkit.arithmetic.build import swap_into_place
from edgecloud.modelkit.calibrate import TriageFit, fit_triage
from edgecloud.modelkit.loop.base_task import answer_rule
from edgecloud.modelkit.loop.training_set import is_conversation
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.answers import answers_match
from edgecloud.shared.bundles.manifest import Manifest, copy_bundle, verify_bundle
from edgecloud.shared.bundles.signing import expiry_in_days, load_private_key, sign_bundle
from edgecloud.shared.escalations.records import Escalation, ReadReport, iter_escalations

__all__ = ["RecalibrateConfig", "field_records", "recalibrate_bundle"]

log = logging.getLogger(__name__)

BUNDLE_DIR = "edge-student"


@dataclass(frozen=True, kw_only=True)
class RecalibrateConfig:
    logs: tuple[Path, ...]
    """The cloud's escalation logs (JSONL)."""
    bundle: Path = Path("models/edge-student")
    out: Path = Path("models/recalibrated")
    """The new bundle goes to ``out/edge-student``."""
    version: int | None = None
    """Default: the bundle's + 1."""
    shadow_share: float = 0.02
    """The share of kept answers the devices had checked (the daemon's default)."""
    target_precision: float | None = None
    """Default: the bundle's own."""
    confidence_level: float = 0.95
    min_records: int = 200
    min_checks: int = 20
    """Shadow checks needed: without them nothing is known of the answers kept. 0 accepts logs without any,
    right only where the devices kept (almost) nothing, so that their escalations are the whole traffic."""
    key: Path | None = None
    expires_in_days: float | None = None
    threads: int = 2

    def __post_init__(self) -> None:
        if not self.logs:
            raise ConfigError("recalibrate needs at least one escalation log")
        if not 0 < self.shadow_share <= 1:
            raise ConfigError(f"shadow_share must be in (0, 1], got {self.shadow_share}")
        if self.target_precision is not None and not 0 < self.target_precision < 1:
            raise ConfigError(f"target_precision must be in (0, 1), got {self.target_precision}")
        if not 0.5 <= self.confidence_level < 1:
            raise ConfigError(f"confidence_level must be in [0.5, 1), got {self.confidence_level}")
        if self.min_records < 1 or self.min_checks < 0 or self.threads < 1:
            raise ConfigError("min_records and threads must be >= 1, min_checks >= 0")
        if self.version is not None and self.version < 1:
            raise ConfigError(f"version must be >= 1, got {self.version}")
        if self.expires_in_days is not None and not self.expires_in_days > 0:
            raise ConfigError(f"expires_in_days must be > 0, got {self.expires_in_days}")


def field_records(logs: Sequence[Path], manifest: Manifest) -> tuple[list[Escalation], Counter[str], ReadReport]:
    """The records of ``manifest``'s bundle that say something about its triage, and why the others were left out."""
    report = ReadReport()
    dropped: Counter[str] = Counter()
    chosen: dict[str, Escalation] = {}
    for record in iter_escalations(list(logs), report):
        if record.producer_name != manifest.name or record.producer_version != manifest.version:
            dropped["another bundle or version answered it"] += 1
        elif record.status != "completed" or not record.answer.strip():
            dropped["not completed, or no answer"] += 1
        elif record.edge is None:
            dropped["not triaged by the edge (no edge view)"] += 1
        elif is_conversation(record):
            dropped["a conversation (the student reads one query)"] += 1
        elif record.finish_reason == "length":
            dropped["the cloud's answer was cut at its token limit"] += 1
        else:
            if record.request_id in chosen:
                dropped["duplicate request id"] += 1
            chosen[record.request_id] = record
    return list(chosen.values()), dropped, report


@dataclass(frozen=True)
class _Stage:
    """One stage's refit: the new fit, and what the old calibration made of the same records."""

    fit: TriageFit
    weights: np.ndarray
    before_threshold: float
    before_confidence: np.ndarray
    checks: int

    def validation(self, shadow_share: float) -> dict[str, float | None]:
        """The calibration's ``validation``: what the refit gives on the field records it was fitted on
        (weighted as the traffic they stand for)."""
        w, at = self.weights, self.fit.at
        return {
            "n": float(len(w)),
            "shadow_checks": float(self.checks),
            "shadow_share": shadow_share,
            "accuracy": _weighted_mean(self.fit.correct, w),
            "abstained": _weighted_mean(1 - self.fit.answered, w),
            "precision_kept": at["precision"],
            **({"precision_lower_bound": at["precision_lower_bound"]} if "precision_lower_bound" in at else {}),
            "kept_share": at["coverage"],
        }

    def summary(self) -> dict[str, object]:
        w = self.weights
        old_kept = self.before_confidence >= self.before_threshold
        return {
            "records": len(w),
            "shadow_checks": self.checks,
            "effective_evidence": round(float(w.sum() ** 2 / (w**2).sum()), 1),
            "threshold": {"before": self.before_threshold, "after": self.fit.threshold},
            "field_precision_kept": {
                "before": _weighted_mean(self.fit.correct, w * old_kept),
                "after": self.fit.at["precision"],
            },
            "precision_lower_bound_after": self.fit.at.get("precision_lower_bound"),
            "field_kept_share": {"before": _weighted_mean(old_kept, w), "after": self.fit.at["coverage"]},
        }


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float | None:
    total = float(weights.sum())
    return float((weights * values).sum() / total) if total > 0 else None


def _fit_stage(
    name: str,
    model: EdgeModel,
    records: list[Escalation],
    weights: np.ndarray,
    target: float,
    config: RecalibrateConfig,
    rule: str,
) -> _Stage:
    """Platt weights and threshold for ``model`` (one stage) on ``records``, each counted ``weights`` times."""
    answers = [model.answer(r.query) for r in records]
    correct = [not a.abstained and answers_match(rule, a.text, r.answer) for a, r in zip(answers, records, strict=True)]
    fit = fit_triage(
        answers, correct, target_precision=target, confidence_level=config.confidence_level, weights=weights
    )
    if fit.threshold >= 1.0:
        raise ConfigError(
            f"{name}: no threshold keeps answers at {target:.1%} precision (as a {config.confidence_level:.0%} lower "
            f"bound) on its {len(records)} field records: it would keep nothing; nothing was written"
        )
    before = model.calibration.threshold if model.calibration is not None else 1.0
    return _Stage(
        fit=fit,
        weights=weights,
        before_threshold=before,
        before_confidence=np.asarray([a.confidence for a in answers], dtype=np.float64),
        checks=sum(r.kind == "shadow_check" for r in records),
    )


def _stages(
    model: EdgeModel | CascadeModel, records: list[Escalation], config: RecalibrateConfig, target: float, rule: str
) -> dict[str, _Stage]:
    weights = np.asarray([1 / config.shadow_share if r.kind == "shadow_check" else 1.0 for r in records])
    if not isinstance(model, CascadeModel):
        return {"model": _fit_stage("the model", model, records, weights, target, config, rule)}
    base = _fit_stage("the base stage", model.base, records, weights, target, config, rule)
    handed = ~base.fit.kept
    if not handed.any():
        raise ConfigError("the refitted base keeps every field record: nothing is left to calibrate its reasoner on")
    rest = [r for r, h in zip(records, handed, strict=True) if h]
    log.info("the refitted base hands %d of %d field records to the reasoner", len(rest), len(records))
    return {
        "base": base,
        "reasoner": _fit_stage("the reasoner stage", model.reasoner, rest, weights[handed], target, config, rule),
    }


def _check_evidence(records: list[Escalation], config: RecalibrateConfig, dropped: Counter[str]) -> None:
    checks = sum(r.kind == "shadow_check" for r in records)
    if len(records) < config.min_records or checks < config.min_checks:
        raise ConfigError(
            f"{len(records)} usable field records with {checks} shadow checks; recalibrate needs at least "
            f"{config.min_records} records and {config.min_checks} checks (without checks nothing is known about the "
            f"answers the devices kept). Left out: {dict(dropped) or 'none'}"
        )


def _write(
    config: RecalibrateConfig, manifest: Manifest, stages: dict[str, _Stage], target: float, version: int
) -> tuple[Path, str | None]:
    """The bundle again, its calibration(s) replaced, as ``version``; signed with a key."""
    io = dict(manifest.io)
    first = stages.get("model") or stages["base"]
    calibration = first.fit.calibration(target, first.validation(config.shadow_share))
    if "reasoner" in stages:
        reasoner = stages["reasoner"]
        fitted = reasoner.fit.calibration(target, reasoner.validation(config.shadow_share))
        io["reasoner"] = {**io["reasoner"], "calibration": fitted.to_dict()}
    metadata = {
        "recalibrated_from": {"name": manifest.name, "version": manifest.version},
        "recalibration": {name: stage.summary() for name, stage in stages.items()},
    }
    expires_at = None if config.expires_in_days is None else expiry_in_days(config.expires_in_days)
    config.out.mkdir(parents=True, exist_ok=True)
    staging = config.out / f".staging-recalibrate-{time.time_ns()}"
    try:
        copy_bundle(config.bundle, staging / BUNDLE_DIR, version=version, metadata=metadata, io=io,
                    calibration=calibration.to_dict())  # fmt: skip
        if config.key is not None:
            sign_bundle(staging / BUNDLE_DIR, load_private_key(config.key), expires_at=expires_at)
        verify_bundle(staging / BUNDLE_DIR)
        swap_into_place(staging, config.out, (BUNDLE_DIR,))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return config.out / BUNDLE_DIR, expires_at


def recalibrate_bundle(config: RecalibrateConfig) -> dict[str, object]:
    """Refit the triage calibration of ``config.bundle`` on field records and write it as the next
    version; returns a summary. ConfigError (nothing written) on too little evidence."""
    started = time.monotonic()
    manifest = verify_bundle(config.bundle)
    if manifest.kind != "edge":
        raise ConfigError(f"{config.bundle} is a {manifest.kind} bundle, not an edge bundle")
    version = config.version or manifest.version + 1
    if version <= manifest.version:
        raise ConfigError(f"version {version} is not newer than the bundle's {manifest.version}")
    records, dropped, report = field_records(config.logs, manifest)
    log.info("%d field records of %s@%d (left out: %s)", len(records), manifest.name, manifest.version, dict(dropped))
    _check_evidence(records, config, dropped)
    model = load_edge_model(config.bundle, threads=config.threads, warmup=False)
    target = config.target_precision
    if target is None:
        own = model.calibration.target_precision if model.calibration is not None else math.nan
        if not 0 < own < 1:
            raise ConfigError(f"{config.bundle}: no target precision in its calibration; pass --target-precision")
        target = own
    stages = _stages(model, records, config, target, answer_rule(manifest))
    bundle, expires_at = _write(config, manifest, stages, target, version)
    return {
        "bundle": str(bundle),
        "name": manifest.name,
        "version": version,
        "recalibrated_from": manifest.version,
        "signed": config.key is not None,
        "expires_at": expires_at,
        "target_precision": target,
        "shadow_share": config.shadow_share,
        "records": {
            "used": len(records),
            "read": report.read,
            "left_out": dict(dropped),
            "unreadable": dict(report.skipped),
        },
        "stages": {name: stage.summary() for name, stage in stages.items()},
        "seconds": round(time.monotonic() - started, 1),
    }
