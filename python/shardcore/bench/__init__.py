"""Benchmarks: nccl-tests-style sweeps, the traffic model against measurement, and peers.

``shardcore bench collectives|model|compare|tp-vs-pp|stream`` (and ``gemm``; see :mod:`shardcore.bench.cli`). Peers
(torch's gloo, Open MPI, DeepSpeed) are optional: ``pip install shardcore[compare]``.
"""
