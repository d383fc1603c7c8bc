"""Shamir secret sharing over word-sized primes, vectorised on numpy int64 arrays.

Why not MPyC's field arrays: MPyC 0.11 keeps every finite-field array as a numpy array of
Python integers (``dtype=object``; its source says "TODO: optimize using dtype=int8/int16/
int32/int64"), so every share of a large linked table is a Python object and every
operation on it an interpreter loop. A linked job's table (``jointstats.engine.vertical``)
needs a modulus of about 150 bits (the exact sums of products over a million rows, and a
statistical mask on top), and only a few operations: sharing, resharing with a permutation,
products with a degree reduction, sums and inner products, and an opening.

So the table is shared in a residue number system: modulo each of ``L`` primes just below
2^31 (:func:`primes_for`), each residue a separate Shamir sharing of the same polynomial
degree, with the same evaluation points (party i holds the share at i + 1, as MPyC). By the
Chinese remainder theorem this is exactly a Shamir sharing modulo the product M of the
primes (Z_M is a product of fields, and Shamir is perfectly hiding in each), so every
protocol on it is the textbook one. All arithmetic is exact on int64 (a product of two
residues is below 2^62), and inner products go through float64 matrix products on 11-bit
limbs (every partial sum an integer below 2^53, so exact) to use BLAS.

An array of residues has shape ``(L, *shape)``: ``a[l]`` is the value modulo ``primes[l]``.
Inputs may be of any integer dtype holding residues (large tables are kept as uint32, half
the memory); results are int64. This module sends nothing; ``jointstats.mpc.shamir`` has the
protocols.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import gmpy2
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: Bits of every prime: residues are below 2^31, so a product of two fits int64.
WORD = 31
_MASK = (1 << WORD) - 1
#: Limbs of a residue in inner products: 3 x 11 bits; a product of two limbs is below 2^22,
#: so float64 sums of up to 2^31 of them are exact integers.
_LIMB = 11
_LIMBS = 3
#: Rows per block of an inner product (bounds the float64 temporaries).
_CHUNK = 1 << 16


def primes_for(bits: int) -> tuple[int, ...]:
    """The fewest of the largest primes below 2^31 whose product exceeds 2^bits (the same on
    every party: a deterministic search downwards)."""
    out: list[int] = []
    product = 1
    candidate = 1 << WORD
    while product.bit_length() <= bits:
        candidate -= 1
        while not gmpy2.is_prime(candidate):
            candidate -= 1
        out.append(candidate)
        product *= candidate
    return tuple(out)


class Rns:
    """Arithmetic on residue arrays for the primes ``primes`` (see the module docstring)."""

    def __init__(self, primes: Sequence[int]):
        if not primes or any(not 1 << (WORD - 1) < p <= _MASK or not gmpy2.is_prime(p) for p in primes):
            # above 2^30 too: uniform residues are 31-bit words below the prime (``random``)
            raise ValueError("the primes of a residue number system are primes between 2^30 and 2^31")
        self.primes = tuple(int(p) for p in primes)
        self.modulus = math.prod(self.primes)
        self._p = [np.int64(p) for p in self.primes]
        # Garner-free CRT: value = sum_l r_l * c_l mod M, c_l = (M/p_l) * ((M/p_l)^-1 mod p_l)
        self._crt = [(self.modulus // p) * pow(self.modulus // p, -1, p) for p in self.primes]

    def __len__(self) -> int:
        return len(self.primes)

    def _reduce(self, a: np.ndarray) -> np.ndarray:
        """``a`` reduced modulo each prime, in place (int64 entries below 2^63 in magnitude).
        One prime at a time, by a numpy int64 scalar: numpy then divides by a precomputed
        reciprocal (libdivide), about 7x faster than a broadcast array of moduli."""
        for l, p in enumerate(self._p):
            np.remainder(a[l], p, out=a[l])
        return a

    # -- conversions ---------------------------------------------------------------------

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Residues of an int64 array (any sign): shape ``(L, *values.shape)``."""
        values = np.asarray(values, dtype=np.int64)
        out = np.empty((len(self.primes),) + values.shape, dtype=np.int64)
        for l, p in enumerate(self._p):
            np.remainder(values, p, out=out[l])
        return out

    def from_ints(self, values: Sequence[int]) -> np.ndarray:
        """Residues of Python integers (any size and sign): shape ``(L, len(values))``."""
        return np.array([[int(v) % p for v in values] for p in self.primes], dtype=np.int64).reshape(
            len(self.primes), len(values))

    def to_ints(self, residues: np.ndarray) -> list[int]:
        """The integers in [0, M) of a residue array of shape ``(L, n)`` (Chinese remainders)."""
        rows = [[int(v) for v in residues[l]] for l in range(len(self.primes))]
        return [sum(r * c for r, c in zip(col, self._crt)) % self.modulus for col in zip(*rows)]

    # -- randomness ----------------------------------------------------------------------

    def random(self, shape: Sequence[int], key: bytes | None = None) -> np.ndarray:
        """Residues uniform modulo each prime, independent: shape ``(L, *shape)``. Drawn from
        an AES-256-CTR keystream under a fresh key from ``os.urandom`` (a CSPRNG, about twice
        as fast as ``os.urandom`` itself for tens of megabytes), 31-bit words, values at or
        above the prime redrawn (exactly uniform; the primes are within a few thousand of
        2^31, so a redraw is rare). With a 32-byte ``key`` instead: the same residues from
        the same key, wherever they are drawn (pseudorandom shares, ``shamir.deal``)."""
        shape = tuple(int(s) for s in shape)
        size = math.prod(shape)
        stream = Cipher(algorithms.AES(key or os.urandom(32)), modes.CTR(b"\x00" * 16)).encryptor()
        words = np.frombuffer(stream.update(bytes(4 * size * len(self.primes))), dtype="<u4")
        out = words.astype(np.int64).reshape(len(self.primes), size)
        out &= _MASK
        for l, p in enumerate(self.primes):
            bad = np.flatnonzero(out[l] >= p)
            while bad.size:
                more = np.frombuffer(stream.update(bytes(4 * bad.size)), dtype="<u4").astype(np.int64) & _MASK
                out[l, bad] = more
                bad = bad[more >= p]
        return out.reshape((len(self.primes),) + shape)

    # -- sharing -------------------------------------------------------------------------

    def split(self, secret: np.ndarray, t: int, m: int) -> list[np.ndarray]:
        """Shamir shares of degree ``t`` of the residue array ``secret`` for parties 0..m-1 (at
        the points 1..m): a fresh uniformly random polynomial per element and prime."""
        coeffs = [self.random(secret.shape[1:]) for _ in range(t)]
        shares = []
        for x in range(1, m + 1):
            if not coeffs:
                shares.append(secret.copy())
                continue
            acc = coeffs[-1] * x  # Horner: ((c_t x + c_t-1) x + ...) x + secret
            for c in reversed(coeffs[:-1]):
                acc += c
                acc *= x
                self._reduce(acc)
            acc += secret
            shares.append(self._reduce(acc))
        return shares

    def split_through(self, secret: np.ndarray, fixed: dict[int, np.ndarray], m: int) -> list:
        """Shamir shares for parties 0..m-1 of the polynomial of degree ``len(fixed)`` through
        (0, ``secret``) and, for each party q of ``fixed``, (q + 1, ``fixed[q]``): the shares
        of the parties of ``fixed`` are those given (None in the list: they have them), every
        other party's is interpolated. With uniformly random ``fixed`` values this is a
        uniformly random sharing of ``secret`` of that degree, as :meth:`split` makes."""
        points = [0] + [q + 1 for q in fixed]
        values = [secret] + list(fixed.values())
        shares: list = []
        for j in range(m):
            if j in fixed:
                shares.append(None)
                continue
            shares.append(self.combine(self.lagrange(points, at=j + 1), values))
        return shares

    def lagrange(self, points: Sequence[int], at: int = 0) -> np.ndarray:
        """Lagrange coefficients at ``at`` (0: the secret) for the evaluation points ``points``
        (party index + 1): shape ``(len(points), L)``; sum_i c_i * share_i is the value of the
        polynomial at ``at`` when the shares are of degree below len(points)."""
        out = np.empty((len(points), len(self.primes)), dtype=np.int64)
        for l, p in enumerate(self.primes):
            for i, xi in enumerate(points):  # the basis polynomial of xi, at ``at``
                num = den = 1
                for xj in points:
                    if xj != xi:
                        num = num * (at - xj) % p
                        den = den * (xi - xj) % p
                out[i, l] = num * pow(den, -1, p) % p
        return out

    # -- arithmetic ----------------------------------------------------------------------

    def scale(self, a: np.ndarray, factors: np.ndarray) -> np.ndarray:
        """``a`` times one factor per prime (``factors`` of shape ``(L,)``, residues)."""
        out = np.empty(a.shape, dtype=np.int64)
        for l, f in enumerate(factors):
            np.multiply(a[l], f, out=out[l])
        return self._reduce(out)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._reduce(np.add(a, b, dtype=np.int64))

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise product (of shares: a share of degree the sum of theirs; ``b`` may
        broadcast against ``a``)."""
        return self._reduce(np.multiply(a, b, dtype=np.int64))

    def total(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The sum of several residue arrays of one shape (up to 2^32 of them)."""
        acc = np.array(parts[0], dtype=np.int64)
        for part in parts[1:]:
            acc += part
        return self._reduce(acc)

    def combine(self, coeffs: np.ndarray, parts: Sequence[np.ndarray]) -> np.ndarray:
        """sum_i coeffs[i] * parts[i] (``coeffs`` of shape ``(len(parts), L)``)."""
        acc = np.zeros(parts[0].shape, dtype=np.int64)
        for c, part in zip(coeffs, parts):
            acc += self.scale(part, c)
        return self._reduce(acc)

    def sum_rows(self, a: np.ndarray) -> np.ndarray:
        """Sum over axis 1 (the rows) of an ``(L, n, ...)`` array (n below 2^32)."""
        return self._reduce(a.sum(axis=1, dtype=np.int64))

    def inner(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a[l].T @ b[l]`` modulo each prime, for ``a`` of shape ``(L, n, k)`` and ``b`` of
        shape ``(L, n, j)``: shape ``(L, k, j)``. Float64 matrix products of 11-bit limbs in
        blocks of rows (every sum an exact integer below 2^53), then the limbs recombined."""
        L, n, k = a.shape
        j = b.shape[2]
        out = np.zeros((L, k, j), dtype=np.int64)
        for l, p in enumerate(self._p):
            acc = np.zeros((_LIMBS * k, _LIMBS * j), dtype=np.int64)
            for start in range(0, n, _CHUNK):
                la = _limbs(a[l, start:start + _CHUNK])
                lb = la if b is a else _limbs(b[l, start:start + _CHUNK])
                acc += (la.T @ lb).astype(np.int64)  # below 2^38 per block: 2^25 blocks fit
            acc %= p
            total = out[l]
            for u in range(_LIMBS):
                for v in range(_LIMBS):
                    shift = np.int64(pow(2, _LIMB * (u + v), int(p)))
                    total += acc[u * k:(u + 1) * k, v * j:(v + 1) * j] * shift % p
            total %= p
        return out


def _limbs(x: np.ndarray) -> np.ndarray:
    """The (rows, 3 k) float64 limbs of an (rows, k) array of residues: columns of the low
    limbs, then the middle, then the high."""
    return np.concatenate([((x >> (_LIMB * u)) & ((1 << _LIMB) - 1)).astype(np.float64)
                           for u in range(_LIMBS)], axis=1)
