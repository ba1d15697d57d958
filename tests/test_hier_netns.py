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
import subprocess
import sys

import pytest

from shardcore.bench.hosts import NamespacedHosts, unavailable

pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "hier_netns_worker.py")
PORT = 29517


def start_host(
    hosts: NamespacedHosts, h: int, nnodes: int, nproc: int, args, out: str, comm_timeout: float
):
    """Host h's launcher; after it exits, what is left in its /dev/shm goes to <out>/shm<h>.txt."""
    command = hosts.launcher(h, nnodes, nproc, [WORKER, *args], PORT, comm_timeout)
    return hosts.start(
        h, command, f"{out}/shm{h}.txt", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture
def hosts_factory():
    why = unavailable()
    if why is not None:
        pytest.skip(why)
    made = []

    def make(count: int) -> NamespacedHosts:
        h = NamespacedHosts(count)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def run_job(hosts: NamespacedHosts, layout, scenario: str, tmp_path, comm_timeout: float = 60.0):
    """Start one launcher per host; returns (exit codes, outputs, per-rank records, shm lists)."""
    out = str(tmp_path)
    procs = [
        start_host(hosts, h, len(layout), n, [scenario, out], out, comm_timeout)
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


def test_generate_across_namespaced_hosts(hosts_factory, tmp_path):
    """shardcore generate --nnodes 2 (python -m shardcore.runtime.distributed under shardcore run
    --nnodes 2): TP inside each host, PP across; tokens equal the one-process run, and every
    rank's counters, between hosts too, equal the prediction."""
    from runtime_fixtures import make_checkpoint, prompts

    from shardcore.runtime import generate

    ckpt = make_checkpoint(tmp_path / "qwen3", "qwen3")
    ids = prompts(2, 5)
    reference = generate(ckpt, ids, max_new_tokens=3)
    hosts = hosts_factory(2)
    target = [
        "-m",
        "shardcore.runtime.distributed",
        ckpt,
        "-tp",
        "2",
        "-pp",
        "2",
        "--max-new-tokens",
        "3",
        "--json",
    ]
    prompt_args = []
    for row in ids:
        prompt_args += ["--prompt-ids", ",".join(str(int(t)) for t in row)]
    target += prompt_args
    # host 0 through `shardcore generate --nnodes`, host 1 through `shardcore run --nnodes -m
    # shardcore.runtime.distributed`: the two entry points of one job
    generate = [
        sys.executable,
        "-c",
        "import sys; from shardcore.cli import main; sys.exit(main())",
        "generate",
        ckpt,
        *prompt_args,
        "-tp",
        "2",
        "-pp",
        "2",
        "--max-new-tokens",
        "3",
        "--json",
        "--nnodes",
        "2",
        "--node-rank",
        "0",
        "--master-addr",
        hosts.address(0),
        "--master-port",
        str(PORT),
    ]
    commands = [generate, hosts.launcher(1, 2, 2, target, PORT, 60.0)]
    procs = [
        hosts.start(
            h,
            commands[h],
            f"{tmp_path}/shm{h}.txt",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in range(2)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    report = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert report["tokens"] == reference.tokens.tolist()
    assert report["hosts"] == [0, 0, 1, 1]
    crossed = 0
    for got, want in zip(report["traffic"], report["predicted"]):
        for kind in got:
            for key in ("calls", "sent", "recv", "inter_sent", "inter_recv"):
                assert got[kind][key] == want[kind][key], (kind, key)
            crossed += got[kind]["inter_sent"]
    assert crossed > 0  # the pipeline's activations and token ids cross hosts
    for h in range(2):
        with open(f"{tmp_path}/shm{h}.txt") as f:
            assert f.read().split() == []


def test_bench_hosts_runs_and_counts_the_model(hosts_factory, tmp_path):
    """shardcore bench hosts (smallest run): a row per size, bytes per rank as the model says."""
    from shardcore.cli import main

    hosts_factory(1)  # only for the skip when namespaces cannot be made
    out = tmp_path / "rows.json"
    code = main(
        [
            "bench",
            "hosts",
            "--hosts",
            "2",
            "-n",
            "2",
            "--sizes",
            "4K,64K",
            "--iters",
            "2",
            "--rate",
            "1gbit",
            "--delay",
            "",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert [r["bytes"] for r in result["rows"]] == [4096, 65536]
    for r in result["rows"]:
        # 2 hosts of 2: two-level 2(H-1)/H * S/L = S/2; flat ring over 4: 2*3/4 * S
        assert r["hier_inter_bytes"] == r["bytes"] // 2
        assert r["flat_inter_bytes"] == 3 * r["bytes"] // 2
        assert r["hier_s"] > 0 and r["flat_s"] > 0


def test_torchrun_init_process_group_is_hierarchical(hosts_factory, tmp_path):
    """torchrun --nnodes 2 --nproc-per-node 2 on two namespaced hosts: init_process_group("shardcore")
    gets the two-level communicator, and torch's collectives give the right answers."""
    hosts = hosts_factory(2)
    worker = os.path.join(HERE, "hier_torchrun_worker.py")
    procs = []
    for h in range(2):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node-rank",
            str(h),
            "--nproc-per-node",
            "2",
            "--master-addr",
            hosts.address(0),
            "--master-port",
            str(PORT + 1),
            worker,
            str(tmp_path),
        ]
        procs.append(
            hosts.start(
                h,
                command,
                f"{tmp_path}/shm{h}.txt",
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    for rank in range(4):
        with open(tmp_path / f"rank{rank}.json") as f:
            r = json.load(f)
        assert r["kinds"] == ["HierCommunicator", "HierCommunicator"]
        assert r["x"] == [float(i * 10) for i in range(5)]
        assert r["parts"] == [[q, q] for q in range(4)]
    for h in range(2):
        with open(f"{tmp_path}/shm{h}.txt") as f:
            assert f.read().split() == []


def test_bench_hosts_generate_compares_with_all_gloo(hosts_factory, tmp_path, capsys):
    """shardcore bench hosts --generate: both runs give the same tokens, and the two-level run
    sends less through gloo than the run with every collective on gloo."""
    from runtime_fixtures import make_checkpoint

    from shardcore.cli import main

    hosts_factory(1)  # only for the skip when namespaces cannot be made
    ckpt = make_checkpoint(tmp_path / "qwen3", "qwen3")
    out = tmp_path / "generate.json"
    capsys.readouterr()
    args = [
        "bench",
        "hosts",
        "--generate",
        ckpt,
        "--hosts",
        "2",
        "-n",
        "2",
        "-tp",
        "2",
        "-pp",
        "2",
        "--new-tokens",
        "3",
        "--prompt-len",
        "5",
        "--rate",
        "1gbit",
        "--delay",
        "",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    assert "tokens equal: yes" in capsys.readouterr().out
    result = json.loads(out.read_text())
    two_level, flat = result["two_level"], result["all_gloo"]
    assert two_level["tokens"] == flat["tokens"]
    # (times are reported, not judged: a test does not depend on speed)
    assert isinstance(two_level["decode_ms_per_token"], float)

    def through_gloo(report):
        return sum(v["inter_sent"] for rank in report["traffic"] for v in rank.values())

    assert 0 < through_gloo(two_level) < through_gloo(flat)
