"""Public number theory for exact reveals: fixed primes, CRT, rational reconstruction, mod-p inverse.

A rational statistic q = a/b is computed inside the MPC as the field element a * b^-1
(mod p) and revealed as such: that is exactly q, nothing more. Rational
reconstruction recovers a/b in lowest terms when p > 2 * |a| * b, which the plan
proves; several primes are combined by the Chinese remainder theorem when one is
not enough.
"""
from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any, Callable

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


def rationals(values: list[int], p: int, num_bits: int, den_bits: int) -> list[Fraction]:
    """``rational`` of each value, trying the denominators already found first.

    The entries of a solved system share most of their denominator (a determinant), so
    a candidate ``y / D`` with ``y = a * D mod p`` small enough is usually found without
    a Euclid run of its own. It is the same answer: with p > 2**(num_bits + den_bits + 1)
    at most one fraction within the bounds is congruent to ``a`` (see ``rational``).
    """
    num_bound, den_bound = 1 << num_bits, 1 << den_bits
    pm, half = gmpy2.mpz(p), gmpy2.mpz(p) // 2
    out: list[Fraction] = []
    den = gmpy2.mpz(1)
    for a in values:
        y = (gmpy2.mpz(a) * den) % pm
        if y > half:
            y -= pm
        if abs(y) < num_bound:
            out.append(Fraction(int(y), int(den)))
            continue
        q = rational(a, p, num_bits, den_bits)
        out.append(q)
        joint = gmpy2.lcm(den, q.denominator)
        den = joint if joint < den_bound else gmpy2.mpz(q.denominator)
    return out


@functools.lru_cache(maxsize=64)
def residue_function(p: int) -> Callable[[Any], Any]:
    """x -> x mod p (a gmpy2 integer in [0, p)), for any integer x.

    For p = 2**k - c with a small c (every fixed regression prime: c < 2**17) it folds,
    since 2**k = c (mod p): x = hi * 2**k + lo is replaced by hi * c + lo until x is in
    [0, 2**k), then p is subtracted once if needed. That is a shift, a mask and a small
    product instead of a division: about 3x faster than gmpy2's % at 4096 by 2048 bits,
    and it is most of the exact regression's arithmetic. Any other p: gmpy2's %.
    """
    pm = gmpy2.mpz(p)
    k = p.bit_length()
    c = (1 << k) - p
    if p < 3 or c.bit_length() > 32:
        return lambda x: gmpy2.mpz(x) % pm
    cm, mask = gmpy2.mpz(c), (gmpy2.mpz(1) << k) - 1

    def residue(x):
        x = gmpy2.mpz(x)
        while x >> k:  # nonzero while x >= 2**k or x < 0 (an arithmetic shift)
            x = (x >> k) * cm + (x & mask)
        return x - pm if x >= pm else x
    return residue


def inverse_mod(matrix: list[list[int]], p: int) -> list[list[int]] | None:
    """Inverse of a square matrix over GF(p) by Gauss-Jordan elimination; None if singular.

    In place (n columns a row, not 2n): after step k, slot j of a row holds column j of
    the reduced matrix for j > k and column j of the inverse so far for j <= k. A row
    swap turns the result into the inverse of the row-permuted matrix, undone at the end
    by swapping the same columns in reverse order.
    """
    n = len(matrix)
    red = residue_function(p)
    p = gmpy2.mpz(p)  # gmpy2 integers: about 3x faster than Python's at 2048 bits
    a = [[red(v) for v in row] for row in matrix]
    swaps = []
    for k in range(n):
        pivot = next((r for r in range(k, n) if a[r][k]), None)
        if pivot is None:
            return None
        if pivot != k:
            a[k], a[pivot] = a[pivot], a[k]
            swaps.append((k, pivot))
        row = a[k]
        inv = gmpy2.invert(row[k], p)
        row[k] = gmpy2.mpz(1)
        row = a[k] = [red(v * inv) for v in row]
        for r in range(n):
            f = a[r][k]
            if r != k and f:
                other = a[r]
                other[k] = gmpy2.mpz(0)
                a[r] = [red(x - f * y) for x, y in zip(other, row)]
    for k, pivot in reversed(swaps):
        for row in a:
            row[k], row[pivot] = row[pivot], row[k]
    return [[int(v) for v in row] for row in a]
