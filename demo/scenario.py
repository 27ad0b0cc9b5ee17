"""The demo's script: start the stack, send the traffic, roll out a new edge model
midway, crash and restart the cloud, then report.

The two disruptions are triggered by progress (share of queries answered), not by
wall time, so the story is the same on a fast or a slow machine: the rollout starts
at ``rollout_at``; the cloud is killed at ``outage_at`` once the rollout has ended,
and started again ``outage_s`` seconds later.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import httpx
from tqdm import tqdm

from edgecloud.demo.field_quality import gate_line
from edgecloud.demo.report import build_report, check_invariants, format_report, plot, route_counts
from edgecloud.demo.stack import Stack, StackConfig
from edgecloud.demo.traffic import QueryRecord, Sampler, Traffic, metric_values
from edgecloud.demo.workloads import TASKS, AnswerCheck, DemoQuery, DemoTask
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.manifest import copy_bundle, load_manifest
from edgecloud.shared.bundles.signing import load_private_key, sign_bundle

__all__ = ["DemoConfig", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    out: Path
    queries: int = 1000
    concurrency: int = 12
    rollout_at: float = 0.25
    outage_at: float = 0.55
    outage_s: float = 8.0
    outage_share: float = 0.12
    """Share of the queries sent while the cloud is down (at least 30)."""
    improve_steps: int = 40
    """Fine-tuning steps of the ``models improve`` run that builds the version rolled out midway."""
    improve_timeout_s: float = 240.0
    hold_rate: float = 4.0
    """Queries a second the clients send while they wait for the rollout past ``outage_at``: the
    rollout, its quality gate above all, needs traffic, and the outage must not start before it ends."""
    QUALITY: ClassVar[dict[str, float]] = {
        "min_shadow_checks": 10,
        "max_agreement_drop": 5.0,
        "max_escalation_rise": 10.0,
    }
    quality: dict[str, float] = field(default_factory=lambda: dict(DemoConfig.QUALITY))
    """The rollout's quality gate (``POST /v1/rollouts`` ``quality``): a wave counts once its devices
    made this many shadow checks of the new version, within these limits against the old one."""
    task: DemoTask = TASKS["arithmetic"]
    stack: StackConfig | None = None

    @property
    def outage_queries(self) -> int:
        return max(30, round(self.outage_share * self.queries))

    @property
    def hold_until(self) -> int:
        """Queries done past which the clients only trickle while the rollout runs: what is left is the
        outage's quota and a tenth of the run for the recovery."""
        return max(0, self.queries - self.outage_queries - self.queries // 10)

    def __post_init__(self) -> None:
        if self.queries < 50:
            raise ConfigError("the demo needs at least 50 queries to show its phases")
        if not 0 < self.rollout_at < self.outage_at < 1:
            raise ConfigError("need 0 < rollout_at < outage_at < 1")
        if self.concurrency < 1 or self.outage_s <= 0 or not self.hold_rate > 0:
            raise ConfigError("concurrency >= 1, outage_s > 0 and hold_rate > 0 required")


def release_bundle(source: Path, work: Path, version: int, key: Path) -> Path:
    """``source`` re-versioned to ``version``, signed with ``key``, packed as a .tar.gz."""
    directory = work / f"{source.name}-v{version}"
    copy_bundle(source, directory, version=version, metadata={"released_by": "edgecloud demo"})
    sign_bundle(directory, load_private_key(key))
    archive = work / f"{directory.name}.tar.gz"
    pack_bundle(directory, archive)
    return archive


class _Run:
    def __init__(self, config: DemoConfig, stack: Stack) -> None:
        self.config = config
        self.stack = stack
        self.events: list[dict[str, Any]] = []
        self.phase = "steady"
        self.done = 0
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.bar: tqdm | None = None
        self.counts: dict[str, int] = {}
        self.swap: dict[str, Any] = {}
        self.rollout_finished = threading.Event()
        self.cloud_back = threading.Event()
        self.errors: list[str] = []
        self.outage_sent = 0
        self.next_send = 0.0
        """When the next client may send while the clients are held back for the rollout (monotonic time)."""
        source = load_manifest(stack.config.models / "edge-student")
        self.bundle_name, self.from_version, self.to_version = source.name, source.version, source.version + 1

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        t = round(self.clock(), 1)
        self.events.append({"t": t, "event": text})
        (self.bar.write if self.bar is not None else print)(f"[{t:6.1f} s] {text}")

    def on_done(self, record: QueryRecord) -> None:
        with self.lock:
            self.done += 1
            key = (
                "failed"
                if record.failed
                else "outbox"
                if record.status == "accepted"
                else ("degraded" if record.degraded else record.route)
            )
            self.counts[key] = self.counts.get(key, 0) + 1
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(
                    f"{self.phase} | " + " ".join(f"{k} {v}" for k, v in sorted(self.counts.items())), refresh=False
                )

    # -- the rollout -------------------------------------------------------------------

    def rollout(self) -> None:
        try:
            self._rollout()
        except Exception as exc:
            log.exception("the rollout step failed")
            self.errors.append(f"rollout: {exc}")
            self.swap.setdefault("status", f"error: {exc}")
        finally:
            self.rollout_finished.set()

    def _improved_release(self) -> Path | None:
        """``edgecloud models improve`` on the cloud's escalations so far: the next student, signed
        and packed; None (said in an event) when the gate refuses it or the command fails."""
        stack, c = self.stack, self.config
        work = stack.work / "release"
        work.mkdir(parents=True, exist_ok=True)
        snapshot = work / "escalations-so-far.jsonl"
        source = stack.work / "escalations.jsonl"
        shutil.copyfile(source, snapshot) if source.exists() else snapshot.write_text("")
        records = sum(1 for line in snapshot.read_text().splitlines() if line.strip())
        self.event(f"models improve: training v{self.to_version} on the {records} escalations so far")
        out = work / "improved"
        data: list[str] = []
        if c.task.write_data is not None:
            c.task.write_data(work / "data")
            data = ["--data", str(work / "data")]
        status, log_path = stack.run_command(
            "improve",
            [
                *("models", "improve", str(snapshot), "--bundle", str(stack.config.models / "edge-student")),
                *("--out", str(out), "--version", str(self.to_version), "--key", str(stack.key)),
                *("--steps", str(c.improve_steps), "--threads", "1", *data, *c.task.improve_args),
            ],
            timeout=c.improve_timeout_s,
        )
        text = log_path.read_text(errors="replace")
        tail = text.strip().splitlines()[-1:] or [""]
        self.swap["improve"] = {"records": records, "exit": status, "log": str(log_path)}
        if status != 0:
            self.event(f"models improve exited {status} ({tail[0][:160]}); rolling out a re-export instead")
            return None
        summary = json.loads(text[text.rindex("\n{") :])
        self.swap["improve"].update(
            used=summary["records_used"], seconds=round(summary["seconds"], 1), gate=summary["gate"]["passed"]
        )
        self.event(
            f"models improve: v{self.to_version} from {summary['records_used']} escalations in "
            f"{summary['seconds']:.0f} s, gate passed"
        )
        archive = work / f"edge-student-v{self.to_version}-improved.tar.gz"
        pack_bundle(out / "edge-student", archive)
        return archive

    def _rollout(self) -> None:
        stack = self.stack
        archive = self._improved_release()
        built_by = "models improve"
        if archive is None:
            built_by = "re-export of the shipped student"
            archive = release_bundle(
                stack.config.models / "edge-student", stack.work / "release", self.to_version, stack.key
            )
        self.swap["built_by"] = built_by
        self.event(f"signed {self.bundle_name} v{self.to_version} ({archive.stat().st_size / 1e6:.2f} MB archive)")
        with httpx.Client(base_url=stack.fleet_url, timeout=30) as api:
            self._register_running(api)
            registered = api.post(
                "/v1/bundles", content=archive.read_bytes(), headers={"Content-Type": "application/gzip"}
            )
            if registered.status_code != 201:
                raise RuntimeError(f"registering the bundle gave HTTP {registered.status_code}: {registered.text}")
            self.event(
                f"registered it with the fleet manager (signature checked, sha256 {registered.json()['sha256'][:12]}..)"
            )
            created = api.post(
                "/v1/rollouts",
                json={
                    "bundle": self.bundle_name,
                    "version": self.to_version,
                    "labels": {"site": "demo"},
                    "strategy": {"type": "exponential", "base_rate": 1, "increment_factor": 2.0},
                    "abort": {"failure_percent": 50, "min_devices": 1},
                    "quality": self.config.quality,
                    "device_timeout_s": 120,
                },
            )
            if created.status_code != 201:
                raise RuntimeError(f"creating the rollout gave HTTP {created.status_code}: {created.text}")
            rollout_id = created.json()["id"]
            started = self.clock()
            gate = self.config.quality
            self.event(
                f"rollout {rollout_id} started: waves {created.json()['wave_sizes']}, abort at 50% failures; a wave "
                f"counts after {gate['min_shadow_checks']:g} shadow checks of v{self.to_version}, agreement at most "
                f"{gate['max_agreement_drop']:g} points and escalations at most {gate['max_escalation_rise']:g} points "
                f"worse than v{self.from_version}"
            )
            self.swap.update(
                rollout_id=rollout_id, from_version=self.from_version, to_version=self.to_version, devices={}
            )
            view = self._follow(api, rollout_id, started)
            self.swap.update(
                status=view["status"],
                duration_s=round(self.clock() - started, 2),
                succeeded=view["succeeded"],
                failed=view["failed"],
                quality_gates=view.get("quality_gates", []),
                field_quality=api.get("/v1/quality").json()["versions"],
            )
            self.event(f"rollout {view['status']}: {view['succeeded']} ACTIVE, {view['failed']} failed")

    def _register_running(self, api: httpx.Client) -> None:
        """Register the version the devices run now: the quality gate's baseline and the rollback target."""
        stack = self.stack
        running = release_bundle(
            stack.config.models / "edge-student", stack.work / "running", self.from_version, stack.key
        )
        response = api.post("/v1/bundles", content=running.read_bytes(), headers={"Content-Type": "application/gzip"})
        if response.status_code != 201:
            raise RuntimeError(f"registering v{self.from_version} gave HTTP {response.status_code}: {response.text}")
        self.event(f"registered v{self.from_version}, the version the devices run: the gate's baseline, the rollback")

    def _follow(self, api: httpx.Client, rollout_id: str, started: float) -> dict[str, Any]:
        """Poll the rollout until it ends, recording each device's status changes; its last view."""
        seen: dict[str, str] = {}
        verdicts: dict[int, str] = {}
        while True:
            view = api.get(f"/v1/rollouts/{rollout_id}").json()
            for gate in filter(None, view.get("quality_gates") or []):
                if verdicts.get(gate["wave"]) != gate["verdict"]:
                    verdicts[gate["wave"]] = gate["verdict"]
                    self.event(gate_line(gate, self.from_version, self.to_version))
                    if gate["verdict"] != "waiting":
                        self.swap.setdefault("gate_decisions", []).append({"t": round(self.clock(), 2), **gate})
            for device in view["devices"]:
                status = device["deploy"]["status"]
                if seen.get(device["device"]) != status:
                    seen[device["device"]] = status
                    self.swap["devices"].setdefault(device["device"], []).append((status, round(self.clock(), 2)))
                    if status in ("ACTIVE", "FAILED", "ROLLED_BACK"):
                        self.event(f"{device['device']} {status} on v{self.to_version}")
            if view["status"] not in ("RUNNING", "PAUSED"):
                return view
            if self.clock() - started > 180:
                raise TimeoutError(f"rollout {rollout_id} still {view['status']} after 180 s")
            time.sleep(0.2)

    # -- the outage --------------------------------------------------------------------

    def gate(self) -> None:
        """Hold the clients where the story needs it. Past ``outage_at`` with the rollout still
        watching its models, slow down for it (a short run would end first). While the cloud is
        down, let a quota of queries through, then wait until it is back: degraded answers
        take milliseconds, and the rest of the traffic would rush through the outage with
        nothing left for the recovery."""
        c = self.config
        if self.phase == "rollout" and self.done >= c.outage_at * c.queries and not self.rollout_finished.is_set():
            # a short run would otherwise end before the outage: the clients slow down to hold_rate, so that
            # the rollout runs under traffic, and stop only where the rest is needed for the outage
            # past hold_until, a trickle (a quarter of the rate): the gate still gets checks, the outage its queries.
            # One schedule for every client, so that the queries come evenly, not in bursts of ``concurrency``.
            rate = c.hold_rate if self.done < c.hold_until else c.hold_rate / 4
            with self.lock:
                slot = max(time.monotonic(), self.next_send)
                self.next_send = slot + 1 / rate
            self.rollout_finished.wait(max(0.0, slot - time.monotonic()))
        with self.lock:
            if self.phase != "outage":
                return
            self.outage_sent += 1
            if self.outage_sent <= self.config.outage_queries:
                return
        self.cloud_back.wait(300)

    def outage(self) -> None:
        try:
            self.stack.kill_cloud()
            self.phase = "outage"
            self.event("cloud Reasoner killed (SIGKILL): new queries degrade to the edge, cloud-only ones queue")
            time.sleep(self.config.outage_s)
            started = time.monotonic()
            self.stack.start_cloud()
            self.event(
                f"cloud Reasoner restarted and SERVING after {time.monotonic() - started:.1f} s "
                "(same session store: interrupted sessions re-run)"
            )
            self._wait_edges_see_cloud()
            self.phase = "recovery"
            self.event("every edge daemon's health check sees the cloud again: escalations resume")
        except Exception as exc:
            log.exception("the outage step failed")
            self.errors.append(f"outage: {exc}")
        finally:
            self.cloud_back.set()

    def _wait_edges_see_cloud(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5) as client:
            for index in range(self.stack.config.edges):
                while time.monotonic() < deadline:
                    text = client.get(f"{self.stack.edge_url(index)}/metrics").text
                    if sum(metric_values(text, "edgecloud_edge_cloud_up").values()) >= 1:
                        break
                    time.sleep(0.2)
                else:
                    raise TimeoutError(f"{self.stack.devices[index]} still sees the cloud down after {timeout_s:.0f} s")

    def director(self, n: int) -> None:
        """Starts the rollout and the outage when the traffic gets there."""
        c = self.config
        while self.done < c.rollout_at * n:
            time.sleep(0.05)
        self.phase = "rollout"
        rollout = threading.Thread(target=self.rollout, name="demo-rollout", daemon=True)
        rollout.start()
        while self.done < c.outage_at * n or not self.rollout_finished.is_set():
            if self.done >= n:
                self.event("traffic ended before the outage could start; lower --outage-at or send more queries")
                self.cloud_back.set()
                return
            time.sleep(0.05)
        self.outage()


def _bytes_per_escalation(stack: Stack) -> dict[str, Any]:
    wire = escalations = 0.0
    for index in range(stack.config.edges):
        text = httpx.get(f"{stack.edge_url(index)}/metrics", timeout=5).text
        wire += sum(
            v
            for labels, v in metric_values(text, "edgecloud_edge_escalation_bytes_total").items()
            if ("part", "features") in labels
        )
        escalations += sum(metric_values(text, "edgecloud_edge_escalations_total").values())
    dim = int(load_manifest(stack.config.models / "edge-student").io["feature_dim"])
    per = wire / escalations if escalations else None
    return {
        "escalations": int(escalations),
        "wire_bytes": per,
        "raw_bytes": 4 * dim,
        "ratio": (4 * dim / per) if per else None,
    }


def _first_served(records: list[QueryRecord], stack: Stack, version: int) -> dict[str, float]:
    first: dict[str, float] = {}
    for record in sorted(records, key=lambda r: r.sent_at):
        if record.model_version == version:
            first.setdefault(stack.devices[record.edge], record.sent_at)
    return first


def _write_outputs(out: Path, report: dict[str, Any], records: list[QueryRecord]) -> list[Path]:
    """``report.json``, ``queries.jsonl`` and the plots; the plots' paths."""
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "queries.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    return plot(records, report, out)


def _broken(report: dict[str, Any], config: DemoConfig, run: _Run, dead: list[str], *, edges: int) -> list[str]:
    """Every invariant the run broke, each said in a line."""
    broken = check_invariants(
        report, edges=edges, new_version=run.to_version, min_cloud_accuracy=config.task.min_cloud_accuracy
    )
    return broken + run.errors + [f"{d} died during the run" for d in dead if not d.startswith("cloud")]


def _traffic(config: DemoConfig, stack: Stack, run: _Run, queries: list[DemoQuery]) -> Traffic:
    """The demo's client traffic over every edge daemon, steered by the run's phase."""
    return Traffic(
        [stack.edge_url(i) for i in range(stack.config.edges)],
        queries,
        correct=AnswerCheck(replace(config.task, models=stack.config.models)),
        concurrency=config.concurrency,
        phase=lambda: run.phase,
        insist_on_cloud=lambda: run.phase == "outage",
        on_done=run.on_done,
        gate=run.gate,
    )


def _print_outcome(
    config: DemoConfig, report: dict[str, Any], plots: list[Path], broken: list[str], started: float
) -> int:
    """Print the report and where its files are; the exit status (1 when an invariant broke)."""
    print()
    print(format_report(report))
    print(
        f"\nreport: {config.out / 'report.json'}; per-query records: {config.out / 'queries.jsonl'}; plots: "
        + ", ".join(str(p) for p in plots)
    )
    if broken:
        print("\nDEMO FAILED:\n  " + "\n  ".join(broken))
        return 1
    print(f"\nall invariants hold; finished in {time.monotonic() - started:.0f} s")
    return 0


def run_demo(config: DemoConfig) -> int:
    stack_config = config.stack or StackConfig(work=config.out / "run", models=config.task.models)
    if stack_config.work.exists():
        shutil.rmtree(stack_config.work)
    config.out.mkdir(parents=True, exist_ok=True)
    stack = Stack(stack_config)
    started = time.monotonic()
    print(
        f"edgecloud demo ({config.task.name}): {config.queries} queries over {stack_config.edges} edge daemons; "
        f"logs in {stack.work / 'logs'}"
    )
    try:
        stack.start()
        run = _Run(config, stack)
        queries = config.task.queries(config.queries)
        traffic = _traffic(config, stack, run, queries)
        run.t0 = traffic.started
        sampler = Sampler([stack.edge_url(i) for i in range(stack_config.edges)], clock=run.clock)
        sampler.start()
        director = threading.Thread(target=run.director, args=(len(queries),), name="demo-director", daemon=True)
        director.start()
        with tqdm(total=len(queries), unit="q", desc="queries", dynamic_ncols=True) as bar:
            run.bar = bar
            records = traffic.run()
        run.bar = None
        run.rollout_finished.wait(120)
        run.cloud_back.wait(120)
        if run.phase == "outage":  # traffic outran the restart; let the director finish it
            director.join(60)
        waiting = traffic.collect_outbox(timeout_s=90)
        delivered = sum(r.delivered_after_s is not None for r in records)
        run.event(f"outbox drained: {delivered} delivered, {len(waiting)} still waiting")
        sampler.stop()
        run.swap["first_served_by_new_version"] = _first_served(records, stack, run.to_version)
        bytes_per = _bytes_per_escalation(stack)
        traffic.close()
    except BaseException:
        print(f"\nthe demo failed; the processes' logs are in {stack.work / 'logs'}")
        stack.stop()
        raise
    dead = stack.dead()
    exits = stack.stop()
    report = build_report(
        records,
        events=run.events,
        swap=run.swap,
        bytes_per_escalation=bytes_per,
        exits=exits,
        wall_s=time.monotonic() - started,
        broker=stack.broker_kind if stack.broker_kind == "embedded" else "mosquitto",
        task=config.task.name,
        undelivered=len(waiting),
        samples=[s.__dict__ for s in sampler.samples],
    )
    report["route_counts"] = dict(route_counts(records))
    broken = _broken(report, config, run, dead, edges=stack_config.edges)
    report["invariants_broken"] = broken
    plots = _write_outputs(config.out, report, records)
    return _print_outcome(config, report, plots, broken, started)
