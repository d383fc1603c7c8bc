"""The public number theory of exact reveals: the fixed primes, CRT and rational reconstruction."""
from __future__ import annotations

import random
from fractions import Fraction

import gmpy2

from jointstats import _fields


def test_fixed_regression_primes_are_distinct_primes_3_mod_4():
    # jointstats._mpc creates MPyC fields for exactly these without MPyC's primality test
    primes = _fields.all_regression_primes()
    assert len(set(primes)) == len(primes) == 24
    for p in primes:
        assert p.bit_length() == 2048 and p % 4 == 3
        assert gmpy2.is_prime(p, 50)


def test_trusted_fields_are_mpycs_own_and_reject_other_moduli():
    from jointstats import _mpc
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
