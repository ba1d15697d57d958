"""The C++ core's own test driver (csrc/tests/test_core.cpp), built with CMake and run here.

Skipped, with the reason, where CMake or a C++ compiler is missing (an installed wheel has no
csrc/ either). The build tree build/pytest-cpp is reused between runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "pytest-cpp"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _skip_reason() -> str | None:
    if not (ROOT / "csrc" / "tests" / "test_core.cpp").exists():
        return "no C++ sources next to the tests (installed package?)"
    if sys.platform != "linux":
        return "the core builds on Linux only"
    if shutil.which("cmake") is None:
        return "cmake is not on PATH"
    if _compiler() is None:
        return "no C++ compiler (c++, g++, clang++ or $CXX) on PATH"
    return None


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.timeout(300)
def test_cpp_core_driver():
    """Builds shardcore_core_tests (plain, -Werror) and runs its quick mode: every check passes."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    configure = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(BUILD),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DSHARDCORE_BUILD_MODULE=OFF",
        "-DSHARDCORE_BUILD_TESTS=ON",
        "-DSHARDCORE_WERROR=ON",
    ]
    if shutil.which("ninja") and not (BUILD / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    env_cxx = os.environ.get("CXX")
    if not env_cxx and not (BUILD / "CMakeCache.txt").exists():
        configure.append(f"-DCMAKE_CXX_COMPILER={_compiler()}")
    done = _run(configure, timeout=120)
    assert done.returncode == 0, f"cmake configure failed:\n{done.stdout}\n{done.stderr}"
    jobs = os.environ.get("JOBS", "2")
    done = _run(["cmake", "--build", str(BUILD), "-j", jobs], timeout=240)
    assert done.returncode == 0, f"build failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    done = _run([str(BUILD / "shardcore_core_tests"), "--quick"], timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"C++ core tests failed:\n{output[-8000:]}"
    assert "checks passed" in done.stdout, output
