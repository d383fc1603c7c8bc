"""The public number theory of exact reveals: the fixed primes, CRT and rational reconstruction."""
from __future__ import annotations

import random
from fractions import Fraction

import gmpy2
import pytest

from jointstats.plan import fields as _fields


@pytest.mark.slow
def test_fixed_regression_primes_are_distinct_primes_3_mod_4():
    # jointstats.mpc.runtime creates MPyC fields for exactly these without MPyC's primality test
    primes = _fields.all_regression_primes()
    assert len(set(primes)) == len(primes) == 24
    for p in primes:
        assert p.bit_length() == 2048 and p % 4 == 3
        assert gmpy2.is_prime(p, 50)


def test_trusted_fields_are_mpycs_own_and_reject_other_moduli():
    from jointstats.mpc import runtime as _mpc
    from mpyc import finfields
    p = _fields.regression_primes(1)[0]
    field = _mpc.Runtime.SecFld(p).field
    assert field.order == p and field is finfields.GF(p)
    import pytest
    with pytest.raises(ValueError):
        finfields.GF(p + 2)  # not a fixed prime: MPyC's own test still applies


def test_crt_and_rational_reconstruction_roundtrip():
    rng = random.Random(5)
    primes = _fields.regression_primes(2)
    modulus = primes[0] * primes[1]
    for _ in range(50):
        q = Fraction(rng.randrange(-2 ** 900, 2 ** 900), rng.randrange(1, 2 ** 900))
        residues = [q.numerator * pow(q.denominator, -1, p) % p for p in primes]
        x, m = _fields.crt(residues, primes)
        assert m == modulus
        assert _fields.rational(x, m, 1000, 1000) == q


def test_inverse_mod_and_singular():
    p = _fields.regression_primes(1)[0]
    a = [[2, 1], [7, 4]]
    inv = _fields.inverse_mod(a, p)
    assert [[sum(a[i][k] * inv[k][j] for k in range(2)) % p for j in range(2)] for i in range(2)] == [[1, 0], [0, 1]]
    assert _fields.inverse_mod([[1, 2], [2, 4]], p) is None


def _times(a, b, p):
    return [[sum(x * y for x, y in zip(row, col)) % p for col in zip(*b)] for row in a]


def test_inverse_mod_with_row_swaps_and_late_singularity():
    p = _fields.regression_primes(1)[0]
    rng = random.Random(11)
    eye = [[int(i == j) for j in range(6)] for i in range(6)]
    for trial in range(20):
        a = [[rng.randrange(p) for _ in range(6)] for _ in range(6)]
        if trial % 2:  # zeros on the leading diagonal force row swaps at several steps
            for k in (0, 2, 3):
                a[k][k] = 0
            a[1][0] = 0
        inv = _fields.inverse_mod(a, p)
        assert _times(a, inv, p) == eye and _times(inv, a, p) == eye
    perm = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]  # every step swaps
    assert _times(perm, _fields.inverse_mod(perm, p), p) == [row[:3] for row in eye[:3]]
    # singular only after two elimination steps: row 3 = row 1 + row 2
    b = [[0, 3, 5, 1], [2, 0, 1, 4], [0, 0, 0, 0], [2, 3, 6, 5]]
    b[2] = [(x + y) % p for x, y in zip(b[0], b[1])]
    assert _fields.inverse_mod(b, p) is None


def test_rationals_with_shared_denominators_match_one_at_a_time():
    rng = random.Random(3)
    primes = _fields.regression_primes(2)
    modulus = primes[0] * primes[1]
    det = rng.randrange(2 ** 800, 2 ** 900)
    wanted = [Fraction(rng.randrange(-2 ** 900, 2 ** 900), det) for _ in range(8)]   # a solved system
    wanted += [Fraction(0), Fraction(-7, 3), Fraction(5)]                               # others
    wanted += [Fraction(rng.randrange(-2 ** 900, 2 ** 900), rng.randrange(1, 2 ** 900)) for _ in range(5)]
    wanted += [Fraction(rng.randrange(-2 ** 900, 2 ** 900), det * 3) for _ in range(3)]
    encoded = [q.numerator * pow(q.denominator, -1, modulus) % modulus for q in wanted]
    assert _fields.rationals(encoded, modulus, 1000, 1000) == wanted
    assert _fields.rationals(encoded, modulus, 1000, 1000) == [_fields.rational(x, modulus, 1000, 1000)
                                                               for x in encoded]


@pytest.mark.parametrize("p", _fields.regression_primes(3) + [2 ** 61 - 1, 2 ** 127 - 1, 10007, 3])
def test_residue_function_equals_python_mod(p):
    """The folding reduction for p = 2**k - c is x % p for every integer, whatever its size or sign."""
    residue = _fields.residue_function(p)
    rng = random.Random(p % 1000)
    k = p.bit_length()
    cases = [0, 1, -1, p - 1, p, p + 1, -p, 2 * p, 1 << k, (1 << k) - 1, -(1 << k), -(1 << 5000)]
    cases += [rng.getrandbits(bits) * rng.choice([1, -1])
              for bits in (1, 11, k - 1, k, k + 1, 2 * k, 2 * k + 100, 3 * k) for _ in range(50)]
    for x in cases:
        assert residue(x) == x % p
