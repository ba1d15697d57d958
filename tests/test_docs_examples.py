"""Every Python example in README.md and docs/*.md runs as written, and every ``shardcore``
command they show is one the command line accepts.

The ```python blocks of one page run in order, in one fresh interpreter (a later block may use
what an earlier one defined), with a scratch folder as the working directory. A block that
cannot run here (it needs torchrun, several hosts or a GPU) is marked on the line before its
fence with an HTML comment, which the rendered page does not show:

    <!-- docs-test: skip (needs torchrun) -->

The reason is required, and the number of such blocks is kept small (MAX_SKIPPED).
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import shardcore

ROOT = Path(__file__).resolve().parent.parent
# the shardcore these tests import (the installed package, or python/ in a development tree)
SHARDCORE_PARENT = str(Path(shardcore.__file__).resolve().parent.parent)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
MAX_SKIPPED = 4

pytestmark = pytest.mark.timeout(240)


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of every ```python block of a page."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        indent, marker, lang = fence.groups()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(marker):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if lang.lower() not in ("python", "py"):
            continue
        previous = next((lines[j] for j in range(start - 2, -1, -1) if lines[j].strip()), "")
        skip = SKIP.search(previous)
        blocks.append((start, "\n".join(body) + "\n", skip.group("reason") if skip else None))
    return blocks


def _runner(path: Path, blocks) -> str:
    """A script that runs the page's blocks in one namespace and names the failing one."""
    parts = ["import sys, traceback", "ns = {'__name__': '__main__'}"]
    for line, code, _ in blocks:
        parts.append(
            f"try:\n    exec(compile({code!r}, {f'{path.name}:{line}'!r}, 'exec'), ns)\n"
            f"except BaseException:\n    traceback.print_exc()\n"
            f"    sys.exit('the block at {path.name} line {line} failed')"
        )
    return "\n".join(parts) + "\n"


PAGES_WITH_CODE = [p for p in PAGES if any(r is None for _, _, r in python_blocks(p))]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: p.name)
def test_python_examples_run(page, tmp_path):
    blocks = [b for b in python_blocks(page) if b[2] is None]
    env = dict(os.environ)
    env["PYTHONPATH"] = SHARDCORE_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONWARNINGS"] = "error"
    out = subprocess.run(
        [sys.executable, "-c", _runner(page, blocks)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def test_skipped_examples_are_few_and_say_why():
    skipped = [(p.name, line, r) for p in PAGES for line, _, r in python_blocks(p) if r]
    assert len(skipped) <= MAX_SKIPPED, skipped
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        markers = len(re.findall(r"^\s*<!--\s*docs-test:", text, re.MULTILINE))
        assert markers == sum(1 for _, _, r in python_blocks(page) if r), (
            f"{page.name}: a docs-test marker that is not of the form "
            "'<!-- docs-test: skip (reason) -->' on the line before a ```python fence"
        )


def test_the_block_finder():
    text = (
        "intro\n```python\nx = 1\n```\n<!-- docs-test: skip (needs torchrun) -->\n"
        "```python\nimport torch.distributed\n```\n```bash\nls\n```\n  ```py\n  y = 2\n  ```\n"
    )
    page = Path(os.environ.get("TMPDIR", "/tmp")) / f"docs-test-{os.getpid()}.md"
    page.write_text(text)
    try:
        assert python_blocks(page) == [
            (2, "x = 1\n", None),
            (6, "import torch.distributed\n", "needs torchrun"),
            (12, "y = 2\n", None),
        ]
    finally:
        page.unlink()


def shardcore_commands(path: Path) -> list[str]:
    """The ``shardcore`` command lines of a page: inline code and lines of code blocks (with
    their continuation lines), without prompts, comments or ``taskset`` prefixes."""
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"`([^`\n]*shardcore (?:run|plan|generate|bench|tune) [^`\n]+)`", text)
    blocks = re.findall(r"^\s*```[^\n]*\n(.*?)^\s*```", text, re.MULTILINE | re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    found += [line for line in lines if re.match(r"\s*(\$ )?(\.venv/bin/)?shardcore \w", line)]
    commands = []
    for text in found:
        text = text.split(" #")[0].split("&&")[-1]
        text = text[text.index("shardcore ") :].strip()
        # placeholders of a synopsis, elided arguments, shell variables
        if not any(mark in text for mark in ("[", "|", "...", "$")):
            commands.append(text)
    return commands


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shardcore_commands_parse(page, capsys):
    from shardcore.cli import _command, build_parser

    for command in shardcore_commands(page):
        argv = shlex.split(command)[1:]
        try:
            build_parser(_command(argv)).parse_args(argv)
        except SystemExit as exc:
            err = capsys.readouterr().err
            if "no such" in err or "does not exist" in err:
                continue  # a path of the example's own machine (a checkpoint made before)
            raise AssertionError(f"{page.name}: `{command}` is rejected: {err}") from exc
