"""Several "hosts" on one Linux machine, and the all-reduce benchmark across them.

``NamespacedHosts(count)`` makes each host a network namespace (a veth to a bridge in a switch
namespace; addresses from 198.18.0.0/15, the benchmarking range, that exist only inside those
namespaces), optionally with the link shaped by ``tc netem``; ``start`` runs a command there in
its own IPC and mount namespace with a fresh tmpfs on /dev/shm, so no memory is shared between
hosts. Needs root, iproute2 and util-linux's unshare.

    sudo python -m shardcore.bench.hosts --hosts 2 -n 4 --rate 10gbit --delay 50us

times the two-level all-reduce against one flat gloo ring over all ranks (both on the same
communicator, alternating, in one job) and prints the ratio per size with the bytes each sent
between hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

_LAUNCH = "import sys; from shardcore.cli import main; sys.exit(main())"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def unavailable() -> str | None:
    """Why namespaced hosts cannot be made here, or None."""
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


class NamespacedHosts:
    """``count`` hosts joined by a bridge; ``address(h)`` is host h's address."""

    def __init__(self, count: int, rate: str | None = None, delay: str | None = None):
        self.tag = secrets.token_hex(3)
        self.names = [f"sc{self.tag}h{h}" for h in range(count)]
        self.switch = f"sc{self.tag}sw"
        self.devices: list[str] = []
        self.shaping = "none"
        try:
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
                self.devices.append(a)
                if rate or delay:
                    self.shaping = self._shape(ns, a, rate, delay)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _shape(ns: str, dev: str, rate: str | None, delay: str | None) -> str:
        """Shape the egress of ``dev``: netem (delay and rate) where the kernel has it, else a
        token bucket for the rate alone. Returns what was applied."""
        tc = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root"]
        netem = ["netem"] + (["delay", delay] if delay else []) + (["rate", rate] if rate else [])
        if subprocess.run(tc + netem, capture_output=True).returncode == 0:
            return " ".join(netem)
        if not rate:
            raise RuntimeError("tc netem is not available in this kernel: no delay can be applied")
        # a bucket of 256 KiB: a few 64 KiB TSO segments, so the rate holds at 10 Gbit/s
        subprocess.run(
            tc + ["tbf", "rate", rate, "burst", "256kb", "latency", "50ms"],
            check=True,
            capture_output=True,
        )
        return f"tbf rate {rate} (netem unavailable: no added delay)"

    @staticmethod
    def address(h: int) -> str:
        """Host h's address (only inside these namespaces)."""
        return f"198.18.0.{h + 1}"

    def start(self, h: int, command: list[str], shm_listing: str | None = None, **popen):
        """Run ``command`` on host h with its own /dev/shm; with ``shm_listing``, what is left
        in that /dev/shm afterwards is written to the file of that name."""
        after = f'ls -A /dev/shm > "{shm_listing}"; ' if shm_listing else ""
        script = f'mount -t tmpfs -o size=512m tmpfs /dev/shm && "$@"; rc=$?; {after}exit $rc'
        cmd = [
            "ip",
            "netns",
            "exec",
            self.names[h],
            "unshare",
            "--ipc",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            *command,
        ]
        return subprocess.Popen(cmd, **popen)

    def launcher(
        self,
        h: int,
        nnodes: int,
        nproc: int,
        target: list[str],
        port: int,
        comm_timeout: float | None = None,
    ) -> list[str]:
        """The ``shardcore run --nnodes`` command of host h."""
        cmd = [
            sys.executable,
            "-c",
            _LAUNCH,
            "run",
            "--nnodes",
            str(nnodes),
            "--node-rank",
            str(h),
            "--master-addr",
            self.address(0),
            "--master-port",
            str(port),
            "-n",
            str(nproc),
        ]
        if comm_timeout is not None:
            cmd += ["--comm-timeout", str(comm_timeout)]
        return cmd + target

    def close(self) -> None:
        """Remove every namespace (and with them the links)."""
        for ns in [*self.names, self.switch]:
            _ip("netns", "del", ns, check=False)

    def __enter__(self) -> NamespacedHosts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the benchmark ----------------------------------------------------------------------------
def _worker(out: str, sizes: list[int], iters: int) -> None:
    """One rank: alternate the two algorithms at every size; rank 0 writes the medians."""
    import time

    import numpy as np

    import shardcore

    comm = shardcore.init()
    rows = []
    for nbytes in sizes:
        x = np.ones(max(1, nbytes // 4), np.float32)
        times: dict[str, list[float]] = {"hierarchical": [], "flat": []}
        inter = {}
        comm.all_reduce(x, algorithm="hierarchical")  # warm-up: connections, pages
        comm.all_reduce(x, algorithm="flat")
        for i in range(iters):
            for algo in ("hierarchical", "flat") if i % 2 == 0 else ("flat", "hierarchical"):
                comm.barrier()
                comm.reset_traffic()
                t0 = time.perf_counter()
                comm.all_reduce(x, algorithm=algo)
                times[algo].append(time.perf_counter() - t0)
                inter[algo] = comm.traffic()["all_reduce"]["inter_sent"]
        # the slowest rank's time is the collective's time
        med = {a: float(np.median(v)) for a, v in times.items()}
        slow = comm.all_gather(np.array([med["hierarchical"], med["flat"]], np.float64))
        slow = slow.reshape(comm.size, 2).max(axis=0)
        rows.append(
            {
                "bytes": x.nbytes,
                "hier_s": float(slow[0]),
                "flat_s": float(slow[1]),
                "hier_inter_bytes": inter["hierarchical"],
                "flat_inter_bytes": inter["flat"],
            }
        )
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump({"ranks": comm.size, "topology": comm.topology.describe(), "rows": rows}, f)
    comm.barrier()
    comm.close()


def _run_generate(args) -> int:
    """Decode time per token across namespaced hosts: two-level, then all on gloo."""
    import numpy as np

    with open(os.path.join(args.generate, "config.json")) as f:
        vocab = int(json.load(f)["vocab_size"])
    ids = np.random.default_rng(0).integers(0, vocab, args.prompt_len)
    world = args.tp * args.pp
    if world != args.hosts * args.nproc:
        print(
            f"shardcore bench hosts: -tp*-pp = {world} must equal --hosts*-n = "
            f"{args.hosts * args.nproc}",
            file=sys.stderr,
        )
        return 2
    target = [
        "-m",
        "shardcore.runtime.distributed",
        args.generate,
        "--prompt-ids",
        ",".join(str(int(t)) for t in ids),
        "-tp",
        str(args.tp),
        "-pp",
        str(args.pp),
        "--max-new-tokens",
        str(args.new_tokens),
        "--json",
        "--timed",
    ]
    reports = {}
    with NamespacedHosts(args.hosts, args.rate or None, args.delay or None) as hosts:
        shaping = hosts.shaping
        for label, host_id in (("two-level", None), ("all gloo", "rank")):
            env = dict(os.environ)
            env.pop("SHARDCORE_HOST_ID", None)
            if host_id:
                env["SHARDCORE_HOST_ID"] = host_id
            procs = [
                hosts.start(
                    h,
                    hosts.launcher(h, args.hosts, args.nproc, target, 29534),
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for h in range(args.hosts)
            ]
            outs = [proc.communicate()[0] for proc in procs]
            if any(proc.returncode for proc in procs):
                print(f"shardcore bench hosts: the {label} run failed", file=sys.stderr)
                return 1
            reports[label] = json.loads(outs[0].strip().splitlines()[-1])
    a, b = reports["two-level"], reports["all gloo"]
    same = a["tokens"] == b["tokens"]
    inter = [sum(v.get("inter_sent", 0) for v in r["traffic"][0].values()) for r in (a, b)]
    print(
        f"decode, tp={args.tp} pp={args.pp} over {args.hosts} hosts of {args.nproc}, links: "
        f"{shaping}; {args.new_tokens} new tokens after {args.prompt_len}, slowest rank"
    )
    print(
        f"two-level: {a['decode_ms_per_token']:.2f} ms/token; all on gloo: "
        f"{b['decode_ms_per_token']:.2f} ms/token; speed-up "
        f"{b['decode_ms_per_token'] / a['decode_ms_per_token']:.2f}x; tokens equal: "
        f"{'yes' if same else 'NO'}; rank 0 bytes through gloo: {inter[0]} vs {inter[1]}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shaping": shaping, "two_level": a, "all_gloo": b}, f)
    return 0 if same else 1


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


_HELP = "all-reduce across namespaced hosts on this machine: two-level against flat gloo"
_DESCRIPTION = (
    "All-reduce across hosts made of Linux namespaces on this machine (root, iproute2): "
    "shardcore's two-level algorithm against one flat gloo ring over all ranks, alternating on "
    "one communicator, with each host's link shaped by tc (netem, or a token bucket)."
)


def _add_arguments(p) -> None:
    from ..cliargs import int_at_least, output_file

    p.add_argument(
        "--hosts", type=int_at_least(2), default=2, help="number of hosts, >= 2 (default 2)"
    )
    p.add_argument(
        "-n", "--nproc", type=int_at_least(1), default=4, help="ranks per host (default 4)"
    )
    p.add_argument(
        "--sizes", default="64K,1M,16M,64M", help="message sizes (default 64K,1M,16M,64M)"
    )
    p.add_argument(
        "--iters",
        type=int_at_least(1),
        default=10,
        help="timed calls per size and algorithm (default 10)",
    )
    p.add_argument(
        "--rate", default="10gbit", help="rate of each host's link, as tc writes it ('' for none)"
    )
    p.add_argument(
        "--delay", default="50us", help="added delay of each host's link, netem only ('' for none)"
    )
    p.add_argument(
        "--json", type=output_file, default=None, help="also write the rows to this file"
    )
    p.add_argument(
        "--generate",
        metavar="CHECKPOINT",
        default=None,
        help="instead of the all-reduce sweep: decode time per token of this checkpoint, "
        "two-level against every collective on gloo (each rank its own host)",
    )
    p.add_argument("-tp", type=int_at_least(1), default=4, help="with --generate (default 4)")
    p.add_argument("-pp", type=int_at_least(1), default=2, help="with --generate (default 2)")
    p.add_argument(
        "--new-tokens", type=int_at_least(2), default=16, help="with --generate (default 16)"
    )
    p.add_argument(
        "--prompt-len", type=int_at_least(1), default=16, help="with --generate (default 16)"
    )


def register(subparsers) -> None:
    """Add ``shardcore bench hosts``."""
    p = subparsers.add_parser("hosts", help=_HELP, description=_DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=lambda args: _run(args, p))


def main(argv: list[str] | None = None) -> int:
    """``python -m shardcore.bench.hosts``: the same as ``shardcore bench hosts``."""
    p = argparse.ArgumentParser(prog="python -m shardcore.bench.hosts", description=_DESCRIPTION)
    _add_arguments(p)
    p.add_argument("--worker", nargs=2, metavar=("OUT", "SIZES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], [int(s) for s in args.worker[1].split(",")], args.iters)
        return 0
    return _run(args, p)


def _run(args, p) -> int:
    try:
        sizes = [_parse_size(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"argument --sizes: sizes like 64K,1M expected, got {args.sizes!r}")
    why = unavailable()
    if why is not None:
        print(f"shardcore bench hosts: {why}", file=sys.stderr)
        return 2
    if args.generate is not None:
        return _run_generate(args)
    tmp = tempfile.mkdtemp(prefix="shardcore-hosts-")
    out = os.path.join(tmp, "rows.json")
    target = [
        "-m",
        "shardcore.bench.hosts",
        "--iters",
        str(args.iters),
        "--worker",
        out,
        ",".join(str(s) for s in sizes),
    ]
    with NamespacedHosts(args.hosts, args.rate or None, args.delay or None) as hosts:
        shaping = hosts.shaping
        procs = [
            hosts.start(h, hosts.launcher(h, args.hosts, args.nproc, target, 29533))
            for h in range(args.hosts)
        ]
        codes = [proc.wait() for proc in procs]
    if any(codes) or not os.path.exists(out):
        print(
            f"shardcore bench hosts: a host's launcher failed: exit codes {codes}", file=sys.stderr
        )
        return 1
    with open(out) as f:
        result = json.load(f)
    print(
        f"all_reduce, {result['topology']}, links: {shaping}; median of {args.iters}, slowest rank"
    )
    print(
        f"{'bytes':>10} {'two-level us':>13} {'flat gloo us':>13} {'speed-up':>9} "
        f"{'inter B/rank':>13} {'flat gloo B/rank':>18}"
    )
    for r in result["rows"]:
        print(
            f"{r['bytes']:>10} {r['hier_s'] * 1e6:>13.1f} {r['flat_s'] * 1e6:>13.1f} "
            f"{r['flat_s'] / r['hier_s']:>8.2f}x {r['hier_inter_bytes']:>13} "
            f"{r['flat_inter_bytes']:>18}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(result, shaping=shaping), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
