"""Public number theory for exact reveals: fixed primes, CRT, rational reconstruction, mod-p inverse.

A rational statistic q = a/b is computed inside the MPC as the field element a * b^-1
(mod p) and revealed as such: that is exactly q, nothing more. Rational
reconstruction recovers a/b in lowest terms when p > 2 * |a| * b, which the plan
proves; several primes are combined by the Chinese remainder theorem when one is
not enough.
"""
from __future__ import annotations

from fractions import Fraction

import gmpy2

#: p_i = 2**2048 - offset_i: the 24 largest primes below 2**2048 with p = 3 (mod 4),
#: found once with gmpy2.prev_prime (checked by tests/unit/test_fields.py).
_OFFSETS_2048 = (1557, 7437, 9509, 11837, 14505, 16773, 22349, 26445, 26489, 26505, 26673,
                 30989, 33329, 38817, 40433, 44933, 47609, 62985, 66797, 67229, 68993, 72113,
                 73025, 73913)


def regression_primes(count: int) -> list[int]:
    """The first ``count`` fixed 2048-bit primes (all parties use the same ones)."""
    if count > len(_OFFSETS_2048):
        raise ValueError(f"needs {count} prime fields; at most {len(_OFFSETS_2048)} are available "
                         "(reduce the number of regression terms)")
    return [(1 << 2048) - off for off in _OFFSETS_2048[:count]]


def all_regression_primes() -> list[int]:
    """Every fixed 2048-bit prime, in order."""
    return regression_primes(len(_OFFSETS_2048))


def crt(residues: list[int], primes: list[int]) -> tuple[int, int]:
    """Combine residues modulo distinct primes into (x mod P, P)."""
    x, modulus = 0, 1
    for r, p in zip(residues, primes):
        t = ((r - x) * pow(modulus, -1, p)) % p
        x += modulus * t
        modulus *= p
    return x % modulus, modulus


def rational(a: int, p: int, num_bits: int, den_bits: int) -> Fraction:
    """The unique a/b with |a| < 2**num_bits, 0 < b < 2**den_bits equal to ``a`` mod ``p``.

    Requires p > 2**(num_bits + den_bits + 1) for uniqueness (the plan guarantees it).
    """
    bound = gmpy2.mpz(1) << num_bits
    r0, r1 = gmpy2.mpz(p), gmpy2.mpz(a) % p
    t0, t1 = gmpy2.mpz(0), gmpy2.mpz(1)
    while r1 >= bound:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        t0, t1 = t1, t0 - q * t1
    if t1 == 0 or abs(t1) >= (1 << den_bits):
        raise ArithmeticError("rational reconstruction failed: the value exceeds the plan's bounds")
    return Fraction(int(r1), int(t1))


def inverse_mod(matrix: list[list[int]], p: int) -> list[list[int]] | None:
    """Inverse of a square matrix over GF(p) by Gauss-Jordan elimination; None if singular."""
    n = len(matrix)
    p = gmpy2.mpz(p)  # gmpy2 integers: about 3x faster than Python's at 2048 bits
    a = [[gmpy2.mpz(v) % p for v in row] + [gmpy2.mpz(i == j) for j in range(n)]
         for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if a[r][col]), None)
        if pivot is None:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        inv = gmpy2.invert(a[col][col], p)
        row = [(v * inv) % p for v in a[col]]
        a[col] = row
        for r in range(n):
            if r != col and a[r][col]:
                f = a[r][col]
                a[r] = [(x - f * y) % p for x, y in zip(a[r], row)]
    return [[int(v) for v in row[n:]] for row in a]
