"""What signing fleet commands adds to the happy path, side by side in one run.

For ``--n`` deploy commands: the unsigned round trip a command took before commands were signed
(canonical JSON out, parse and validate in) against the signed one (:func:`sign_command` on the
manager, :func:`open_command` on the device: Ed25519 sign and verify, expiry and device checks).
For scale, the same run times what every deploy already paid before signing: checking the shipped
edge bundle's files against its manifest (``verify_bundle``), once per deploy. Prints JSON (also
``--out``/command_signing.json)::

    python benchmarks/command_signing.py [--n 5000] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.support.cloud import REPO, machine_info
from edgecloud.shared.bundles.manifest import verify_bundle
from edgecloud.shared.bundles.signing import TrustStore, generate_keypair, load_private_key
from edgecloud.shared.fleetlink.commands import open_command, sign_command
from edgecloud.shared.fleetlink.messages import BundleRef, Command, decode, encode


def _commands(n: int) -> list[Command]:
    bundle = BundleRef(
        name="edgecloud-demo-student",
        version=6,
        url="http://127.0.0.1:8080/artifacts/" + "a" * 64 + ".tar.gz",
        sha256="a" * 64,
        size=1_700_000,
    )
    return [
        Command(
            id=f"ro1-dev-{i}-r{i + 1}",
            type="deploy",
            revision=i + 1,
            bundle=bundle,
            rollout_id="ro1",
            device=f"dev-{i}",
        )
        for i in range(n)
    ]


def _times(command: Command) -> dict[str, float]:
    return {"issued_at": command.issued_at, "expires_at": command.expires_at}


def _per_call_us(fn, items) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - t) * 1e6)
    return out


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": statistics.median(ordered),
        "p99_us": ordered[int(0.99 * (len(ordered) - 1))],
        "mean_us": statistics.fmean(ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "edge-student")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "command_signing")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        generate_keypair(Path(tmp) / "cmd.key", Path(tmp) / "cmd.pub")
        key = load_private_key(Path(tmp) / "cmd.key")
        trust = TrustStore.from_paths([Path(tmp) / "cmd.pub"])
    commands = _commands(args.n)

    def unsigned(command: Command) -> Command:
        return Command.from_dict(decode(encode(command.to_dict())))

    def signed(command: Command) -> Command:
        return open_command(sign_command(command, key), trust, device=command.device)

    for fn in (unsigned, signed):  # warm both paths before timing either
        _per_call_us(fn, commands[:200])
    # Interleaved halves, so a change in the machine's load hits both paths alike.
    half = args.n // 2
    before = _per_call_us(unsigned, commands[:half]) + _per_call_us(unsigned, commands[half:])
    after = _per_call_us(signed, commands[:half]) + _per_call_us(signed, commands[half:])
    for command in commands[:50]:  # the device gets the command that was signed for it
        opened = signed(command)
        assert opened == dataclasses.replace(command, **_times(opened)), (opened, command)
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        verify_bundle(args.bundle)
        runs.append((time.perf_counter() - t) * 1e6)
    verify_us = statistics.median(runs)
    report = {
        "n": args.n,
        "unsigned_round_trip": _summary(before),
        "signed_round_trip": _summary(after),
        "added_per_command_us": statistics.median(after) - statistics.median(before),
        "ratio_p50": statistics.median(after) / statistics.median(before),
        "bundle_verification_per_deploy_us": verify_us,
        "added_share_of_bundle_verification": (statistics.median(after) - statistics.median(before)) / verify_us,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "machine": machine_info(1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "command_signing.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
