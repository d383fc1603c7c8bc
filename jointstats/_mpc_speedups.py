"""Explicit speed-ups of MPyC 0.11 internals.

``install_exact()`` (on in every party runtime, see ``jointstats._mpc.make_party_runtime``)
installs the two below; neither changes a single value.

``install_matmul()``: matrix products of prime-field arrays with a large modulus (over 256 bits: the exact
regression's 2048-bit fields) are computed on gmpy2 integers instead of Python's, about
6x faster for a 10 x 10 product at 2048 bits, with exactly the same result. They were the
largest single CPU cost of the exact regression's secure step.

``install_array_init()``: MPyC builds every finite-field array through
``FiniteFieldArray.__init__``, which parses ``np.__version__`` on every call (a tenth of
the regression's secure step went to numpy's version parser). The replacement makes the
same decision once, at import, and is otherwise the same code.

``install()`` / ``uninstall()`` (optional, used by ``bench/bench_noise.py``): one function is
replaced, ``mpyc.thresha.np_random_split``, used by every
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

import gmpy2
import numpy as np

from jointstats import _mpc

__all__ = ["install", "uninstall", "installed", "install_exact", "uninstall_exact",
           "install_matmul", "uninstall_matmul", "install_array_init", "uninstall_array_init"]

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


# ----------------------------------------------------------------------------- matmul

_finfields = _mpc._mpyc_runtime.finfields
_FFArray = _finfields.FiniteFieldArray
_original_matmul = _FFArray.__matmul__
_original_rmatmul = _FFArray.__rmatmul__
_BIG_MODULUS_BITS = 256
_to_mpz = np.frompyfunc(gmpy2.mpz, 1, 1)


def _reduce(values, modulus) -> np.ndarray:
    """gmpy2 integers reduced modulo ``modulus``, as Python ints (what MPyC's arrays hold)."""
    m = gmpy2.mpz(modulus)
    return np.frompyfunc(lambda v: int(v % m), 1, 1)(values)


def _big_prime_field(cls) -> bool:
    field = cls.field
    return (issubclass(cls, _finfields.PrimeFieldArray) and isinstance(field.modulus, int)
            and field.modulus.bit_length() > _BIG_MODULUS_BITS)


def _big_field_product(original, reflected: bool):
    """``__matmul__`` (or, reflected, ``__rmatmul__``) on gmpy2 integers for big prime fields."""
    def product(self, other):
        cls = type(self)
        if not _big_prime_field(cls):
            return original(self, other)
        other = cls._coerce(other)
        if other is NotImplemented:
            return NotImplemented
        mine, theirs = _to_mpz(self.value), _to_mpz(np.asarray(other, dtype=object))
        a = _reduce(theirs @ mine if reflected else mine @ theirs, cls.field.modulus)
        return cls(a) if isinstance(a, np.ndarray) and a.ndim else cls.field(int(a))
    return product


_matmul = _big_field_product(_original_matmul, reflected=False)
_rmatmul = _big_field_product(_original_rmatmul, reflected=True)


def install_matmul() -> None:
    """Compute big prime-field matrix products on gmpy2 integers (idempotent)."""
    _FFArray.__matmul__ = _matmul
    _FFArray.__rmatmul__ = _rmatmul


def uninstall_matmul() -> None:
    """Restore MPyC's own matrix products."""
    _FFArray.__matmul__ = _original_matmul
    _FFArray.__rmatmul__ = _original_rmatmul


# ----------------------------------------------------------------------------- array constructor

_original_init = _FFArray.__init__
# MPyC asks on every array whether numpy is 2.x, to pass copy=None instead of False
_NUMPY_2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0b1"


def _array_init(self, value, check=True, copy=False):
    """``FiniteFieldArray.__init__`` with numpy's version decided once (same values)."""
    if _NUMPY_2 and copy is False:
        copy = None
    value = np.array(value, dtype=object, copy=copy)
    if check:
        value %= self.field.modulus  # in place, as MPyC: keeps the shape
    self.value = value


def install_array_init() -> None:
    """Build finite-field arrays without re-parsing numpy's version (idempotent)."""
    _FFArray.__init__ = _array_init


def uninstall_array_init() -> None:
    """Restore MPyC's own constructor."""
    _FFArray.__init__ = _original_init


def install_exact() -> None:
    """Every speed-up that leaves each value exactly as MPyC computes it (idempotent)."""
    install_matmul()
    install_array_init()


def uninstall_exact() -> None:
    """Undo ``install_exact``."""
    uninstall_matmul()
    uninstall_array_init()
