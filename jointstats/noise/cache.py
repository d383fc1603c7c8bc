"""On-disk cache of noise plans: the coins a plan's search chose, per distinct noise scale.

Building a noise plan (``jointstats.noise.sampler``) is a search over coin precisions; checking a
given choice of coins is cheap (the bias intervals and every coin's error bound are
recomputed exactly, and the total is checked against the budget). So a party stores, per
distinct plan, only the search's result: the (k, c) of every coin. On a later job the plan is rebuilt from that choice with fresh,
exact error bounds; a file that does not decode into exactly the expected types, whose
digest or key does not match, or whose coins do not meet the budget, is ignored and
rebuilt (and replaced), never trusted.

Where: ``set_directory(path)`` (a party's job sets it from its state file's folder), or the
environment variable ``JOINTSTATS_NOISE_PLAN_CACHE`` (a directory, or ``off``), which takes
precedence over ``set_directory``. Without either, nothing is cached on disk.

Files are JSON (never pickle), written atomically (``jointstats._files``: a temporary file in
the same directory, then a rename), at most ``MAX_FILE_BYTES`` each and ``MAX_FILES`` in all
(the least recently used are removed beyond that).
"""
from __future__ import annotations

import hashlib
import json
import os
from fractions import Fraction
from pathlib import Path

from jointstats._files import atomic_write, is_temp_name

#: Bump whenever the plan construction changes what it chooses or how it bounds errors.
CODE_VERSION = "noise-plans-2026-12-04.2"
ENV = "JOINTSTATS_NOISE_PLAN_CACHE"
#: Default folder name beside a party's state file.
FOLDER = "noise-plans"
MAX_FILES = 4096
MAX_FILE_BYTES = 1 << 16
_FORMAT = "jointstats-noise-plan"
_KMAX_LIMIT = 4096  # no coin has more random bits than this (the engine uses at most 80)

_directory: Path | None = None
#: Counters for tests and the benchmark: hits (plans built from a file), misses (no file),
#: rejected (a file failing a check), writes.
stats = {"hits": 0, "misses": 0, "rejected": 0, "writes": 0}


def set_directory(path: str | os.PathLike | None) -> None:
    """Cache noise plans in ``path`` (created on first write); None: no disk cache."""
    global _directory
    _directory = Path(path) if path is not None else None


def directory_for_state(state_path: str | os.PathLike) -> Path:
    """The cache folder beside a party's state file: ``<state folder>/noise-plans``."""
    return Path(state_path).resolve().parent / FOLDER


def directory() -> Path | None:
    """The cache directory in effect (the environment variable first), or None."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    return _directory


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _frac(x: Fraction | None):
    return None if x is None else [x.numerator, x.denominator]


def key(mechanism: str, param: Fraction, budget: Fraction | None, trials: int | None,
        constants: dict) -> str:
    """Hex sha256 naming one plan: mechanism, exact parameter, budget or trials, the
    sampler's constants (DELTA_TARGET, coin limits) and the code version."""
    ident = {"v": CODE_VERSION, "mechanism": mechanism, "param": _frac(param),
             "budget": _frac(budget), "trials": trials,
             "constants": {k: _frac(v) if isinstance(v, Fraction) else v
                           for k, v in sorted(constants.items())}}
    return hashlib.sha256(_canonical(ident)).hexdigest()


def _path(d: Path, mechanism: str, k: str) -> Path:
    return d / f"{mechanism}-{k[:48]}.json"


class _Bad(ValueError):
    """A cache file that is not exactly what was written for this key."""


def _no_float(text):
    raise _Bad("floats are not expected")


def _int(x, lo: int, hi: int) -> int:
    if type(x) is not int or not lo <= x <= hi:
        raise _Bad("an integer out of range")
    return x


def _pairs(x) -> tuple[tuple[int, int], ...]:
    """A list of [k, c] coin choices: k bits, c odd in (0, 2^k), or k = 0 and c in {0, 1}."""
    if type(x) is not list or len(x) > 4096:
        raise _Bad("coin list expected")
    out = []
    for p in x:
        if type(p) is not list or len(p) != 2:
            raise _Bad("[k, c] pairs expected")
        k = _int(p[0], 0, _KMAX_LIMIT)
        c = _int(p[1], 0, 1 << k)
        if (k == 0 and c > 1) or (k > 0 and (c % 2 == 0 or c >= 1 << k)):
            raise _Bad("not a coin")
        out.append((k, c))
    return tuple(out)


def decode(data: bytes, expected_key: str) -> dict:
    """The choices stored in ``data`` for ``expected_key``; raises ValueError otherwise."""
    if len(data) > MAX_FILE_BYTES:
        raise _Bad("file too large")
    try:
        doc = json.loads(data, parse_float=_no_float, parse_constant=_no_float)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _Bad(f"not JSON ({type(exc).__name__})") from None
    if type(doc) is not dict or set(doc) != {"format", "key", "choices", "digest"}:
        raise _Bad("unexpected fields")
    if doc["format"] != _FORMAT or doc["key"] != expected_key:
        raise _Bad("another plan's file")
    choices = doc["choices"]
    if type(choices) is not dict or not {"coins"} <= set(choices) <= {"coins", "dl"}:
        raise _Bad("unexpected choices")
    digest = hashlib.sha256(_canonical({"format": _FORMAT, "key": expected_key,
                                        "choices": choices})).hexdigest()
    if doc["digest"] != digest:
        raise _Bad("digest mismatch")
    out: dict = {"coins": _pairs(choices["coins"])}
    if "dl" in choices:
        out["dl"] = _pairs(choices["dl"])
    return out


def encode(k: str, choices: dict) -> bytes:
    body = {"coins": [list(p) for p in choices["coins"]]}
    if "dl" in choices:
        body["dl"] = [list(p) for p in choices["dl"]]
    doc = {"format": _FORMAT, "key": k, "choices": body}
    doc["digest"] = hashlib.sha256(_canonical(doc)).hexdigest()
    return _canonical(doc)


def load(mechanism: str, k: str) -> dict | None:
    """The decoded choices cached under key ``k``, or None (no cache, no file, bad file)."""
    d = directory()
    if d is None:
        return None
    path = _path(d, mechanism, k)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError:
        stats["misses"] += 1
        return None
    try:
        choices = decode(data, k)
    except ValueError:
        stats["rejected"] += 1
        discard(mechanism, k)
        return None
    try:
        os.utime(path)  # recently used: kept when the cache is trimmed
    except OSError:
        pass
    return choices  # a hit once the plan built from it passes its checks (jointstats.noise.sampler)


def discard(mechanism: str, k: str) -> None:
    """Remove the file of key ``k`` (it failed its checks)."""
    d = directory()
    if d is None:
        return
    try:
        _path(d, mechanism, k).unlink()
    except OSError:
        pass


def store(mechanism: str, k: str, choices: dict) -> None:
    """Write the choices atomically; any I/O error only means no caching."""
    d = directory()
    if d is None:
        return
    data = encode(k, choices)
    if len(data) > MAX_FILE_BYTES:  # pragma: no cover - plans are a few kB
        return
    try:
        atomic_write(_path(d, mechanism, k), data, mode=0o600, fsync=False)  # lost: rebuilt
        stats["writes"] += 1
        _trim(d)
    except OSError:
        pass


def _trim(d: Path) -> None:
    """Keep at most MAX_FILES plans: beyond that, remove the least recently used quarter.
    Temporary files left by a writer that died (older than an hour) are removed too."""
    import time
    entries = []
    with os.scandir(d) as it:
        for e in it:
            if is_temp_name(e.name) or e.name.startswith(".tmp-"):  # .tmp-*: older writers
                try:
                    if e.stat().st_mtime < time.time() - 3600:
                        os.unlink(e.path)
                except OSError:
                    pass
            elif e.name.endswith(".json"):
                entries.append(e)
    if len(entries) <= MAX_FILES:
        return
    def mtime(e):
        try:
            return e.stat().st_mtime_ns
        except OSError:
            return 0
    entries.sort(key=mtime)
    for e in entries[:len(entries) - MAX_FILES * 3 // 4]:
        try:
            os.unlink(e.path)
        except OSError:
            pass
