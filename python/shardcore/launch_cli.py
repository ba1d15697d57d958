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
    p.add_argument("target", help="script path (or module name with -m)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to every rank")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from .launcher import run_script

    return run_script(
        args.nproc,
        [args.target, *args.args],
        module=args.module,
        timeout=args.timeout,
        comm_timeout=args.comm_timeout,
    )
