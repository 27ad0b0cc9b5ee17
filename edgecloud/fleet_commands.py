"""``edgecloud fleet push | bundles | devices | rollouts | rollout | start | watch | pause | resume |
abort | rollback``: the bundle lifecycle against a running fleet manager's REST API.

Each command is a thin client of ``fleet serve``'s ``/v1`` routes (docs/fleet.md): a table for
people by default, the API's JSON with ``--json``. The manager is ``--url`` (or
``$EDGECLOUD_FLEET_URL``, default ``http://127.0.0.1:8090``); its API key is read from
``--api-key-file`` (or ``$EDGECLOUD_FLEET_API_KEY_FILE``). An error from the manager exits 1 with
its message; the manager out of reach exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

__all__ = ["add_fleet_client_commands", "parse_labels"]

DEFAULT_URL = "http://127.0.0.1:8090"
TERMINAL = {"COMPLETED", "ABORTED", "ROLLED_BACK", "FAILED"}


class _Refused(Exception):
    """The manager answered with an error, or could not be reached."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {}
    key_file = args.api_key_file or os.environ.get("EDGECLOUD_FLEET_API_KEY_FILE")
    if key_file:
        headers["Authorization"] = f"Bearer {Path(key_file).read_text().strip()}"
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=args.timeout)


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    try:
        with _client(args) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise _Refused(f"the fleet manager at {args.url} is out of reach: {exc}", code=2) from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"type": "http_error", "message": response.text[:300]}}
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message", response.reason_phrase)
        raise _Refused(f"{method} {path}: {response.status_code} {error.get('type', '')}: {message}")
    return body


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """``columns``: (header, key) pairs; a key may reach into a nested dict with dots."""

    def cell(row: dict[str, Any], key: str) -> str:
        value: Any = row
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}"
        if isinstance(value, dict):
            return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
        return str(value)

    cells = [[header for header, _ in columns]] + [[cell(r, key) for _, key in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def _emit(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


BUNDLE_COLUMNS = (("NAME", "name"), ("VERSION", "version"), ("SHA256", "sha256"), ("SIZE", "size"), ("KEY", "key_id"))
DEVICE_COLUMNS = (
    ("DEVICE", "id"),
    ("ONLINE", "online"),
    ("MODEL", "model_name"),
    ("VERSION", "model_version"),
    ("ESCALATION", "escalation_rate"),
    ("LABELS", "labels"),
    ("ROLLOUT", "rollout.status"),
    ("STATE PROBLEM", "state_problem"),
)
ROLLOUT_COLUMNS = (
    ("ROLLOUT", "id"),
    ("STATUS", "status"),
    ("BUNDLE", "bundle"),
    ("VERSION", "version"),
    ("WAVE", "wave"),
    ("OF", "waves"),
    ("DONE %", "progress_percent"),
    ("OK", "succeeded"),
    ("FAILED", "failed"),
    ("TOTAL", "total"),
)


def _rollout_line(summary: dict[str, Any]) -> str:
    return _table([summary], ROLLOUT_COLUMNS)


def _push(args: argparse.Namespace) -> int:
    source = Path(args.bundle)
    with tempfile.TemporaryDirectory(prefix="edgecloud-push-") as tmp:
        if source.is_dir():
            from edgecloud.shared.bundles.artifacts import pack_bundle

            archive = Path(tmp) / "bundle.tar.gz"
            pack_bundle(source, archive)
        elif source.is_file():
            archive = source
        else:
            raise _Refused(f"{source}: no bundle folder or archive there")
        record = _call(args, "POST", "/v1/bundles", content=archive.read_bytes(),
                       headers={"Content-Type": "application/gzip"})  # fmt: skip
    return _emit(args, record, _table([record], BUNDLE_COLUMNS))


def _list(path: str, key: str, columns: Sequence[tuple[str, str]]) -> Any:
    def run(args: argparse.Namespace) -> int:
        body = _call(args, "GET", path)
        return _emit(args, body, _table(body[key], columns))

    return run


def _show(args: argparse.Namespace) -> int:
    body = _call(args, "GET", f"/v1/rollouts/{args.id}")
    devices = body.get("devices") or []
    rows = [{"device": d.get("device") or d.get("id"), **(d.get("deploy") or {})} for d in devices]
    columns = (("DEVICE", "device"), ("STATUS", "status"), ("REASON", "reason"))
    return _emit(args, body, _rollout_line(body.get("summary", body)) + "\n\n" + _table(rows, columns))


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    """``--label KEY=VALUE`` flags as a dict; ValueError naming the first that is not KEY=VALUE."""
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--label must be KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    try:
        return parse_labels(pairs)
    except ValueError as exc:
        raise _Refused(str(exc)) from None


def _start(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {"bundle": args.name, "version": args.version, "devices": args.device,
                            "labels": _labels(args.label)}  # fmt: skip
    if args.wave_size is not None:
        spec["strategy"] = {"type": "fixed", "size": args.wave_size}
    elif args.exponential is not None:
        base, factor = args.exponential
        spec["strategy"] = {"type": "exponential", "base_rate": int(base), "increment_factor": factor}
    if args.abort_percent is not None:
        spec["abort"] = {"failure_percent": args.abort_percent}
    if args.device_timeout is not None:
        spec["device_timeout_s"] = args.device_timeout
    gate = {"min_shadow_checks": args.min_shadow_checks, "max_agreement_drop": args.max_agreement_drop,
            "max_escalation_rise": args.max_escalation_rise}  # fmt: skip
    if any(value is not None for value in gate.values()):  # the server fills what is left out
        spec["quality"] = {key: value for key, value in gate.items() if value is not None}
    rollout = _call(args, "POST", "/v1/rollouts", json=spec)
    if args.watch:
        args.id = rollout["id"]
        return _watch(args)
    return _emit(args, rollout, _rollout_line(rollout.get("summary", rollout)))


def _watch(args: argparse.Namespace) -> int:
    """Poll until the rollout ends; a line each time its progress changes. Exits 0 on COMPLETED."""
    deadline = time.monotonic() + args.watch_timeout
    last = None
    while True:
        body = _call(args, "GET", f"/v1/rollouts/{args.id}")
        summary = body.get("summary", body)
        seen = (summary["status"], summary["wave"], summary["finished"], summary["failed"])
        if seen != last and not args.json:
            done = f"{summary['finished']}/{summary['total']}"
            print(f"{summary['id']} {summary['status']} wave {summary['wave']}/{summary['waves']} "
                  f"{done} finished, {summary['failed']} failed", flush=True)  # fmt: skip
            last = seen
        if summary["status"] in TERMINAL:
            if args.json:
                print(json.dumps(body, indent=2))
            return 0 if summary["status"] == "COMPLETED" else 1
        if time.monotonic() > deadline:
            raise _Refused(f"rollout {args.id} still {summary['status']} after {args.watch_timeout:g} s")
        time.sleep(args.interval)


def _action(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        body: dict[str, Any] = {}
        if name == "abort" and args.reason:
            body["reason"] = args.reason
        if name == "rollback" and args.to_version is not None:
            body["to_version"] = args.to_version
        rollout = _call(args, "POST", f"/v1/rollouts/{args.id}/{name}", json=body)
        return _emit(args, rollout, _rollout_line(rollout.get("summary", rollout)))

    return run


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except _Refused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.code

    return run


def add_fleet_client_commands(fleet: argparse._SubParsersAction) -> None:
    """Add the client commands beside ``fleet serve``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("EDGECLOUD_FLEET_URL", DEFAULT_URL),
                        help=f"the fleet manager (default: $EDGECLOUD_FLEET_URL or {DEFAULT_URL})")  # fmt: skip
    common.add_argument("--api-key-file", type=Path, default=None,
                        help="file holding its API key (default: $EDGECLOUD_FLEET_API_KEY_FILE)")  # fmt: skip
    common.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")

    def add(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        parser = fleet.add_parser(name, help=help_text, parents=[common])
        parser.set_defaults(func=_guarded(func))
        return parser

    push = add("push", "register a bundle (a folder, packed here, or a .tar.gz) with the fleet manager", _push)
    push.add_argument("bundle", help="signed bundle folder or archive")
    add("bundles", "the registered bundles", _list("/v1/bundles", "bundles", BUNDLE_COLUMNS))
    add("devices", "the devices and what they serve", _list("/v1/devices", "devices", DEVICE_COLUMNS))
    add("rollouts", "the rollouts, newest first", _list("/v1/rollouts", "rollouts", ROLLOUT_COLUMNS))
    show = add("rollout", "one rollout and its devices", _show)
    show.add_argument("id")
    start = add("start", "start a staged rollout of a registered bundle", _start)
    start.add_argument("name", help="bundle name")
    start.add_argument("version", type=int)
    start.add_argument("--device", action="append", default=[], help="a device id, in rollout order (repeatable)")
    start.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                       help="plus every device with this label (repeatable)")  # fmt: skip
    waves = start.add_mutually_exclusive_group()
    waves.add_argument("--wave-size", type=int, default=None, help="fixed waves of this many devices")
    waves.add_argument("--exponential", type=float, nargs=2, metavar=("BASE", "FACTOR"), default=None,
                       help="waves of BASE devices, growing by FACTOR")  # fmt: skip
    start.add_argument("--abort-percent", type=float, default=None, help="abort past this share of failures")
    start.add_argument("--device-timeout", type=float, default=None, help="seconds a device may take")
    quality = start.add_argument_group("field-quality gate (each wave waits for its devices' shadow checks)")
    quality.add_argument("--min-shadow-checks", type=int, default=None, metavar="N",
                         help="shadow checks of the new version a wave needs before it counts (default: 50)")  # fmt: skip
    quality.add_argument("--max-agreement-drop", type=float, default=None, metavar="POINTS",
                         help="most the agreement with the cloud may fall (default: 2)")  # fmt: skip
    quality.add_argument("--max-escalation-rise", type=float, default=None, metavar="POINTS",
                         help="most the escalation rate may rise (default: 5)")  # fmt: skip
    start.add_argument("--watch", action="store_true", help="then follow it until it ends (as `fleet watch`)")
    watch = add("watch", "follow a rollout until it ends (exit 0 on COMPLETED)", _watch)
    watch.add_argument("id")
    for parser in (start, watch):
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
        parser.add_argument("--watch-timeout", type=float, default=3600.0, help="give up after this many seconds")
    for name, help_text in (("pause", "stop sending new waves"), ("resume", "continue a paused rollout"),
                            ("abort", "send no new deploy command"),
                            ("rollback", "send every device that went ACTIVE back")):  # fmt: skip
        parser = add(name, help_text, _action(name))
        parser.add_argument("id")
        if name == "abort":
            parser.add_argument("--reason", default="", help="said in the rollout's record")
        if name == "rollback":
            parser.add_argument("--to-version", type=int, default=None,
                                help="default: the newest registered older version")  # fmt: skip
