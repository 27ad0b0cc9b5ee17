"""Cheap structural checks of deploy/: every command line they start parses with the real CLI,
and the Kubernetes probes, ports and grace periods agree with the arguments."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from edgecloud.cli import build_parser
from edgecloud.cloud.stores import is_shared_store

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))


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
# deploy/k8s/ is the Redis mode (a Deployment of Reasoners sharing one Redis), deploy/k8s/sqlite/
# the embedded mode (a StatefulSet, one SQLite file per replica). Each folder is applied on its
# own (kubectl apply -f FOLDER is not recursive), so the cross-references are checked per folder.

K8S = DEPLOY / "k8s"
K8S_FOLDERS = sorted({path.parent for path in K8S.rglob("*.yaml")})
REASONER = "edgecloud-cloud"
REDIS = "edgecloud-redis"
VLLM = "edgecloud-vllm"


def _documents(folder: Path) -> list[dict[str, Any]]:
    docs = [doc for path in sorted(folder.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, folder
    return docs


def _workloads(docs: list[dict[str, Any]], name: str | None = None) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet") and (name is None or d["metadata"]["name"] == name)
    ]


def _container_args(container: dict[str, Any]) -> argparse.Namespace:
    assert container["command"] == ["edgecloud"]
    return parse(container["args"])


def _secret_mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """mount path -> the Secret mounted there."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in container["volumeMounts"] if m["name"] in secrets}


def _secret_of(path: str | Path, mounts: dict[str, str]) -> str:
    """The Secret a file path is in, via the container's mounts; fails if it is in none."""
    found = [secret for mount, secret in mounts.items() if Path(path).parent == Path(mount)]
    assert found, f"{path} is not in a mounted Secret"
    return found[0]


def test_k8s_folders_are_the_two_modes() -> None:
    assert K8S_FOLDERS == [K8S, K8S / "sqlite"]
    for folder in K8S_FOLDERS:
        docs = _documents(folder)
        names = {d["metadata"]["name"] for d in _workloads(docs)}
        assert REASONER in names, folder
        checked = {REASONER, REDIS, VLLM} if folder == K8S else {REASONER}
        assert names <= checked, f"a workload no test checks: {names - checked}"


@pytest.mark.parametrize("folder", K8S_FOLDERS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_k8s_workload_args_probes_and_grace_agree(folder: Path) -> None:
    workloads = _workloads(_documents(folder), REASONER)
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
            assert any(str(args.tokens).startswith(m) for m in mounts)
            if not is_shared_store(args.store):
                assert str(Path(args.store).parent) in mounts, "the session store must be on a volume"


def test_k8s_sqlite_mode_gives_each_replica_its_own_store_volume() -> None:
    (workload,) = _workloads(_documents(K8S / "sqlite"), REASONER)
    assert workload["kind"] == "StatefulSet", "one SQLite file per replica needs a volume per replica"
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    args = _container_args(container)
    assert not is_shared_store(args.store)
    claims = {t["metadata"]["name"] for t in workload["spec"]["volumeClaimTemplates"]}
    (store_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(Path(args.store).parent)]
    assert store_mount["name"] in claims, "the SQLite store must be on the replica's own claim"


def test_k8s_redis_mode_reasoners_share_the_redis_of_the_manifests() -> None:
    docs = _documents(K8S)
    (workload,) = _workloads(docs, REASONER)
    assert workload["kind"] == "Deployment" and "volumeClaimTemplates" not in workload["spec"]
    assert workload["spec"]["replicas"] >= 2
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = _container_args(container)
    assert is_shared_store(args.store)
    url = urlsplit(args.store)
    assert url.scheme in ("redis", "rediss") and url.password is None, "the password belongs in a file"
    assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", [])), "replicas keep nothing on disk"
    assert args.store_lease > 0
    # The Redis is off loopback, so the server requires its password, from a mounted Secret...
    assert args.store_password_file, "a Redis off loopback needs --store-password-file"
    secret = _secret_of(args.store_password_file, _secret_mounts(pod, container))
    assert secret != _secret_of(args.tokens, _secret_mounts(pod, container))

    # ...the Secret the Redis of these manifests takes its requirepass from, behind the Service
    # the URL names.
    (redis_workload,) = _workloads(docs, REDIS)
    redis_pod = redis_workload["spec"]["template"]["spec"]
    (redis,) = redis_pod["containers"]
    redis_mounts = _secret_mounts(redis_pod, redis)
    start = " ".join(redis["args"])
    password_files = re.findall(r"\$\(cat (\S+)\)", start)
    assert password_files and {_secret_of(path, redis_mounts) for path in password_files} == {secret}
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == url.hostname]
    redis_labels = redis_workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= redis_labels.items()
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (url.port or 6379)]
    container_ports = {p["name"]: p["containerPort"] for p in redis["ports"]}
    assert container_ports[port["targetPort"]] == 6379


def test_k8s_redis_persists_requires_a_password_and_is_one_instance() -> None:
    docs = _documents(K8S)
    (workload,) = _workloads(docs, REDIS)
    assert workload["kind"] == "StatefulSet" and workload["spec"]["replicas"] == 1, "one Redis, not a cluster"
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    start = " ".join(container["args"])
    (config_path,) = re.findall(r"exec redis-server (\S+)", start)

    configmaps = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(Path(config_path).parent)]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == configmaps[mount["name"]]]
    text = configmap["data"][Path(config_path).name]
    config: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            config.setdefault(key.lower(), []).append(value)
    assert config["appendonly"] == ["yes"], "without the append-only file a Redis restart loses every session"
    assert config.get("maxmemory-policy") == ["noeviction"], "evicting a lease or a stream breaks sessions"
    assert "cluster-enabled" not in config and "requirepass" not in config, "no cluster; no password in a ConfigMap"

    # requirepass is written at start, from the mounted Secret, into the file the config includes.
    (included,) = config["include"]
    assert re.search(rf"requirepass .*\$\(cat /\S+\).*> {re.escape(included)}\b", start), start
    claims = {t["metadata"]["name"] for t in workload["spec"]["volumeClaimTemplates"]}
    (data,) = [m for m in container["volumeMounts"] if m["mountPath"] == config["dir"][0]]
    assert data["name"] in claims, "the append-only file must be on the claim, not in the pod"
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in container, probe

    # Only the Reasoners may reach it.
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == REDIS]
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= workload["spec"]["template"]["metadata"]["labels"].items()
    )
    reasoner_labels = _workloads(docs, REASONER)[0]["spec"]["template"]["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    assert [peer["podSelector"]["matchLabels"].items() <= reasoner_labels.items() for peer in rule["from"]] == [True]


def _commented_openai_backend(text: str) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """cloud.yaml's commented OpenAI backend: the arguments to append, the API key's mount and volume."""
    argv = [word for line in re.findall(r"^\s*#   (--\S.*)$", text, re.MULTILINE) for word in shlex.split(line)]
    lines = [yaml.safe_load(line)[0] for line in re.findall(r"^\s*# (- \{name: vllm-api-key, .*)$", text, re.MULTILINE)]
    (mount,) = [line for line in lines if "mountPath" in line]
    (volume,) = [line for line in lines if "secret" in line]
    return argv, mount, volume


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_k8s_vllm_serves_what_the_openai_backend_of_the_reasoners_asks_for() -> None:
    from edgecloud.cloud.config import RemoteEngineConfig
    from edgecloud.cloud.engine import EngineConfig

    docs = _documents(K8S)
    (workload,) = _workloads(docs, VLLM)
    assert workload["kind"] == "Deployment" and workload["spec"]["replicas"] == 1
    assert workload["spec"]["strategy"]["type"] == "Recreate", "one GPU and a ReadWriteOnce volume"
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    (vllm,) = pod["containers"]
    assert vllm["command"] == ["vllm", "serve"]
    served, port = _option(vllm["args"], "--served-model-name"), int(_option(vllm["args"], "--port"))
    assert "--enable-prefix-caching" in vllm["args"], "the answer call reads the reasoning call's prefix"
    assert "--api-key" not in vllm["args"], "the key belongs in the environment, not on the command line"
    # The longest session the Reasoner allows fits the model's context: prompt, budget, the two
    # think tags, the answer and its end-of-turn token.
    ceilings = EngineConfig()
    longest = ceilings.max_input_tokens + ceilings.max_reasoning_tokens + ceilings.max_output_tokens + 3
    assert int(_option(vllm["args"], "--max-model-len")) >= longest
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in vllm["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = vllm[probe]["httpGet"]
        assert check["path"] == "/health" and ports[check["port"]] == port, probe
    (key_env,) = [e for e in vllm["env"] if e["name"] == "VLLM_API_KEY"]
    key_ref = key_env["valueFrom"]["secretKeyRef"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims and claims <= {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}

    # The Reasoner's commented OpenAI backend parses, and names this Service, port, model and Secret.
    cloud_text = (K8S / "cloud.yaml").read_text()
    extra, mount, volume = _commented_openai_backend(cloud_text)
    (reasoner,) = _workloads(docs, REASONER)
    (container,) = reasoner["spec"]["template"]["spec"]["containers"]
    args = _container_args({**container, "args": container["args"] + extra})
    assert args.engine == "openai" and args.engine_model == served
    assert args.model != _container_args(container).model, "the backend's --model is the served model's tokenizer"
    RemoteEngineConfig(url=args.engine_url, allow_plaintext=args.engine_allow_plaintext)  # refuses what it cannot do
    url = urlsplit(args.engine_url)
    assert url.path == "/v1"
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == url.hostname]
    assert service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    assert ports[service_port["targetPort"]] == port
    assert Path(args.engine_api_key_file).parent == Path(mount["mountPath"]) and mount["name"] == volume["name"]
    assert volume["secret"]["secretName"] == key_ref["name"]
    assert Path(args.engine_api_key_file).name == key_ref["key"]

    # Only the Reasoner pods reach it.
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == VLLM]
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= workload["spec"]["template"]["metadata"]["labels"].items()
    )
    (rule,) = policy["spec"]["ingress"]
    reasoner_labels = reasoner["spec"]["template"]["metadata"]["labels"]
    assert [peer["podSelector"]["matchLabels"].items() <= reasoner_labels.items() for peer in rule["from"]] == [True]
    assert [p["port"] for p in rule["ports"]] == [port]


@pytest.mark.parametrize("folder", K8S_FOLDERS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_k8s_services_and_budget_select_the_workload(folder: Path) -> None:
    docs = _documents(folder)
    workloads = _workloads(docs)
    pod_names = {
        f"{w['metadata']['name']}-{i}"
        for w in workloads
        if w["kind"] == "StatefulSet"
        for i in range(w["spec"]["replicas"])
    }
    for doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
            per_pod = selector.get("statefulset.kubernetes.io/pod-name")
            if per_pod:
                assert per_pod in pod_names, doc["metadata"]["name"]
                continue
            selected = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
            assert len(selected) == 1, doc["metadata"]["name"]
            port_names = {p["name"] for c in selected[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in doc["spec"]["ports"]} <= port_names, doc["metadata"]["name"]
        if doc["kind"] == "PodDisruptionBudget":
            (reasoner,) = _workloads(docs, REASONER)
            assert (
                doc["spec"]["selector"]["matchLabels"].items()
                <= reasoner["spec"]["template"]["metadata"]["labels"].items()
            )
    assert any(d["kind"] == "PodDisruptionBudget" for d in docs)
