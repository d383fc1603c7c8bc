"""Explicit speed-ups of MPyC 0.11 internals.

``install_exact()`` (on in every party runtime, see ``jointstats.mpc.runtime.make_party_runtime``)
installs the four below; none changes a single value.

``install_matmul()``: matrix products of prime-field arrays with a large modulus (over 256 bits: the exact
regression's 2048-bit fields) are computed on gmpy2 integers instead of Python's, about
6x faster for a 10 x 10 product at 2048 bits, with exactly the same result. They were the
largest single CPU cost of the exact regression's secure step.

``install_array_init()``: MPyC builds every finite-field array through
``FiniteFieldArray.__init__``, which parses ``np.__version__`` on every call (a tenth of
the regression's secure step went to numpy's version parser), and reduces the values
modulo the field's modulus with Python's integers. The replacement makes the version
decision once, at import, and reduces the values of big prime fields (over 256 bits)
with gmpy2, about 3x faster at 2048 bits (a fifth of the regression's secure step was
this reduction); the values are the same.

``install_mul()``: elementwise products of big prime-field arrays (MPyC's secure
multiplication multiplies the shares so) on gmpy2 integers, as ``install_matmul`` does
for matrix products.

``install_shares()``: MPyC's ``np_recombine`` (every reveal and every resharing after a
secure multiplication) and ``np_pseudorandom_share`` (random shares without
communication) multiply 2048-bit shares with Python's integers. For big prime fields the
replacements do the same sums of products on gmpy2 integers; the PRF outputs, and so
every share, are exactly MPyC's.

``install()`` / ``uninstall()`` (on in every party runtime too): one function is
replaced, ``mpyc.thresha.np_random_split``, used by every secure multiplication of
arrays (resharing a la GRR98) and by array inputs. MPyC draws the random polynomial
coefficients with one ``secrets.randbelow`` call per element. The replacement draws them
all at once from ``os.urandom`` (the CSPRNG behind ``secrets``) by rejection sampling,
as ``randbelow`` does: exactly uniform below the field order. Different random draws,
the same distribution; shares are computed exactly as MPyC does (Vandermonde product
modulo p), so patched and unpatched parties interoperate. Extension fields fall back
to MPyC's original.
"""
from __future__ import annotations

import functools
import os

import gmpy2
import numpy as np

from jointstats.mpc import runtime as _mpc
from jointstats.plan.fields import residue_function

__all__ = ["install", "uninstall", "installed", "install_exact", "uninstall_exact",
           "install_matmul", "uninstall_matmul", "install_array_init", "uninstall_array_init",
           "install_shares", "uninstall_shares", "install_mul", "uninstall_mul"]

_thresha = _mpc._mpyc_runtime.thresha
_original = _thresha.np_random_split


def _uniform_below(order: int, k: int) -> np.ndarray:
    """k integers, exactly uniform in [0, order): rejection sampling on ``os.urandom``.

    Each candidate is bit_length(order - 1) random bits (64-bit limbs from ``os.urandom``, the
    top one masked), as ``secrets.randbelow`` takes them from ``getrandbits``; one below
    ``order`` is kept and the others drawn again. The limbs are joined into Python ints by
    numpy's object loops, column by column, not by a Python loop per value."""
    out = np.zeros(k, dtype=object)
    bits = (order - 1).bit_length()
    if bits == 0 or k == 0:
        return out
    limbs = (bits + 63) // 64
    top = bits - 64 * (limbs - 1)
    todo = np.arange(k)
    while len(todo):
        raw = np.frombuffer(os.urandom(8 * limbs * len(todo)), dtype=np.uint64)
        raw = raw.reshape(len(todo), limbs).copy()
        if top < 64:
            raw[:, -1] &= np.uint64((1 << top) - 1)
        values = raw[:, 0].astype(object)
        for j in range(1, limbs):
            values = values + (raw[:, j].astype(object) << (64 * j))
        ok = np.asarray(values < order, dtype=bool)
        out[todo[ok]] = values[ok]
        todo = todo[~ok]
    return out


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
    """Integers reduced modulo ``modulus``, as Python ints (what MPyC's arrays hold)."""
    residue = residue_function(modulus)
    return np.frompyfunc(lambda v: int(residue(v)), 1, 1)(values)


@functools.lru_cache(maxsize=None)
def _big_field(field) -> bool:
    """True for a prime field of over 256 bits (the exact regression's)."""
    modulus = field.modulus
    return isinstance(modulus, int) and field.order == modulus and modulus.bit_length() > _BIG_MODULUS_BITS


def _big_prime_field(cls) -> bool:
    """True for the array class of a big prime field."""
    return issubclass(cls, _finfields.PrimeFieldArray) and _big_field(cls.field)


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


def _big_modulus(cls) -> int | None:
    """The modulus of a big prime field's array class (None for any other field)."""
    return cls.field.modulus if _big_prime_field(cls) else None


@functools.lru_cache(maxsize=64)
def _reducer(modulus: int):
    """Elementwise ``v % modulus`` (as a Python int) computed by gmpy2 where it is needed.

    Python's own division is about 3x slower than gmpy2's at 4096 by 2048 bits, and the
    products that MPyC reduces on building an array are that big. Values already in
    [0, modulus) are kept as they are (the common case for received shares)."""
    residue = residue_function(modulus)
    return np.frompyfunc(lambda v: v if 0 <= v < modulus else int(residue(v)), 1, 1)


def _array_init(self, value, check=True, copy=False):
    """``FiniteFieldArray.__init__`` with numpy's version decided once, and big prime
    fields reduced by gmpy2 (same values)."""
    if _NUMPY_2 and copy is False:
        copy = None
    value = np.array(value, dtype=object, copy=copy)
    if check:
        modulus = _big_modulus(type(self))
        if modulus is None:
            value %= self.field.modulus  # in place, as MPyC: keeps the shape
        else:
            value[...] = _reducer(modulus)(value)  # in place too
    self.value = value


def install_array_init() -> None:
    """Build finite-field arrays without re-parsing numpy's version (idempotent)."""
    _FFArray.__init__ = _array_init


def uninstall_array_init() -> None:
    """Restore MPyC's own constructor."""
    _FFArray.__init__ = _original_init


# ----------------------------------------------------------------------------- elementwise product

_original_mul = _FFArray.__mul__
_original_rmul = _FFArray.__rmul__


def _mul(self, other):
    """``FiniteFieldArray.__mul__`` (and ``__rmul__``) on gmpy2 integers for big prime fields."""
    cls = type(self)
    modulus = _big_modulus(cls)
    if modulus is None:
        return _original_mul(self, other)
    other = cls._coerce(other)
    if other is NotImplemented:
        return NotImplemented
    if not (isinstance(other, int) or (isinstance(other, np.ndarray) and other.dtype == object)):
        return _original_mul(self, other)  # what MPyC does with anything else
    product = _to_mpz(self.value) * _to_mpz(np.asarray(other, dtype=object))
    return cls(_reduce(product, modulus), check=False)


def install_mul() -> None:
    """Multiply big prime-field arrays elementwise on gmpy2 integers (idempotent)."""
    _FFArray.__mul__ = _mul
    _FFArray.__rmul__ = _mul


def uninstall_mul() -> None:
    """Restore MPyC's own elementwise products."""
    _FFArray.__mul__ = _original_mul
    _FFArray.__rmul__ = _original_rmul


# ----------------------------------------------------------------------------- shares

_original_recombine = _thresha.np_recombine
_original_prss = _thresha.np_pseudorandom_share
_original_przs = _thresha.np_pseudorandom_share_0


def np_recombine(field, points, x_rs=0):
    """MPyC's ``np_recombine`` (Lagrange interpolation of array shares), its product on
    gmpy2 integers for big prime fields. It runs on every reveal and every secure
    multiplication (resharing)."""
    if not _big_field(field):
        return _original_recombine(field, points, x_rs)
    xs, shares = list(zip(*points))
    if not isinstance(x_rs, list):
        x_rs = (x_rs,)
    vector = np.array([_thresha._recombination_vector(field, xs, x_r) for x_r in x_rs], dtype=object)
    shares = field.array(shares)
    sums = field.array(_reduce(_to_mpz(vector) @ _to_mpz(shares.value), field.modulus), check=False)
    if isinstance(x_rs, tuple):
        sums = sums[0]
    return sums


def _prss_sum(field, m, i, prfs, draw):
    """Party i's share: the sum over its subsets S of draw(PRF_S) * f_S(i) (MPyC's formula),
    on gmpy2 integers, reduced into a field array."""
    total = None
    for subset, prf in prfs.items():
        term = draw(prf) * gmpy2.mpz(int(_thresha._f_S_i(field, m, i, subset)))
        total = term if total is None else total + term
    return field.array(_reduce(total, field.modulus), check=False)


def np_pseudorandom_share(field, m, i, prfs, uci, n):
    """MPyC's ``np_pseudorandom_share`` (PRSS: random shares without communication), its
    sum of products on gmpy2 integers for big prime fields. The PRF outputs, and so the
    shares, are exactly MPyC's."""
    if not _big_field(field):
        return _original_prss(field, m, i, prfs, uci, n)
    return _prss_sum(field, m, i, prfs, lambda prf: _to_mpz(prf(uci, (n,))))


def np_pseudorandom_share_0(field, m, i, prfs, uci, n):
    """MPyC's ``np_pseudorandom_share_0`` (PRZS: pseudorandom shares of zero, degree 2t),
    its sums of products on gmpy2 integers for big prime fields; exactly MPyC's shares."""
    if not _big_field(field):
        return _original_przs(field, m, i, prfs, uci, n)
    d = m - len(next(iter(prfs.keys())))  # subsets all of the same size m - t
    powers = np.array([gmpy2.mpz(i + 1) ** j for j in range(1, d + 1)], dtype=object)
    return _prss_sum(field, m, i, prfs, lambda prf: _to_mpz(prf(uci, (n, d))) @ powers)


def install_shares() -> None:
    """Recombine and draw pseudorandom shares of big prime fields on gmpy2 (idempotent)."""
    _thresha.np_recombine = np_recombine
    _thresha.np_pseudorandom_share = np_pseudorandom_share
    _thresha.np_pseudorandom_share_0 = np_pseudorandom_share_0


def uninstall_shares() -> None:
    """Restore MPyC's own recombination, PRSS and PRZS."""
    _thresha.np_recombine = _original_recombine
    _thresha.np_pseudorandom_share = _original_prss
    _thresha.np_pseudorandom_share_0 = _original_przs


def install_exact() -> None:
    """Every speed-up that leaves each value exactly as MPyC computes it (idempotent)."""
    install_matmul()
    install_mul()
    install_array_init()
    install_shares()


def uninstall_exact() -> None:
    """Undo ``install_exact``."""
    uninstall_matmul()
    uninstall_mul()
    uninstall_array_init()
    uninstall_shares()
