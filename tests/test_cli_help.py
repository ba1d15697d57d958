"""The ``shardcore`` command as a tool: python -m, --version, fast help, help for every flag."""

import argparse
import json
import os
import subprocess
import sys

import pytest

import shardcore
from shardcore.cli import _COMMANDS, build_parser

# the shardcore these tests import (the installed package, or python/ in a development tree)
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(shardcore.__file__)))

# Words of the project's own history that have no place in a user's help text.
NOT_IN_HELP = ("issue", "session", "docstring", "the device tool", "todo")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(PYTHON_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(*argv):
    return subprocess.run(
        [sys.executable, "-m", "shardcore", *argv], capture_output=True, text=True, env=_env()
    )


def test_python_dash_m_and_version():
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"shardcore {shardcore.__version__}"
    out = _run("--help")
    assert out.returncode == 0 and all(name in out.stdout for name in _COMMANDS)


def test_help_imports_neither_the_core_nor_ml_dtypes():
    """Help is fast because it imports only what the asked-for command's options need: the top
    level not even NumPy, no command the C++ core, ml_dtypes or torch."""
    commands = [[name] for name in _COMMANDS] + [
        ["bench", b] for b in ("collectives", "compare", "model", "tp-vs-pp", "stream", "gemm")
    ]
    code = f"""
import contextlib, io, json, sys
from shardcore.cli import main
heavy = ("numpy", "ml_dtypes", "shardcore._core", "shardcore.comm", "torch")
loaded = {{}}
for argv in [[]] + {commands!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv + ["--help"]) == 0
    loaded[" ".join(argv)] = [m for m in heavy if m in sys.modules]
print(json.dumps(loaded))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True
    )
    loaded = json.loads(out.stdout)
    assert loaded[""] == []
    for argv, modules in loaded.items():
        assert not set(modules) & {"ml_dtypes", "shardcore._core", "shardcore.comm", "torch"}, argv


def _parsers():
    """(prog, parser) of every command and bench sub-command, options loaded."""
    for name in _COMMANDS:
        top = build_parser(name)
        for action in top._actions:
            if isinstance(action, argparse._SubParsersAction):
                parser = action.choices[name]
                yield parser.prog, parser
                for sub in parser._actions:
                    if isinstance(sub, argparse._SubParsersAction):
                        for child in sub.choices.values():
                            yield child.prog, child


@pytest.mark.parametrize("prog,parser", list(_parsers()), ids=lambda x: getattr(x, "prog", x))
def test_every_flag_has_user_facing_help(prog, parser):
    texts = [parser.description or ""]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help, f"{prog}: {action.option_strings or action.dest} has no help"
        texts.append(action.help)
    lowered = " ".join(texts).lower()
    for word in NOT_IN_HELP:
        assert word not in lowered, f"{prog}: help mentions {word!r}"
    parser.format_help()  # every %(default)s and the like expands
