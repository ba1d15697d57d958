"""What every ``shardcore`` sub-command shares on its command line: the parser class, the value
types of its flags, and the one error convention.

The convention: a value that is not allowed gives one line, ``shardcore CMD: error: FLAG ...``
naming the flag and what it accepts, and exit status 2, before any work starts; never a
traceback. Flag values are checked by the ``type=`` functions below while parsing; checks that
need two flags at once raise :class:`UsageError` from the command, which ``shardcore.cli.main``
turns into the same line. This module imports nothing beyond the standard library, so that
``shardcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable


class UsageError(Exception):
    """A command-line value that is not allowed; the message names the flag."""


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error convention (``prog: error: message``, exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type, what: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer type that is at least ``low``."""

    def parse(text: str) -> int:
        value = int(_number(text, int, "an integer"))
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    """A number greater than zero."""
    value = float(_number(text, float, "a number"))
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def int_list(low: int = 1, what: str = "integers") -> Callable[[str], list[int]]:
    """A comma-separated list of integers, each at least ``low`` (``2,4,8``)."""

    def parse(text: str) -> list[int]:
        items = [t.strip() for t in text.split(",")]
        if not text.strip() or not all(re.fullmatch(r"[+-]?\d+", t) for t in items):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {what}, e.g. 2,4,8"
            )
        values = [int(t) for t in items]
        if any(v < low for v in values):
            raise argparse.ArgumentTypeError(f"every value must be at least {low}, got {text!r}")
        return values

    parse.__name__ = f"list of {what}"
    return parse


def choice_list(choices: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
    """A comma-separated list of names, each one of ``choices``."""

    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(
                f"{', '.join(map(repr, bad)) or repr(text)}: choose from {', '.join(choices)}"
            )
        return names

    parse.__name__ = "list of names"
    return parse


def output_file(text: str) -> str:
    """A file to write, or ``-`` for stdout: its folder must exist and be writable (checked
    before the work, so that a long run does not end in an error and lose its results)."""
    if text == "-":
        return text
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {os.path.dirname(text) or '.'!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"folder {os.path.dirname(text) or '.'!r} is not writable")
    if os.path.exists(text) and not os.access(text, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not writable")
    return text


def output_folder(text: str) -> str:
    """A folder to write files into: it exists and is writable, or its parent does."""
    if os.path.exists(text):
        if not os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
        if not os.access(text, os.W_OK):
            raise argparse.ArgumentTypeError(f"folder {text!r} is not writable")
        return text
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(
            f"cannot create folder {text!r}: {os.path.dirname(text) or '.'!r} "
            "does not exist or is not writable"
        )
    return text


def input_file(text: str) -> str:
    """A file that exists and can be read."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not readable")
    return text


def description(doc: str | None) -> str:
    """A module docstring as a command's ``--help`` text (reST literals as plain words)."""
    return (doc or "").replace("``", "").strip()


def progress_mode(setting: str) -> str:
    """What ``--progress auto|bar|lines|off`` means on this stderr: ``bar`` on a terminal,
    ``lines`` (one line per step, for logs and pipes) otherwise, or ``off``."""
    if setting == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    return "" if setting == "off" else setting
