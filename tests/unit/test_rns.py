"""Residue-number-system Shamir arithmetic (jointstats.mpc.rns) against Python integers, and the
codec of residue arrays. The protocols over real party processes: tests/multiparty/test_shamir.py."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from jointstats.errors import CodecError
from jointstats.mpc import codec as _codec
from jointstats.mpc import rns as R
from jointstats.mpc.rns import Rns, primes_for

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def rns() -> Rns:
    return Rns(primes_for(150))


def test_primes_are_the_largest_below_two_to_the_31_and_cover_the_bits():
    ps = primes_for(150)
    assert ps[0] == 2**31 - 1 and list(ps) == sorted(ps, reverse=True)
    assert Rns(ps).modulus.bit_length() > 150 and Rns(ps[:-1]).modulus.bit_length() <= 150
    assert primes_for(20) == (2**31 - 1,)
    with pytest.raises(ValueError):
        Rns([101])  # below 2^30: no uniform 31-bit draws
    with pytest.raises(ValueError):
        Rns([2**31 - 3])  # not prime


def test_encode_and_chinese_remainders_round_trip_with_signs(rns):
    values = np.array([0, 1, -1, 2**40, -(2**62) + 5, 123456789], dtype=np.int64)
    back = rns.to_ints(rns.encode(values))
    assert back == [int(v) % rns.modulus for v in values]
    big = [3**90, -(5**60), 0]
    assert rns.to_ints(rns.from_ints(big)) == [v % rns.modulus for v in big]


@pytest.mark.parametrize("t,m", [(1, 3), (1, 4), (2, 5), (3, 7)])
def test_any_t_plus_1_shares_recover_the_secret_and_products_need_2t_plus_1(rns, t, m):
    x = RNG.integers(-2**31, 2**31, (50, 3))
    y = RNG.integers(-2**31, 2**31, (50, 3))
    sx, sy = rns.split(rns.encode(x), t, m), rns.split(rns.encode(y), t, m)
    for group in itertools.combinations(range(m), t + 1):
        back = rns.combine(rns.lagrange([p + 1 for p in group]), [sx[p] for p in group])
        assert np.array_equal(back, rns.encode(x))
    products = [rns.mul(a, b) for a, b in zip(sx, sy)]
    group = list(range(2 * t + 1))
    back = rns.combine(rns.lagrange([p + 1 for p in group]), [products[p] for p in group])
    assert rns.to_ints(back.reshape(len(rns), -1)) == [int(v) % rns.modulus for v in (x * y).ravel()]


def test_t_shares_are_uniform_whatever_the_secret(rns):
    """One share of a degree-1 sharing is uniform: its residues modulo 7 are (chi-square)."""
    from scipy import stats
    shares = rns.split(rns.encode(np.zeros(60_000, dtype=np.int64)), 1, 3)[1]
    counts = np.bincount((shares[2] % 7).ravel(), minlength=7)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_random_residues_are_below_their_prime_and_redrawn_when_not(rns, monkeypatch):
    out = rns.random((1000,))
    assert all((out[l] < p).all() and (out[l] >= 0).all() for l, p in enumerate(rns.primes))
    # force redraws: a prime whose word range above it is large (2^30 + 3 is prime)
    small = Rns([2**30 + 3])
    draw = small.random((20_000,))
    assert (draw < 2**30 + 3).all() and draw.max() > 2**29  # redrawn, not clipped


def test_inner_products_are_exact_across_row_blocks(rns, monkeypatch):
    monkeypatch.setattr(R, "_CHUNK", 64)  # several blocks of rows
    a = RNG.integers(-2**31, 2**31, (300, 4))
    b = RNG.integers(-2**31, 2**31, (300, 2))
    got = rns.inner(rns.encode(a), rns.encode(b))
    want = a.astype(object).T @ b.astype(object)
    assert rns.to_ints(got.reshape(len(rns), -1)) == [int(v) % rns.modulus for v in want.ravel()]
    top = np.full((300, 2), 2**31 - 2, dtype=np.int64)  # every limb at its largest
    got = rns.inner(top[None].repeat(len(rns), 0), top[None].repeat(len(rns), 0))
    assert rns.to_ints(got.reshape(len(rns), -1))[0] == 300 * (2**31 - 2) ** 2 % rns.modulus


def test_residue_codec_accepts_exact_arrays_only(rns):
    x = rns.random((4, 3))
    data = _codec.encode_residues(x)
    assert np.array_equal(_codec.decode_residues(data, rns.primes, (4, 3)), x)
    with pytest.raises(CodecError):
        _codec.decode_residues(data[:-4], rns.primes, (4, 3))
    with pytest.raises(CodecError):
        _codec.decode_residues(data, rns.primes, (4, 4))
    bad = x.copy()
    bad[1, 2, 0] = rns.primes[1]  # not below its prime
    with pytest.raises(CodecError, match="below its prime"):
        _codec.decode_residues(_codec.encode_residues(bad), rns.primes, (4, 3))


@pytest.mark.parametrize("t,m", [(1, 3), (1, 4), (2, 5), (2, 6), (3, 7)])
def test_a_sharing_through_given_shares_is_a_sharing_of_the_secret(rns, t, m):
    """Pseudorandom shares (shamir.deal with pair seeds): the t given shares and the
    interpolated others lie on one polynomial of degree t through the secret."""
    x = RNG.integers(-2**31, 2**31, (40, 2))
    fixed = {q: rns.random((40, 2), key=bytes([q]) * 32) for q in range(1, t + 1)}
    shares = rns.split_through(rns.encode(x), fixed, m)
    assert all(shares[q] is None for q in fixed)
    full = [fixed[j] if shares[j] is None else shares[j] for j in range(m)]
    for group in itertools.combinations(range(m), t + 1):
        back = rns.combine(rns.lagrange([p + 1 for p in group]), [full[p] for p in group])
        assert np.array_equal(back, rns.encode(x))
    assert np.array_equal(rns.random((3,), key=b"k" * 32), rns.random((3,), key=b"k" * 32))


def test_a_pair_seed_message_is_exactly_32_bytes():
    from jointstats.mpc.shamir import SEED
    assert SEED.decode(SEED.encode(b"s" * 32)) == b"s" * 32
    for bad in (b"s" * 31, b"s" * 33, "s" * 32):
        with pytest.raises(CodecError):
            SEED.decode(bad)
