"""The ``shardcore`` command: one sub-command per module, each registering its own parser."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module exposing ``register(subparsers)``; a module sets ``func`` on its parser.
_COMMANDS = {
    "run": "shardcore.launch_cli",
    "plan": "shardcore.plan.cli",
    "bench": "shardcore.bench.cli",
    "tune": "shardcore.tune",
    "generate": "shardcore.runtime.cli",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="shardcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in _COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that part of shardcore is not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shardcore`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
