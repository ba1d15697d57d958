"""Development sweep: all-reduce time per algorithm, size and world size (median of iterations)."""

import sys
import time

import numpy as np

import shardcore


def worker(comm, sizes, algos, budget):
    rows = []
    for nbytes in sizes:
        x = np.ones(max(1, nbytes // 4), np.float32)
        for algo in algos:
            if algo == "one_shot" and nbytes > comm._core.slot_bytes:
                continue
            for _ in range(3):
                comm.all_reduce(x, algorithm=algo)
            comm.barrier()
            t_end = time.perf_counter() + budget
            ts = []
            while True:
                t = time.perf_counter()
                comm.all_reduce(x, algorithm=algo)
                ts.append(time.perf_counter() - t)
                # every rank runs the same number of iterations: rank 0 decides
                flag = np.array([time.perf_counter() < t_end and len(ts) < 20000], np.int32)
                comm.broadcast(flag, 0)
                if not flag[0]:
                    break
            rows.append((nbytes, algo, float(np.median(ts))))
    return rows


def main():
    ns = [int(v) for v in sys.argv[1].split(",")]
    sizes = [8, 64, 512, 4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 32 << 20]
    algos = ["one_shot", "two_shot", "ring", None]
    for n in ns:
        res = shardcore.launch(worker, n, args=(sizes, algos, 0.15))
        print(f"n={n}")
        for nbytes, algo, t in res[0]:
            bus = nbytes / t * 2 * (n - 1) / n / 1e9
            print(f"  {nbytes:>10} {str(algo):>9} {t * 1e6:10.2f} us  busbw {bus:7.2f} GB/s")


if __name__ == "__main__":
    main()
