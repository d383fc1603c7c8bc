"""Optional, explicit speed-ups of MPyC 0.11 internals (``install()`` / ``uninstall()``).

Only one function is replaced: ``mpyc.thresha.np_random_split``, used by every
secure multiplication of arrays (resharing a la GRR98) and by array inputs.  MPyC
draws the random polynomial coefficients with one ``secrets.randbelow`` call per
element, which dominated the cost of multiplying large secure arrays.  The
replacement draws all coefficients at once from ``os.urandom`` (the same CSPRNG):
each coefficient is a (bit_length(order) + 64)-bit integer reduced modulo the field
order, i.e. uniform up to statistical distance 2**-64 per coefficient.  Shares are
computed exactly as MPyC does (Vandermonde product modulo p), so patched and
unpatched parties interoperate.  Extension fields fall back to MPyC's original.
"""
from __future__ import annotations

import os

import numpy as np

from jointstats import _mpc

__all__ = ["install", "uninstall", "installed"]

_thresha = _mpc._mpyc_runtime.thresha
_original = _thresha.np_random_split


def _uniform_below(order: int, k: int) -> np.ndarray:
    """k integers, uniform in [0, order) up to statistical distance 2**-64 each."""
    words = (order.bit_length() + 64 + 63) // 64
    raw = np.frombuffer(os.urandom(8 * words * k), dtype="<u8").reshape(k, words)
    acc = raw[:, 0].astype(object)
    for j in range(1, words):
        acc = acc + (raw[:, j].astype(object) << (64 * j))
    return acc % order


def np_random_split(field, s, t, m):
    """Split each secret in s into m Shamir shares of degree t (rows: parties)."""
    p = field.modulus
    if not isinstance(p, int) or field.order != p:
        return _original(field, s, t, m)
    if isinstance(s, field.array):
        s = s.value
    s = np.asarray(s, dtype=object)
    n = len(s)
    C = _uniform_below(p, t * n).reshape(t, n)
    V = np.vander(np.array(list(range(1, m + 1)), dtype=object), N=t + 1, increasing=True)
    return (V @ np.concatenate((s.reshape(1, n), C))) % p


def install() -> None:
    """Patch MPyC (idempotent)."""
    _thresha.np_random_split = np_random_split


def uninstall() -> None:
    """Restore MPyC's original function."""
    _thresha.np_random_split = _original


def installed() -> bool:
    return _thresha.np_random_split is np_random_split
