"""``shardcore run -n N script.py [args]``: N copies of a script, torchrun-style."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``run`` sub-command."""
    p = subparsers.add_parser(
        "run", help="start N ranks of a script; each gets its communicator from shardcore.init()"
    )
    p.add_argument("-n", "--nproc", type=int, required=True, help="number of ranks")
    p.add_argument("-m", dest="module", action="store_true", help="run a module, as python -m")
    p.add_argument(
        "--timeout", type=float, default=None, help="stop every rank after this long (s)"
    )
    p.add_argument(
        "--comm-timeout",
        type=float,
        default=None,
        help="deadline of a single wait inside a collective (s)",
    )
    p.add_argument(
        "--nnodes", type=int, default=1, help="number of hosts of the job (one launcher on each)"
    )
    p.add_argument("--node-rank", type=int, default=0, help="this host's index in [0, --nnodes)")
    p.add_argument(
        "--master-addr",
        default=None,
        help="address of node 0, which serves the rendezvous store (needed with --nnodes > 1)",
    )
    p.add_argument(
        "--master-port", type=int, default=29500, help="port of the rendezvous store on node 0"
    )
    p.add_argument("target", help="script path (or module name with -m)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to every rank")
    p.set_defaults(func=_main)


def _main(args) -> int:
    if args.nnodes != 1 or args.master_addr is not None:
        if args.master_addr is None:
            raise SystemExit("shardcore run: --nnodes > 1 needs --master-addr (node 0's address)")
        if not 0 <= args.node_rank < args.nnodes:
            raise SystemExit(
                f"shardcore run: --node-rank must be in [0, {args.nnodes}), got {args.node_rank}"
            )
        if not 0 < args.master_port < 65536:
            raise SystemExit(
                f"shardcore run: --master-port must be in [1, 65535], got {args.master_port}"
            )
        from .hier.launch import run_nodes

        return run_nodes(
            args.nproc,
            [args.target, *args.args],
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
            module=args.module,
            timeout=args.timeout,
            comm_timeout=args.comm_timeout,
        )
    from .launcher import run_script

    return run_script(
        args.nproc,
        [args.target, *args.args],
        module=args.module,
        timeout=args.timeout,
        comm_timeout=args.comm_timeout,
    )
