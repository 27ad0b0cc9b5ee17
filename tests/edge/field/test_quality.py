"""Field counts per bundle version from real verdicts of the shipped student: what triage kept,
escalated and abstained on among ``auto`` queries the model read, and nothing else."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgecloud.edge.field.quality import FieldCounter, field_regression
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.pipeline.verdict import LocalVerdict, judge, unread
from edgecloud.edge.runtime import EdgeBundle
from edgecloud.edge.triage import Requested, TriagePolicy
from edgecloud.shared.fleetlink.quality import MAX_VERSIONS, FieldQuality


@pytest.fixture(scope="module")
def bundle(shipped_base_models: Path) -> EdgeBundle:
    return EdgeBundle.load(shipped_base_models / "edge-student", threads=1)


def verdict(
    bundle: EdgeBundle, query: str, requested: Requested = Requested.AUTO, *, healthy: bool = True
) -> LocalVerdict:
    policy = TriagePolicy.from_calibration(bundle.model.calibration)
    return judge(bundle, bundle.model.answer(query), policy, requested=requested, cloud_healthy=healthy)


def test_auto_queries_the_model_read_are_counted_by_what_triage_did(bundle: EdgeBundle) -> None:
    counter = FieldCounter(EdgeMetrics())
    simple, hard = verdict(bundle, "3 + 4"), verdict(bundle, "12 * 3 - 7 + 40")
    assert simple.decision.reason == "confident" and hard.answer.abstained  # what the shipped student does
    for v in (simple, simple, hard, verdict(bundle, "3 + 4", healthy=False)):  # kept even with the cloud down
        counter.observe(v, Requested.AUTO)
    counter.observe(verdict(bundle, "3 + 4", Requested.CLOUD), Requested.CLOUD)  # the caller's choice
    counter.observe(unread(bundle, TriagePolicy(threshold=0.5), requested=Requested.AUTO, cloud_healthy=True),
                    Requested.AUTO)  # a conversation the model did not read  # fmt: skip
    counter.checked(bundle, agreed=True)
    counter.checked(bundle, agreed=False)
    counter.shed(bundle)
    q = counter.of(bundle.name, bundle.version)
    assert (q.read, q.kept, q.escalated, q.abstained, q.checks, q.agreed, q.shed) == (4, 3, 1, 1, 2, 1, 1)
    samples = counter.metrics.registry.get_sample_value
    assert samples("edgecloud_edge_field_queries_total", {"version": str(bundle.version), "outcome": "kept"}) == 3
    assert samples("edgecloud_edge_shadow_checks_total", {"version": str(bundle.version), "outcome": "shed"}) == 1


def test_each_version_counts_apart_and_only_the_newest_are_kept(bundle: EdgeBundle) -> None:
    counter = FieldCounter()
    simple = verdict(bundle, "3 + 4")
    for version in range(1, MAX_VERSIONS + 3):
        manifest = dataclasses.replace(bundle.manifest, version=version)
        other = EdgeBundle(bundle.model, manifest, bundle.directory)
        counter.observe(dataclasses.replace(simple, bundle=other), Requested.AUTO)
    versions = [q.model_version for q in counter.snapshot()]
    assert versions == list(range(3, MAX_VERSIONS + 3))
    assert counter.of(bundle.name, 1).read == 0 and counter.of(bundle.name, 3).read == 1


@pytest.mark.parametrize(
    ("new", "before", "rolled_back"),
    [
        ((15, 20), (40, 40), True),  # 75% at most ~89%, against 100%
        ((19, 20), (40, 40), False),  # 95%: its interval reaches 99%
        ((5, 10), (40, 40), False),  # too few checks of the new model to judge it
        ((15, 20), (10, 10), False),  # too few of the old one
        ((0, 20), (10, 20), True),  # the old one was poor; the new one is clearly worse
        ((18, 20), (18, 20), False),
    ],
)
def test_the_watch_rolls_back_only_on_clearly_worse_agreement(
    new: tuple[int, int], before: tuple[int, int], rolled_back: bool
) -> None:
    reason = field_regression(
        FieldQuality("m", 2, agreed=new[0], checks=new[1]),
        FieldQuality("m", 1, agreed=before[0], checks=before[1]),
        min_checks=20,
        max_agreement_drop=2.0,
    )
    assert bool(reason) is rolled_back, reason
    if rolled_back:
        assert reason.startswith(f"the cloud agreed with {new[0]} of {new[1]} checked answers of v2")
