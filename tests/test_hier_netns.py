"""Jobs over real separate "hosts": Linux namespaces made by the test, one launcher in each.

Each host has its own network namespace (a veth to a bridge in a switch namespace, addresses
from the 198.18.0.0/15 benchmarking range that exist only inside these namespaces) and its own
IPC and mount namespace with a fresh tmpfs on /dev/shm, so no memory is shared across hosts by
accident. ``shardcore run --nnodes`` starts the ranks of each host. Needs root and iproute2
(CI runs as root); elsewhere the tests say why they skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "hier_netns_worker.py")
PORT = 29517


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _namespaces_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2 / util-linux)"
    probe = f"scp{secrets.token_hex(3)}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode:
        return f"cannot make a network namespace: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """``count`` namespaced hosts joined by a bridge; ``address(h)`` is host h's address."""

    def __init__(self, count: int):
        self.tag = secrets.token_hex(3)
        self.names = [f"sc{self.tag}h{h}" for h in range(count)]
        self.switch = f"sc{self.tag}sw"
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for h, ns in enumerate(self.names):
            _ip("netns", "add", ns)
            a, b = f"sc{self.tag}a{h}", f"sc{self.tag}b{h}"
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            _ip("link", "set", a, "netns", ns)
            _ip("link", "set", b, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", b, "master", "br0")
            _ip("-n", self.switch, "link", "set", b, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(h)}/24", "dev", a)
            _ip("-n", ns, "link", "set", a, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def address(h: int) -> str:
        return f"198.18.0.{h + 1}"

    def start(self, h: int, nnodes: int, nproc: int, args, out: str, comm_timeout: float):
        """Host h's launcher, in its namespaces with its own /dev/shm; after it exits the host
        lists what is left in its /dev/shm into <out>/shm<h>.txt."""
        launcher = [
            sys.executable,
            "-c",
            "import sys; from shardcore.cli import main; sys.exit(main())",
            "run",
            "--nnodes",
            str(nnodes),
            "--node-rank",
            str(h),
            "--master-addr",
            self.address(0),
            "--master-port",
            str(PORT),
            "--comm-timeout",
            str(comm_timeout),
            "-n",
            str(nproc),
            WORKER,
            *args,
        ]
        script = (
            'mount -t tmpfs -o size=512m tmpfs /dev/shm && "$@"; rc=$?; '
            f'ls -A /dev/shm > "{out}/shm{h}.txt"; exit $rc'
        )
        cmd = ["ip", "netns", "exec", self.names[h], "unshare", "--ipc", "--mount",
               "--propagation", "private", "sh", "-c", script, "sh", *launcher]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def close(self) -> None:
        for ns in [*self.names, self.switch]:
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def hosts_factory():
    why = _namespaces_available()
    if why is not None:
        pytest.skip(why)
    made = []

    def make(count: int) -> Hosts:
        h = Hosts(count)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def run_job(hosts: Hosts, layout, scenario: str, tmp_path, comm_timeout: float = 60.0):
    """Start one launcher per host; returns (exit codes, outputs, per-rank records, shm lists)."""
    out = str(tmp_path)
    procs = [
        hosts.start(h, len(layout), n, [scenario, out], out, comm_timeout)
        for h, n in enumerate(layout)
    ]
    codes, outputs = [], []
    for p in procs:
        text, _ = p.communicate(timeout=240)
        codes.append(p.returncode)
        outputs.append(text)
    records = {}
    for name in os.listdir(out):
        if name.startswith("rank"):
            with open(os.path.join(out, name)) as f:
                r = json.load(f)
            records[r["rank"]] = r
    shm = []
    for h in range(len(layout)):
        with open(os.path.join(out, f"shm{h}.txt")) as f:
            shm.append(f.read().split())
    return codes, outputs, records, shm


pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("layout", [[2, 2], [3, 5]])
def test_collectives_across_namespaced_hosts(hosts_factory, tmp_path, layout):
    hosts = hosts_factory(len(layout))
    codes, outputs, records, shm = run_job(hosts, layout, "collectives", tmp_path)
    assert codes == [0] * len(layout), "\n".join(outputs)
    n = sum(layout)
    assert sorted(records) == list(range(n))
    for r in records.values():
        assert r["kind"] == "HierCommunicator"
        assert r["foreign_probes"] == []  # no /dev/shm is shared between hosts
        assert r["value"] == n
        assert r["digests"] == records[0]["digests"]
    assert shm == [[]] * len(layout)
    # bytes on each host's wire against the counters of its ranks (TCP/IP headers and acks
    # add well under 1 % at 8 MiB: 8,408,162 wire bytes for 8,388,608 counted, on 2x2)
    for h in range(len(layout)):
        model = sum(r["inter_sent"] for r in records.values() if r["host"] == h)
        wire = max(r["wire"] for r in records.values() if r["host"] == h)
        assert model > 0
        assert model <= wire <= 1.05 * model + 64 * 1024, (h, wire, model)


def test_a_dead_host_makes_every_surviving_rank_raise(hosts_factory, tmp_path):
    hosts = hosts_factory(2)
    codes, outputs, records, shm = run_job(hosts, [2, 2], "kill_host", tmp_path, comm_timeout=60)
    assert codes[0] != 0 and codes[1] != 0
    for rank in (0, 1):  # host 0's ranks outlive host 1 and raise
        assert records[rank]["error"] in ("PeerFailureError", "CommTimeoutError"), records[rank]
    assert 2 not in records and 3 not in records  # killed before writing anything
    assert shm == [[], []]


def test_a_cut_link_makes_every_rank_raise_within_the_timeout(hosts_factory, tmp_path):
    hosts = hosts_factory(2)
    codes, outputs, records, shm = run_job(hosts, [2, 2], "cut_link", tmp_path, comm_timeout=5)
    assert codes[0] != 0 and codes[1] != 0, "\n".join(outputs)
    assert sorted(records) == [0, 1, 2, 3]
    for r in records.values():
        assert r["error"] in ("PeerFailureError", "CommTimeoutError"), r
    assert shm == [[], []]
