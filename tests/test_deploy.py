"""The deployment files under deploy/: the Kubernetes manifests validated
offline against Kubernetes' schemas (kubernetes-validate) and against each
other and our real settings; the systemd unit through `systemd-analyze
verify`; the container recipes through hadolint. The command lines they
hold (the unit's ExecStart, the image's entrypoint and health check, the
StatefulSet's args and env) start a real node here. No container engine
runs here: building the images is not verified."""

from __future__ import annotations

import ast
import configparser
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import fields
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from nixl_memkv.auth import generate_auth_key
from nixl_memkv.config import ClientConfig, NodeConfig, load_client_config, load_node_config, parse_size
from nixl_memkv.ports import free_port
from node_harness import clean_env

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "memkv@.service"
UNIT_ENV = DEPLOY / "systemd" / "memkv-node.env.example"
CONTAINERFILES = [DEPLOY / "container" / "Containerfile", DEPLOY / "container" / "Containerfile.lmcache"]
# The oldest Kubernetes the manifests are meant for, and the newest the validator knows.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

NODE_ENV = {"MEMKV_" + f.name.upper() for f in fields(NodeConfig)}
CLIENT_ENV = {"MEMKV_" + f.name.upper() for f in fields(ClientConfig)} | {"MEMKV_CONFIG"}


def installed(script: str) -> str:
    """A console script installed with this interpreter (or else on PATH)."""
    beside = Path(sys.executable).with_name(script)
    found = str(beside) if beside.exists() else shutil.which(script)
    assert found, f"{script} is not installed: pip install '.[test]'"
    return found


MEMKV_BIN = installed("memkv")


# ---------------------------------------------------------------- helpers

def manifests() -> dict[tuple[str, str], dict]:
    """Every Kubernetes object under deploy/k8s, by (kind, name)."""
    out = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def container(obj: dict) -> dict:
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    return c


def plain_env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


class Started:
    """A node started from a deployment file's command line."""

    def __init__(self, argv: list[str], env: dict[str, str], admin_port: int, log: Path):
        self.admin_port = admin_port
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, cwd="/")

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"node exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/v1/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"no /v1/health after {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def started():
    nodes: list[Started] = []

    def start(*args, **kw) -> Started:
        nodes.append(Started(*args, **kw))
        return nodes[-1]

    yield start
    for n in nodes:
        n.stop(signal.SIGKILL)


def small_node_env(**extra: str) -> dict[str, str]:
    """Ports free on this machine and capacities this machine can hold."""
    port = free_port("127.0.0.1")
    return {"MEMKV_HOST": "127.0.0.1", "MEMKV_PORT": str(port), "MEMKV_ADMIN_PORT": str(port + 1),
            "MEMKV_DRAM_CAPACITY": "64MiB", "MEMKV_DISK_CAPACITY": "128MiB", **extra}


# ---------------------------------------------------------------- Kubernetes

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version):
    objs = manifests()
    assert {k for k, _ in objs} == {"Service", "StatefulSet", "PodDisruptionBudget", "DaemonSet", "Deployment"}
    for (kind, name), obj in objs.items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}/{name} against Kubernetes {version}: {e.message} at {list(e.absolute_path)}")


def test_k8s_validation_rejects_broken_manifests():
    sts = manifests()[("StatefulSet", "memkv")]
    typo = copy.deepcopy(sts)
    c = container(typo)
    c["readinessProb"] = c.pop("readinessProbe")
    wrong_type = copy.deepcopy(sts)
    wrong_type["spec"]["replicas"] = "three"
    for bad, what in ((typo, "readinessProb"), (wrong_type, "three")):
        with pytest.raises(kubernetes_validate.ValidationError, match=what):
            kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_statefulset_and_headless_service_agree():
    objs = manifests()
    svc, sts = objs[("Service", "memkv")], objs[("StatefulSet", "memkv")]
    pdb = objs[("PodDisruptionBudget", "memkv")]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"] == labels == sts["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    c = container(sts)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"data": 9900, "admin": 9901}  # the product's ports
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"data": "data", "admin": "admin"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/v1/health", "port": "admin"}, probe
    ann = sts["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == str(ports["admin"]) and ann["prometheus.io/path"] == "/metrics"
    # Every variable is a real node setting with a valid value (the node
    # test below runs them at this machine's sizes); the data dir is the
    # claimed volume.
    assert {e["name"] for e in c["env"]} <= NODE_ENV
    cfg = load_node_config({"data_dir": "/data"}, env={**plain_env(c), "MEMKV_AUTH_KEY": "ab" * 32})
    limit = parse_size(c["resources"]["limits"]["memory"], "the memory limit")  # Kubernetes' Gi is GiB
    assert cfg.dram_capacity == 48 << 30 and cfg.dram_capacity <= limit - (4 << 30)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (mount,) = c["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert c["args"][c["args"].index("--data-dir") + 1] == mount["mountPath"]
    secret = next(e for e in c["env"] if e["name"] == "MEMKV_AUTH_KEY")["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "memkv-auth", "key": "auth_key"}


def test_lmcache_daemonset_reaches_every_memkv_node():
    """The DaemonSet is the LMCache multi-process pattern (host network,
    the host's /dev/shm, no GPU requested) with MemKV as its L2, and its
    server list is exactly the StatefulSet's pods."""
    objs = manifests()
    svc, sts = objs[("Service", "memkv")], objs[("StatefulSet", "memkv")]
    ds, vllm = objs[("DaemonSet", "lmcache-server")], objs[("Deployment", "vllm-deployment")]
    ns = sts["metadata"]["namespace"]
    expect = [f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.{ns}.svc.cluster.local:9900"
              for i in range(sts["spec"]["replicas"])]
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    env = plain_env(c)
    assert {e["name"] for e in c["env"] if e["name"].startswith("MEMKV_")} <= CLIENT_ENV
    cfg = load_client_config(env={k: v for k, v in env.items() if k.startswith("MEMKV_")})
    assert list(cfg.servers) == expect
    # The names and settings of LMCache's pattern (docs/compatibility.md).
    assert ds["metadata"]["namespace"] == vllm["metadata"]["namespace"] == "multi-process"
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v} == {"/dev/shm"}
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert c["command"][-2:] == ["-m", "lmcache.v1.multiprocess.server"]
    args = dict(a.removeprefix("--").split("=", 1) for a in c["args"])
    adapter = json.loads(args["l2-adapter"])
    assert adapter["type"] == "plugin" and adapter["module_path"] == "memkv_lmcache.mp_adapter"
    source = (REPO / "memkv_lmcache" / "mp_adapter.py").read_text()
    assert adapter["class_name"] in {n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}
    licence = next(m for m in c["volumeMounts"] if m["name"] == "memkv-license")
    assert env["MEMKV_LICENSE"].startswith(licence["mountPath"] + "/")
    # vLLM reaches the LMCache server on its own node.
    vc = container(vllm)
    kv = json.loads(next(a for a in vc["args"] if a.startswith("--kv-transfer-config=")).split("=", 1)[1])
    assert kv["kv_connector"] == "LMCacheMPConnector"
    assert kv["kv_connector_extra_config"] == {"lmcache.mp.host": "tcp://$(HOST_IP)", "lmcache.mp.port": int(args["port"])}
    host_ip = next(e for e in vc["env"] if e["name"] == "HOST_IP")
    assert host_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert vc["resources"]["limits"]["nvidia.com/gpu"]


def test_statefulset_command_starts_a_node_and_the_image_health_check_sees_it(tmp_path, started):
    """The image's ENTRYPOINT with the StatefulSet's args and env (volume,
    ports and sizes scaled to this machine) is a serving node, and the
    image's HEALTHCHECK passes while it serves and fails once it stopped."""
    steps = dict(instructions(CONTAINERFILES[0]))  # the last of each instruction: the runtime stage
    entrypoint = json.loads(steps["ENTRYPOINT"])
    assert json.loads(steps["CMD"]) == container(manifests()[("StatefulSet", "memkv")])["args"]
    health = json.loads(re.search(r"\bCMD (\[.*\])$", steps["HEALTHCHECK"]).group(1))
    c = container(manifests()[("StatefulSet", "memkv")])
    args = [str(tmp_path / "data") if a == "/data" else a for a in c["args"]]
    assert entrypoint == ["memkv"]
    env = clean_env(**{**plain_env(c), **small_node_env(MEMKV_AUTH_KEY=generate_auth_key())})
    node = started([MEMKV_BIN, *args], env, int(env["MEMKV_ADMIN_PORT"]), tmp_path / "node.log")
    node.wait_healthy()
    check = [sys.executable if health[0] == "python3" else health[0], *health[1:]]
    assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode == 0
    assert node.stop() == 0
    assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode != 0


# ---------------------------------------------------------------- systemd

def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string(UNIT.read_text())
    return cp


def test_systemd_unit_settings():
    u = unit()
    s = u["Service"]
    assert s["Restart"] == "on-failure" and s["LimitMEMLOCK"] == "infinity"
    assert int(s["LimitNOFILE"]) >= 65536 and s["KillSignal"] == "SIGTERM"
    assert s["EnvironmentFile"] == "/etc/memkv/%i.env"
    assert "/srv/memkv/%i" in u["Unit"]["RequiresMountsFor"] and s["ReadWritePaths"] == "/srv/memkv/%i"
    argv = s["ExecStart"].split()
    assert argv[1] == "server" and argv[argv.index("--data-dir") + 1] == "/srv/memkv/%i"
    assert s["RestartPreventExitStatus"] == "2"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian: systemd)")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    """`systemd-analyze verify` on an instance, with ExecStart pointing at
    this machine's memkv (verify checks the binary exists); any warning
    fails. A typo'd key is caught the same way."""
    text = UNIT.read_text().replace(unit()["Service"]["ExecStart"].split()[0], MEMKV_BIN)

    def verify(unit_text: str) -> subprocess.CompletedProcess:
        (tmp_path / "memkv@.service").write_text(unit_text)
        return subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "memkv@nvme0.service")],
                              capture_output=True, text=True, timeout=60)

    ok = verify(text)
    assert ok.returncode == 0 and not (ok.stdout + ok.stderr).strip(), ok.stdout + ok.stderr
    bad = verify(text.replace("\nRestart=", "\nRestrat="))
    assert "Unknown key" in bad.stdout + bad.stderr and "Restrat" in bad.stdout + bad.stderr


def test_systemd_command_starts_a_node(tmp_path, started):
    """ExecStart as systemd runs it (%i, the credentials directory, the
    example env file) serves; SIGTERM stops it cleanly; a bad setting
    exits 2, which RestartPreventExitStatus= keeps from restarting."""
    example = dict(re.findall(r"^#?\s*(MEMKV_\w+)=(.*)$", UNIT_ENV.read_text(), re.M))
    assert set(example) <= NODE_ENV, sorted(set(example) - NODE_ENV)
    active = dict(re.findall(r"^(MEMKV_\w+)=(.*)$", UNIT_ENV.read_text(), re.M))
    load_node_config({"data_dir": "/srv/memkv/nvme0"}, env={**active, "MEMKV_AUTH_KEY": "ab" * 32})  # valid values
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "auth-key").write_text(generate_auth_key() + "\n")
    drive = tmp_path / "srv-memkv-nvme0"
    argv = [MEMKV_BIN if i == 0 else a.replace("/srv/memkv/%i", str(drive)).replace("%i", "nvme0")
            .replace("${CREDENTIALS_DIRECTORY}", str(creds))
            for i, a in enumerate(unit()["Service"]["ExecStart"].split())]
    drive.mkdir()
    env = clean_env(**{**active, **small_node_env()})
    node = started(argv, env, int(env["MEMKV_ADMIN_PORT"]), tmp_path / "node.log")
    node.wait_healthy()
    assert node.stop(signal.SIGTERM, timeout=float(unit()["Service"]["TimeoutStopSec"])) == 0
    bad = subprocess.run(argv, env={**env, "MEMKV_FSYNC": "sometimes"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == int(unit()["Service"]["RestartPreventExitStatus"]) and "MEMKV_FSYNC" in bad.stderr


# ---------------------------------------------------------------- containers

def test_containerfiles_pass_hadolint():
    hadolint = installed("hadolint")
    for path in CONTAINERFILES:
        r = subprocess.run([str(hadolint), "--no-color", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    # The linter does fail a recipe: an unpinned base image and `cd` in RUN.
    bad = subprocess.run([str(hadolint), "--no-color", "-"], input="FROM python\nRUN cd /src && make\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3006" in bad.stdout and "DL3003" in bad.stdout


def test_containerfiles_copy_everything_the_build_reads():
    """The recipes copy named paths only (never a host build/ tree); those
    must exist and hold every package and source folder the build uses."""
    needed = {"pyproject.toml", "CMakeLists.txt", "README.md"}
    pyproject = (REPO / "pyproject.toml").read_text()
    needed |= set(re.search(r'wheel\.packages\s*=\s*\[(.*?)\]', pyproject).group(1).replace('"', "").replace(" ", "").split(","))
    cmake = re.sub(r"#.*", "", (REPO / "CMakeLists.txt").read_text())
    needed |= {d for d in re.findall(r"\b([a-z_]+)/", cmake) if (REPO / d).is_dir()}
    for path in CONTAINERFILES:
        copied = set()
        for word, rest in instructions(path):
            if word == "COPY" and not rest.startswith("--from"):
                *sources, _dest = rest.split()
                copied |= set(sources)
        assert all((REPO / s).exists() for s in copied), path
        assert needed <= copied, f"{path.name} does not copy {sorted(needed - copied)}"
