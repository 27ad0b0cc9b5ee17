"""Cheap structural checks of deploy/: every command line they start parses with the real CLI,
and the Kubernetes probes, ports and grace periods agree with the arguments."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgecloud.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def parse(argv: list[str]) -> argparse.Namespace:
    """The CLI's own parser; argparse exits on an unknown flag, which becomes a test failure."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"edgecloud rejects {shlex.join(argv)} (exit {exc.code})")


# -- systemd -----------------------------------------------------------------------------


def _unit_lines(text: str) -> list[tuple[str, str]]:
    """(key, value) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def _env_assignments(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line))


def test_systemd_unit_starts_a_command_the_cli_accepts() -> None:
    unit = _unit_lines((DEPLOY / "systemd" / "edgecloud-edge.service").read_text())
    settings: dict[str, list[str]] = {}
    for key, value in unit:
        settings.setdefault(key, []).append(value)
    env: dict[str, str] = {}
    for value in settings["Environment"]:
        env.update(pair.split("=", 1) for pair in shlex.split(value))
    env.update(_env_assignments((DEPLOY / "systemd" / "edge.env.example").read_text()))  # wins, as in systemd

    (exec_start,) = settings["ExecStart"]
    # ${VAR} is one argument, $VAR is split on white space (systemd.service(5)); %d is the
    # credentials folder.
    words = []
    for word in shlex.split(exec_start.replace("%d", "/run/credentials/edgecloud-edge.service")):
        if re.fullmatch(r"\$[A-Z_]+", word):
            words += env.get(word[1:], "").split()
        else:
            words.append(re.sub(r"\$\{([A-Z_]+)\}", lambda m: env[m.group(1)], word))
    binary, *argv = words
    assert binary.endswith("/edgecloud")
    args = parse(argv)
    assert (args.command, args.action) == ("edge", "serve")
    assert args.host == "127.0.0.1", "the unit's default bind address must be loopback"
    assert args.mqtt_username == args.device_id, "the broker ACL relies on user name == device id"
    assert args.broker and args.mqtt_ca and args.cloud_tls and args.label
    assert args.trust_commands and args.fleet_origin, "the agent needs the fleet's command key and origin"

    state = "/var/lib/" + settings["StateDirectory"][0]
    assert str(args.outbox).startswith(state) and str(args.agent_state).startswith(state)
    credentials = {value.split(":", 1)[0] for value in settings["LoadCredential"]}
    for path in (args.api_key_file, args.mqtt_password_file, args.cloud_token_file):
        assert path.parent == Path("/run/credentials/edgecloud-edge.service") and path.name in credentials
    for key, expected in {
        "Restart": "on-failure",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "DynamicUser": "yes",
    }.items():
        assert settings[key] == [expected], key


# -- Docker ------------------------------------------------------------------------------


def _instruction(text: str, name: str) -> list[str] | None:
    """The exec form (JSON array) of the last NAME instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = re.findall(rf"^{name}\s+(\[.*\])\s*$", joined, re.MULTILINE)
    return json.loads(found[-1]) if found else None


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_starts_a_command_the_cli_accepts(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    argv = (_instruction(text, "ENTRYPOINT") or []) + (_instruction(text, "CMD") or [])
    assert argv[0] == "edgecloud", argv
    args = parse(argv[1:])
    assert args.command == dockerfile.name.split(".")[0]
    assert args.host == "0.0.0.0", "inside a container the CLI's loopback default is unreachable"
    if args.command == "fleet":
        assert args.command_key, "fleet serve refuses to start without --command-key"
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER\s+(?!0\b|root\b)\S+", final_stage, re.MULTILINE), "the image must not run as root"
    assert "HEALTHCHECK" in final_stage
    assert all(line.split()[1].startswith("python:3.11-slim") for line in re.findall(r"^FROM .*", text, re.MULTILINE))


def test_every_image_copies_the_folders_the_package_maps() -> None:
    # pyproject.toml maps each top-level folder into the edgecloud namespace; a folder an image
    # does not copy fails its pip install.
    import tomllib

    folders = set(
        tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    )
    assert {"shared", "edge", "cloud", "fleet", "modelkit", "proto", "edgecloud"} <= folders
    for dockerfile in DOCKERFILES:
        copied = set(re.findall(r"^COPY (\S+) \1$", dockerfile.read_text(), re.MULTILINE))
        assert folders <= copied, (dockerfile.name, sorted(folders - copied))


def test_only_the_cloud_image_installs_torch_and_it_is_the_cpu_build() -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        torch_lines = [line for line in text.splitlines() if "torch" in line and line.lstrip().startswith("RUN")]
        if dockerfile.name == "cloud.Dockerfile":
            (line,) = torch_lines
            assert "--index-url https://download.pytorch.org/whl/cpu" in line
            assert text.index("whl/cpu") < text.index(".[cloud]"), "the CPU wheel must come before the package"
        else:
            assert not torch_lines and ".[cloud]" not in text and ".[all]" not in text, dockerfile.name


# -- Kubernetes --------------------------------------------------------------------------


def _documents() -> list[dict[str, Any]]:
    docs = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    return docs


def _container_args(container: dict[str, Any]) -> argparse.Namespace:
    assert container["command"] == ["edgecloud"]
    return parse(container["args"])


def test_k8s_workload_args_probes_and_grace_agree() -> None:
    workloads = [d for d in _documents() if d["kind"] in ("Deployment", "StatefulSet")]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            args = _container_args(container)
            assert (args.command, args.action) == ("cloud", "serve")
            assert args.host == "0.0.0.0" and args.tokens, "off loopback, device tokens are required"
            probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
            assert {probe["grpc"]["port"] for probe in probes} == {args.port}
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            assert ports["grpc"] == args.port
            assert ports.get("metrics") in (None, args.metrics_port)
            if "metrics" in ports:
                assert args.metrics_host == "0.0.0.0", "a metrics port nobody outside the pod can reach"
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pause = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
            assert pod["terminationGracePeriodSeconds"] > args.grace + pause
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert str(Path(args.store).parent) in mounts, "the session store must be on a volume"
            assert any(str(args.tokens).startswith(m) for m in mounts)


def test_k8s_services_and_budget_select_the_workload() -> None:
    docs = _documents()
    (workload,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    pod_names = {f"{workload['metadata']['name']}-{i}" for i in range(workload["spec"]["replicas"])}
    port_names = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    for doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
            per_pod = selector.get("statefulset.kubernetes.io/pod-name")
            assert per_pod in pod_names if per_pod else selector.items() <= labels.items(), doc["metadata"]["name"]
            assert {p["targetPort"] for p in doc["spec"]["ports"]} <= port_names
        if doc["kind"] == "PodDisruptionBudget":
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert any(d["kind"] == "PodDisruptionBudget" for d in docs)
