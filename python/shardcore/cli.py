"""shardcore: tensor, pipeline, data and expert parallelism across shared-memory worker
processes on one host, and the tools to plan, run and measure them."""

from __future__ import annotations

import importlib
import os
import sys

from .cliargs import Parser, UsageError

# name -> (module exposing ``register(subparsers)``, one-line help for ``shardcore --help``).
# Only the module of the command being run is imported: ``shardcore --help`` loads neither the
# C++ core nor NumPy, and each command imports what it needs when it runs.
_COMMANDS = {
    "run": ("shardcore.launch_cli", "start N ranks of a script, each with a communicator"),
    "plan": ("shardcore.plan.cli", "plan TP/PP/DP/EP for a model on a cluster: memory, traffic"),
    "generate": ("shardcore.runtime.cli", "greedy generation from a checkpoint on sharded ranks"),
    "bench": ("shardcore.bench.cli", "benchmarks: collectives, peers, alpha-beta model, GEMM"),
    "tune": ("shardcore.tune", "measure this host's all-reduce crossovers and cache them"),
}

_EPILOG = "Run 'shardcore COMMAND --help' for the options of a command."


def _version() -> str:
    from . import __version__

    return f"shardcore {__version__}"


def build_parser(command: str | None = None) -> Parser:
    """The top-level parser, with the options of ``command`` only (the other commands are
    listed by name and help line, and their modules are not imported)."""
    parser = Parser(prog="shardcore", description=__doc__, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in _COMMANDS.items():
        if name == command:
            importlib.import_module(module_name).register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in _COMMANDS else None
        if word == "--":
            return None
    return None


def _prog(args) -> str:
    words = ["shardcore", getattr(args, "command", None), getattr(args, "bench_command", None)]
    return " ".join(w for w in words if w)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shardcore`` console script and ``python -m shardcore``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a rejected value (already reported)
        return exc.code if isinstance(exc.code, int) else 2
    if not hasattr(args, "func"):  # a command whose options were not loaded: cannot happen
        parser.error(f"cannot run {args.command!r}")
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return status
    except UsageError as exc:
        print(f"{_prog(args)}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``shardcore plan ... | head``): stop quietly, as a C tool
        # killed by SIGPIPE would, and keep Python from complaining while it flushes stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except KeyboardInterrupt:
        print(f"{_prog(args)}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
