"""Deployment past one machine (deploy/, docs/deployment.md): the Kubernetes manifests against the Kubernetes
schemas, the systemd unit, the Dockerfile's rules, the flags and environment they rely on, and a cluster whose
nodes each have an address of their own in a network namespace."""
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynafast import Client
from dynafast.cli import build_parser
from dynafast.config import NodeConfig
from dynafast.errors import Unavailable
from dynafast.security.access import write_secret
from dynafast.testing.cluster import LocalCluster, NodeProcess, free_port

pytestmark = [pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def node_config(argv, env=None, monkeypatch=None):
    """The NodeConfig `dynafast node ARGV` would run with, given the environment ``env``."""
    for key in [k for k in os.environ if k.startswith("DYNAFAST_")]:
        monkeypatch.delenv(key)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(["node", *argv])
    overrides = {key: getattr(args, key) for key in (
        "listen", "advertise", "data_dir", "node_id", "http", "resp", "zone", "n", "r", "w", "dw", "partitions",
        "sync", "secret_file", "insecure", "users_file", "tls_cert", "tls_key", "tls_ca", "log_level", "log_format")}
    seeds = args.seeds
    overrides["seeds"] = [s.strip() for s in seeds.split(",") if s.strip()] if seeds else None
    return NodeConfig.load(args.config, **overrides)


# -- Kubernetes -------------------------------------------------------------------------------------------------

def manifests():
    yaml = pytest.importorskip("yaml")
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def test_manifests_validate_against_the_kubernetes_schemas_offline(monkeypatch):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = manifests()
    assert {doc["kind"] for _, doc in docs} == {"ConfigMap", "Service", "PodDisruptionBudget", "StatefulSet"}

    # The schemas ship inside the package: validating must not touch the network.
    def no_network(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to reach the network")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    for version in ("1.27.0", kubernetes_validate.latest_version()):
        for name, doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field
    # ... and it does reject what is wrong (a misspelt field, in strict mode)
    name, statefulset = next((n, d) for n, d in docs if d["kind"] == "StatefulSet")
    broken = json.loads(json.dumps(statefulset))
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest_and_makes_the_secret():
    yaml = pytest.importorskip("yaml")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    generated = {g["name"] for g in kustomization["secretGenerator"]}
    statefulset = next(d for _, d in manifests() if d["kind"] == "StatefulSet")
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secret"]["secret"]["secretName"] in generated
    configmap = next(d for _, d in manifests() if d["kind"] == "ConfigMap")
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]


def test_statefulset_runs_nodes_the_way_dynafast_node_reads_them(tmp_path, monkeypatch):
    """The pods' flags are flags of `dynafast node`, with the ConfigMap's TOML they make a valid configuration,
    every pod's seed list is the same, and dynafast-0 finds its own advertised address first in it (what makes
    it start the cluster); the probes ask /health on the HTTP port."""
    docs = dict((d["kind"], d) for _, d in manifests())
    statefulset, configmap = docs["StatefulSet"], docs["ConfigMap"]
    spec = statefulset["spec"]
    headless = [d for _, d in manifests() if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == [spec["serviceName"]]
    assert headless[0]["spec"]["publishNotReadyAddresses"] is True  # seeds resolve before they are ready
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    container = spec["template"]["spec"]["containers"][0]
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    config_file = tmp_path / "dynafast.toml"
    config_file.write_text(configmap["data"]["dynafast.toml"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/data"
    name = statefulset["metadata"]["name"]
    seed_lists = set()
    for ordinal in range(spec["replicas"]):
        pod = f"{name}-{ordinal}"
        argv = [a.replace("$(POD_NAME)", pod).replace("$(POD_NAMESPACE)", "prod") for a in container["args"]]
        assert "--config=/etc/dynafast/dynafast.toml" in argv
        argv = [a.replace("/etc/dynafast/dynafast.toml", str(config_file)) for a in argv]
        config = node_config(argv, monkeypatch=monkeypatch)
        assert config.node_id == pod
        assert config.listen == "0.0.0.0:7101" and config.data_dir == "/data"
        assert config.advertise == f"{pod}.{spec['serviceName']}.prod.svc.cluster.local:7101"
        assert config.secret_file.startswith(mounts["secret"] + "/")
        assert (config.advertise == config.seeds[0]) == (ordinal == 0)
        assert config.advertise in config.seeds
        seed_lists.add(tuple(config.seeds))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["native"] == 7101 and config.http == f"0.0.0.0:{ports['http']}"
        assert config.resp == f"0.0.0.0:{ports['resp']}"
    assert len(seed_lists) == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    pdb = docs["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


# -- systemd ----------------------------------------------------------------------------------------------------

def unit_settings():
    settings = {}
    for line in (DEPLOY / "systemd" / "dynafast.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_systemd_unit_restarts_hardens_and_stops_with_sigterm():
    unit = unit_settings()
    assert unit["Type"] in ("simple", "notify") and unit["Restart"] == "on-failure"
    assert unit["KillSignal"] == "SIGTERM" and float(unit["TimeoutStopSec"]) >= 30
    assert unit["NoNewPrivileges"] == "yes" and unit["ProtectSystem"] == "strict"
    assert unit["ReadWritePaths"] == "/var/lib/dynafast" and int(unit["LimitNOFILE"]) >= 65536
    assert unit["User"] != "root"


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit as shipped, with ExecStart pointing at this checkout's dynafast (verify wants an executable).
    text = (DEPLOY / "systemd" / "dynafast.service").read_text()
    assert "ExecStart=/opt/dynafast/bin/dynafast node" in text
    unit = tmp_path / "dynafast.service"
    unit.write_text(text.replace("/opt/dynafast/bin/dynafast", f"{sys.executable} -m dynafast.cli"))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on an unknown key or a bad value, but names the unit's file in its complaint
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if str(unit) in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_systemd_env_file_is_a_valid_node_configuration(monkeypatch):
    env = {}
    for line in (DEPLOY / "systemd" / "dynafast.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    assert all(key.startswith("DYNAFAST_") for key in env)
    config = node_config([], env, monkeypatch)
    assert config.node_id == env["DYNAFAST_NODE_ID"] and config.advertise == env["DYNAFAST_ADVERTISE"]
    assert config.seeds[0] == config.advertise and config.secret_file == env["DYNAFAST_SECRET_FILE"]
    assert config.data_dir == unit_settings()["ReadWritePaths"]


# -- the container image ------------------------------------------------------------------------------------------

def dockerfile_stages():
    """[(stage name or None, [(instruction, arguments)])], line continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.search(r"\sAS\s+(\S+)", rest, re.IGNORECASE)
            stages.append((match.group(1) if match else None, []))
        elif stages:
            stages[-1][1].append((instruction, rest.strip()))
    return stages


def test_dockerfile_final_stage_fetches_nothing_and_runs_unprivileged():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    builder, final = stages[0], stages[-1][1]
    assert any(i == "RUN" and "pip wheel" in a for i, a in builder[1]), "the builder builds the wheels"
    fetchers = re.compile(r"\b(curl|wget|git|apt-get|apt|apk|easy_install|pip download)\b|https?://")
    runs = [a for i, a in final if i == "RUN"]
    assert runs
    for command in runs:
        assert not fetchers.search(command), f"the final stage fetches from the network: {command}"
        for pip in re.findall(r"pip3? install[^&;]*", command):
            # only the wheels built in the builder stage, never an index
            assert "--no-index" in pip and "--find-links" in pip, pip
            assert "--index-url" not in pip and "--extra-index-url" not in pip
        if "pip" in command:
            assert f"from={builder[0]}" in command or any(i == "COPY" and f"--from={builder[0]}" in a
                                                           for i, a in final)
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(i == "HEALTHCHECK" and "/health" in a for i, a in final)
    healthcheck = next(a for i, a in final if i == "HEALTHCHECK")
    assert "curl" not in healthcheck and "urllib" in healthcheck
    assert any(i == "VOLUME" and "/data" in a for i, a in final)
    assert json.loads(next(a for i, a in final if i == "ENTRYPOINT")) == ["dynafast", "node"]
    exposed = {int(p) for i, a in final if i == "EXPOSE" for p in a.split()}
    assert {7101, 8101} <= exposed


def test_dockerfile_environment_is_a_valid_node_configuration(monkeypatch):
    final = dockerfile_stages()[-1][1]
    env = {}
    for instruction, arguments in final:
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(arguments))
    assert env["DYNAFAST_DATA_DIR"] == "/data"
    exposed = {int(p) for i, a in final if i == "EXPOSE" for p in a.split()}
    config = node_config([], {k: v for k, v in env.items() if k.startswith("DYNAFAST_")}, monkeypatch)
    ports = {int(address.rsplit(":", 1)[1]) for address in (config.listen, config.http, config.resp)}
    assert ports == exposed


def test_dockerignore_keeps_host_builds_out():
    ignore = (ROOT / ".dockerignore").read_text()
    assert "src/**/*.so" in ignore


# -- `dynafast node` as the deployments run it --------------------------------------------------------------------

def test_node_flags_fall_back_on_the_environment(monkeypatch):
    env = {"DYNAFAST_NODE_ID": "db1", "DYNAFAST_LISTEN": "0.0.0.0:7101", "DYNAFAST_ADVERTISE": "db1.example:7101",
           "DYNAFAST_SEEDS": "db1.example:7101,db2.example:7101", "DYNAFAST_N": "5", "DYNAFAST_R": "3",
           "DYNAFAST_INSECURE": "true"}
    config = node_config([], env, monkeypatch)
    assert (config.node_id, config.listen, config.advertise) == ("db1", "0.0.0.0:7101", "db1.example:7101")
    assert config.seeds == ["db1.example:7101", "db2.example:7101"] and (config.n, config.r) == (5, 3)
    assert config.insecure is True
    # a flag on the command line wins over the environment
    assert node_config(["--node-id", "other", "--n", "4"], env, monkeypatch).node_id == "other"
    assert node_config(["--n", "4"], env, monkeypatch).n == 4
    assert node_config([], {**env, "DYNAFAST_INSECURE": "0"}, monkeypatch).insecure is False
    # DYNAFAST_TLS_CA is the CA client verbs check nodes with: a node started from the same shell ignores it
    assert node_config([], {**env, "DYNAFAST_TLS_CA": "/nowhere/ca.pem"}, monkeypatch).tls_ca == ""
    # nodes that `dynafast local` and LocalCluster start get every flag and ignore what the shell exports
    assert node_config([], {**env, "DYNAFAST_FLAGS_FROM_ENV": "0"}, monkeypatch).node_id != "db1"


@pytest.mark.cluster
def test_a_local_cluster_ignores_node_variables_the_shell_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAFAST_N", "1")  # would make every key single-copy (the default is 3)
    monkeypatch.setenv("DYNAFAST_SEEDS", "127.0.0.1:1")  # would keep the first node from ever starting
    with LocalCluster(2, base_dir=tmp_path) as cluster:
        with Client(cluster.addresses) as client:
            status = client.status()
            assert status["n"] == 3 and len(status["members"]) == 2


@pytest.mark.cluster
def test_nodes_sharing_one_seed_list_form_one_cluster(tmp_path):
    """Every node started at once with the same seed list, as the StatefulSet's pods are: the first seed starts
    the cluster (no other seed knows of one), the others join it. The first seed restarted with its data lost
    joins that cluster again instead of starting one of its own."""
    ports = set()
    while len(ports) < 3:
        ports.add(free_port())
    addresses = [f"127.0.0.1:{port}" for port in sorted(ports)]
    nodes = [NodeProcess(f"n{i + 1}", tmp_path / f"n{i + 1}", port=int(address.rsplit(":", 1)[1]), seeds=addresses,
                         log_dir=tmp_path, args=["--partitions", "16"])
             for i, address in enumerate(addresses)]
    try:
        for node in reversed(nodes):  # the first seed last: the others wait for it
            node.start(wait=False)
        for node in nodes:
            node.wait_ready(timeout=40)
        with Client(addresses) as client:
            def members(address):
                try:
                    return sorted((m["id"], m["state"]) for m in client.status(address)["members"])
                except Unavailable:
                    return None

            def formed():
                deadline = time.monotonic() + 30
                while any(members(a) != expected for a in addresses) and time.monotonic() < deadline:
                    time.sleep(0.2)
                return [members(a) for a in addresses]
            expected = [("n1", "up"), ("n2", "up"), ("n3", "up")]
            assert formed() == [expected] * 3
            client.put(b"k", b"v")
            assert client.get(b"k").value == b"v"

            nodes[0].stop()
            nodes[0].wipe()
            nodes[0].start(wait=False)
            nodes[0].wait_ready(timeout=40)
            assert formed() == [expected] * 3
        with Client([addresses[0]], partition_aware=False) as through_n1:
            assert through_n1.get(b"k").value == b"v"
    finally:
        for node in nodes:
            node.stop()


# -- a cluster across network namespaces --------------------------------------------------------------------------

# Run inside the client's namespace: requests through given nodes, or waiting for a member's state.
CLIENT_SCRIPT = r"""
import json, sys, time
from dynafast import Client
from dynafast.errors import DynafastError

task = json.loads(sys.argv[1])
out = {"errors": []}
if task["do"] == "io":
    for coordinator, keys in task["write"].items():
        with Client([coordinator], partition_aware=False, timeout=5.0) as client:
            for key in keys:
                try:
                    client.put(key.encode(), ("value of " + key).encode(), w=2)
                except DynafastError as exc:
                    out["errors"].append(f"put {key} through {coordinator}: {exc!r}")
    for coordinator in task["read"]:
        with Client([coordinator], partition_aware=False, timeout=5.0) as client:
            for key in task["keys"]:
                try:
                    value = client.get(key.encode(), r=2).value
                except DynafastError as exc:
                    out["errors"].append(f"get {key} through {coordinator}: {exc!r}")
                    continue
                if value != ("value of " + key).encode():
                    out["errors"].append(f"get {key} through {coordinator}: {value!r}")
else:  # wait until every asked node shows each named member in the state wanted
    deadline = time.monotonic() + task["timeout"]
    while True:
        seen = {}
        for address in task["ask"]:
            try:
                with Client([address], partition_aware=False, timeout=2.0) as client:
                    seen[address] = {m["id"]: m["state"] for m in client.status(address)["members"]}
            except DynafastError as exc:
                seen[address] = repr(exc)
        out["seen"] = seen
        if all(isinstance(s, dict) and all(s.get(n) == st for n, st in task["want"].items())
               for s in seen.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
print(json.dumps(out))
"""


class Namespaces:
    """Network namespaces for one test: a switch (a bridge in a namespace of its own, so the host's network is
    untouched), and hosts wired to it by veth pairs, each with one address of a private /24 and a hosts file
    (``ip netns exec`` shows /etc/netns/NAME/hosts as /etc/hosts)."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.prefix = f"df{tag}"
        self.subnet = f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(250) + 1}"
        self.switch = f"{self.prefix}sw"
        self.hosts: dict[str, str] = {}  # namespace -> address
        self.created: list[str] = []

    @staticmethod
    def ip(*args, ns=None):
        cmd = ["ip", *(("netns", "exec", ns, "ip") if ns else ()), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")

    def up(self, count: int) -> None:
        self._add(self.switch)
        self.ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        self.ip("link", "set", "br0", "up", ns=self.switch)
        for index in [*range(1, count + 1), 100]:
            ns = f"{self.prefix}h{index}"
            self._add(ns)
            port = f"p{index}"
            self.ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
            self.ip("link", "set", port, "master", "br0", ns=self.switch)
            self.ip("link", "set", port, "up", ns=self.switch)
            self.ip("addr", "add", f"{self.subnet}.{index}/24", "dev", "eth0", ns=ns)
            self.ip("link", "set", "eth0", "up", ns=ns)
            self.ip("link", "set", "lo", "up", ns=ns)
            self.hosts[ns] = f"{self.subnet}.{index}"

    def _add(self, ns: str) -> None:
        self.ip("netns", "add", ns)
        self.created.append(ns)
        Path("/etc/netns", ns).mkdir(parents=True, exist_ok=True)

    def write_hosts(self, names: dict[str, str]) -> None:
        """Every namespace's /etc/hosts: localhost and ``names`` (name -> address). Written in place: a process
        already running in the namespace sees the new names."""
        text = "127.0.0.1 localhost\n" + "".join(f"{address} {name}\n" for name, address in names.items())
        for ns in self.hosts:
            with open(Path("/etc/netns", ns, "hosts"), "w") as f:
                f.write(text)

    def link(self, index: int, up: bool) -> None:
        """Plug host ``index``'s cable in or out, at the switch."""
        self.ip("link", "set", f"p{index}", "up" if up else "down", ns=self.switch)

    def run_python(self, ns: str, code: str, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def down(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=15)
            shutil.rmtree(Path("/etc/netns", ns), ignore_errors=True)


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    probe = f"dfprobe{secrets.token_hex(3)}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=15)
    if done.returncode:
        return f"cannot create network namespaces here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=15)
    return None


@pytest.mark.cluster
def test_three_nodes_in_network_namespaces_survive_a_cut_link(tmp_path):
    """Three nodes, each in its own network namespace with its own address and a DNS name, configured as the
    container image and the StatefulSet configure them (environment, listening on 0.0.0.0, advertising the name,
    one seed list, a cluster secret). Requests go through every node from a fourth host; with one node's link cut
    the other two keep serving with W=2 and mark it down; with the link back it is up again and serves."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = Namespaces()
    secret = tmp_path / "secret"
    write_secret(secret)
    nodes: list[NodeProcess] = []
    try:
        net.up(3)
        client_ns = f"{net.prefix}h100"
        names = {f"n{i}.{net.prefix}.test": f"{net.subnet}.{i}" for i in (1, 2, 3)}
        advertised = [f"{name}:7101" for name in names]
        # n1's name does not resolve yet: n2 and n3 start first and must keep trying their seeds
        net.write_hosts({name: address for name, address in names.items() if not name.startswith("n1.")})
        for i in (1, 2, 3):
            ns = f"{net.prefix}h{i}"
            nodes.append(NodeProcess(
                f"n{i}", tmp_path / f"n{i}", host="0.0.0.0", port=7101, log_dir=tmp_path, ready_timeout=40,
                command=("ip", "netns", "exec", ns, sys.executable, "-m", "dynafast.cli"),
                args=["--partitions", "16"],
                # configured through the environment, as the image is (NodeProcess turns that off by default)
                env={"DYNAFAST_FLAGS_FROM_ENV": "1",
                     "DYNAFAST_ADVERTISE": advertised[i - 1], "DYNAFAST_SEEDS": ",".join(advertised),
                     "DYNAFAST_HTTP": "0.0.0.0:8101", "DYNAFAST_SECRET_FILE": str(secret),
                     "PYTHONPATH": os.pathsep.join(sys.path)}))
        nodes[1].start(wait=False)
        nodes[2].start(wait=False)
        time.sleep(1.0)
        net.write_hosts(names)
        nodes[0].start(wait=False)
        for node in nodes:
            assert node.wait_ready() == advertised[int(node.node_id[1:]) - 1]

        def client(task, timeout=60.0):
            return json.loads(net.run_python(client_ns, CLIENT_SCRIPT, json.dumps(task), timeout=timeout))

        everyone_up = {"n1": "up", "n2": "up", "n3": "up"}
        waited = client({"do": "wait", "ask": advertised, "want": everyone_up, "timeout": 30})
        assert all(seen == everyone_up for seen in waited["seen"].values()), waited
        keys = [f"key-{i}" for i in range(12)]
        result = client({"do": "io", "write": {a: keys[i::3] for i, a in enumerate(advertised)}, "read": advertised,
                         "keys": keys})
        assert result["errors"] == []
        # /health answers on the node's own address, as probes and the image's HEALTHCHECK ask it
        health = net.run_python(client_ns, "import sys, urllib.request; "
                                "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
                                f"http://{net.subnet}.2:8101/health")
        assert json.loads(health)["node"] == "n2"

        net.link(3, up=False)
        cut = client({"do": "wait", "ask": advertised[:2], "want": {"n3": "down"}, "timeout": 30})
        assert all(seen.get("n3") == "down" for seen in cut["seen"].values()), cut
        more = [f"cut-{i}" for i in range(8)]
        result = client({"do": "io", "write": {advertised[0]: more[::2], advertised[1]: more[1::2]},
                         "read": advertised[:2], "keys": keys + more})
        assert result["errors"] == []
        assert nodes[2].is_running()

        net.link(3, up=True)
        back = client({"do": "wait", "ask": advertised, "want": everyone_up, "timeout": 30})
        assert all(seen == everyone_up for seen in back["seen"].values()), back
        result = client({"do": "io", "write": {}, "read": [advertised[2]], "keys": keys + more})
        assert result["errors"] == []
    finally:
        for node in nodes:
            node.stop()
        net.down()
