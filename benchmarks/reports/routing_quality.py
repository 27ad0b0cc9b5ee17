"""The section of ``routing_quality.py``: edge-only, cloud-only and routed accuracy, and each router's APGR."""

from __future__ import annotations

from benchmarks.reports.tables import Lines, Report, num, pct, ratio, table, targets, text

APGR_TARGET = 0.9
"""The issue's target: the confidence router's APGR at least this."""

ROUTER_HEADERS = (
    "router",
    "APGR",
    "APGR / random",
    "APGR / oracle",
    "escalated for 95% of cloud accuracy",
    "escalated for PGR 0.95",
)


def render(r: Report) -> str:
    lines = [
        (
            f"{r['n']} mixed test queries (multi-step share {pct(r['multi_step_share'])}); each answered by the "
            "edge student and the cloud teacher, routers choose which answer counts."
        ),
        "",
    ]
    lines += _systems(r)
    lines += _routers(r["routers"])
    return text(lines + _targets(r))


def _systems(r: Report) -> Lines:
    """Edge only, cloud only, the calibrated threshold and the oracle: accuracy and escalation."""
    edge, cloud, cal, oracle = r["edge_only_accuracy"], r["cloud_only_accuracy"], r["calibrated"], r["oracle_point"]
    return table(
        ["", "system accuracy", "of cloud-only", "escalated"],
        [
            ("edge only", pct(edge), pct(edge / cloud if cloud else None), pct(0.0)),
            ("cloud only", pct(cloud), pct(1.0), pct(1.0)),
            (
                f"calibrated threshold ({num(cal['threshold'], 3)})",
                pct(cal["system_accuracy"]),
                pct(cal["of_cloud"]),
                pct(cal["escalation_share"]),
            ),
            (
                "oracle (escalate exactly the edge's misses)",
                pct(oracle["system_accuracy"]),
                pct(oracle["of_cloud"]),
                pct(oracle["escalation_share"]),
            ),
        ],
    )


def _routers(routers: Report) -> Lines:
    random_apgr, oracle_apgr = routers["random"]["apgr"], routers["oracle"]["apgr"]
    rows = [
        (
            name,
            num(s["apgr"], 3),
            ratio(s["apgr"] / random_apgr if random_apgr else None),
            ratio(s["apgr"] / oracle_apgr if oracle_apgr else None),
            pct(s["cpt_95_cloud_accuracy"]),
            pct(s["cpt_95_pgr"]),
        )
        for name, s in routers.items()
    ]
    return table(ROUTER_HEADERS, rows)


def _targets(r: Report) -> Lines:
    target, cal, routers = r["target"], r["calibrated"], r["routers"]
    best = target["confidence_sweep"]["best_within_cap"]
    return targets(
        [
            (
                f"{target['rule']} (at the calibrated threshold)",
                (
                    f"{pct(cal['of_cloud'])} of cloud at {pct(cal['escalation_share'])} escalated "
                    f"(cap {pct(target['max_escalation_share'])})"
                ),
                target["calibrated_met"],
            ),
            (
                "the same, best confidence threshold within the cap",
                f"{pct(best['of_cloud'])} of cloud at {pct(best['escalation_share'])} escalated",
                best["met"],
            ),
            (
                f"APGR of the confidence router >= {APGR_TARGET:g}",
                num(routers["confidence"]["apgr"], 3),
                routers["confidence"]["apgr"] >= APGR_TARGET,
            ),
        ]
    )
