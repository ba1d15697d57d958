"""A rank of the namespaced-host tests (tests/test_hier_netns.py), started by shardcore run.

argv: scenario, output directory. Writes <out>/rank<R>.json with what it saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shardcore  # noqa: E402


def wire_bytes() -> int:
    """Bytes this host's network namespace has sent on its interfaces other than loopback."""
    total = 0
    for dev in os.listdir("/sys/class/net"):
        if dev != "lo":
            with open(f"/sys/class/net/{dev}/statistics/tx_bytes") as f:
                total += int(f.read())
    return total


def main() -> None:
    scenario, out = sys.argv[1], sys.argv[2]
    comm = shardcore.init()
    record = {"kind": type(comm).__name__, "rank": comm.rank, "size": comm.size}
    record["host"] = getattr(comm, "host", None)
    try:
        if scenario == "collectives":
            from test_hier import _collectives

            # each host has its own /dev/shm: a file made on one is not seen on another
            probe = f"/dev/shm/sc-probe-{comm.host}"
            if comm.local_rank == 0:
                open(probe, "w").close()
            comm.barrier()
            record["foreign_probes"] = sorted(
                p
                for p in os.listdir("/dev/shm")
                if p.startswith("sc-probe-") and p != os.path.basename(probe)
            )
            comm.barrier()
            if comm.local_rank == 0:
                os.unlink(probe)
            record["digests"] = _collectives(comm, 11)
            comm.chunk_bytes = 4 << 20  # back to the default (the checks made it tiny)
            # the bytes on the wire against the counters, for one large all-reduce
            x = np.ones(1 << 21, np.float32)  # 8 MiB
            comm.barrier()
            before = wire_bytes()
            comm.barrier()
            comm.reset_traffic()
            comm.all_reduce(x)
            record["inter_sent"] = comm.traffic()["all_reduce"]["inter_sent"]
            comm.barrier()
            record["wire"] = wire_bytes() - before
            record["value"] = float(x[0])
        elif scenario.startswith("wire"):
            algorithm = scenario.split(":")[1]
            x = np.ones(1 << 21, np.float32)
            for _ in range(2):
                comm.barrier()
                before = wire_bytes()
                comm.barrier()
                comm.reset_traffic()
                comm.all_reduce(x, algorithm=algorithm)
                record["inter_sent"] = comm.traffic()["all_reduce"]["inter_sent"]
                comm.barrier()
                record["wire"] = wire_bytes() - before
        elif scenario in ("kill_host", "cut_link"):
            x = np.ones(1000, np.float32)
            comm.all_reduce(x)
            comm.barrier()
            if comm.host == 1:
                if scenario == "kill_host":
                    if comm.local_rank == 0:
                        os.kill(os.getppid(), signal.SIGKILL)  # the host's launcher too
                    os.kill(os.getpid(), signal.SIGKILL)
                elif comm.local_rank == 0:
                    for dev in os.listdir("/sys/class/net"):
                        if dev != "lo":
                            subprocess.run(["ip", "link", "set", dev, "down"], check=True)
            start = time.monotonic()
            try:
                for _ in range(50):
                    comm.all_reduce(x)
                record["error"] = None
            except Exception as exc:
                record["error"] = type(exc).__name__
                record["message"] = str(exc)
            record["seconds"] = time.monotonic() - start
    finally:
        with open(os.path.join(out, f"rank{record['rank']}.json"), "w") as f:
            json.dump(record, f)
    if record.get("error"):
        sys.exit(3)


if __name__ == "__main__":
    main()
