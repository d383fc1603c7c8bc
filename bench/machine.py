"""A description of the machine and software a benchmark ran on (stored in every record)."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # noqa: BLE001 - not installed
        return None


def _git() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


@functools.lru_cache(maxsize=1)
def describe() -> dict:
    """Cores, CPU model, memory, OS, Python and library versions, and the git commit."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gb": _mem_total_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "mpyc": _version("mpyc"),
        "numpy": _version("numpy"),
        "pyarrow": _version("pyarrow"),
        "pandas": _version("pandas"),
        "statsmodels": _version("statsmodels"),
        "gmpy2": _version("gmpy2"),
        "jointstats": _version("jointstats"),
        "git": _git(),
        "executable": sys.executable,
    }


def one_line(m: dict | None = None) -> str:
    """The machine in one line, for tables."""
    m = m or describe()
    return (f"{m['cpu_model']}, {m['cores']} cores, {m['mem_gb']} GB, {m['os']}; Python {m['python']}, "
            f"MPyC {m['mpyc']}, numpy {m['numpy']}, pyarrow {m['pyarrow']}, gmpy2 {m['gmpy2']}")
