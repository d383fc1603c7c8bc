"""The gmpy2 matrix products for big prime fields give exactly MPyC's own results."""
from __future__ import annotations

import random

import numpy as np
import pytest

from jointstats.mpc import runtime as _mpc  # noqa: F401 (_mpc first: it shields sys.argv)
from jointstats.mpc import speedups as _mpc_speedups
from jointstats.plan.fields import regression_primes


@pytest.fixture
def patched():
    _mpc_speedups.install_matmul()
    yield
    _mpc_speedups.uninstall_matmul()


@pytest.mark.parametrize("modulus", [regression_primes(1)[0], 2 ** 61 - 1])
def test_products_equal_mpycs(modulus, patched):
    from mpyc import finfields
    field = finfields.GF(modulus)
    rng = random.Random(modulus % 1000)
    A = field.array(np.array([[rng.randrange(modulus) for _ in range(5)] for _ in range(5)], dtype=object))
    B = field.array(np.array([[rng.randrange(modulus) for _ in range(5)] for _ in range(3)], dtype=object).T)
    v = np.array([rng.randrange(modulus) for _ in range(5)], dtype=object)
    fast = [(A @ B).value, (A @ v).value, (v @ A).value, (A @ B.value).value, (A[0] @ v).value]
    _mpc_speedups.uninstall_matmul()
    slow = [(A @ B).value, (A @ v).value, (v @ A).value, (A @ B.value).value, (A[0] @ v).value]
    _mpc_speedups.install_matmul()
    for f, s in zip(fast, slow):
        assert np.array_equal(np.asarray(f, dtype=object), np.asarray(s, dtype=object))
        assert all(type(x) is int for x in np.ravel(np.asarray(f, dtype=object)))


@pytest.mark.parametrize("copy", [False, True])
def test_array_constructor_equals_mpycs(copy):
    """The constructor that decides numpy's version once builds the same arrays as MPyC's."""
    from mpyc import finfields
    field = finfields.GF(regression_primes(1)[0])
    source = np.array([[-1, 2, field.modulus + 5], [0, 7, -field.modulus]], dtype=object)
    built = []
    for install in (_mpc_speedups.install_array_init, _mpc_speedups.uninstall_array_init):
        install()
        arr = field.array(source.copy(), copy=copy)
        raw = field.array(source.copy(), check=False)
        built.append((arr.value, arr.value.shape, raw.value))
    _mpc_speedups.uninstall_array_init()
    (fast, shape_f, raw_f), (slow, shape_s, raw_s) = built
    assert shape_f == shape_s == (2, 3)
    assert np.array_equal(fast, slow) and np.array_equal(raw_f, raw_s)
    assert fast.tolist() == [[field.modulus - 1, 2, 5], [0, 7, 0]]


def test_install_exact_is_reversible():
    from mpyc import finfields, thresha

    def current():
        return (finfields.FiniteFieldArray.__init__, finfields.FiniteFieldArray.__matmul__,
                thresha.np_recombine, thresha.np_pseudorandom_share)
    original = current()
    _mpc_speedups.install_exact()
    assert all(now is not before for now, before in zip(current(), original))
    _mpc_speedups.uninstall_exact()
    assert current() == original


@pytest.mark.parametrize("shape", [(), (7,), (3, 4)])
def test_big_field_reduction_equals_mpycs(shape):
    """Big prime fields are reduced by gmpy2: same ints, same shape, in place as MPyC's."""
    from mpyc import finfields
    field = finfields.GF(regression_primes(1)[0])
    p = field.modulus
    rng = random.Random(7)
    specials = [0, 1, p - 1, p, p + 1, -1, -p, 2 * p, -(1 << 4100)]
    count = int(np.prod(shape))
    values = [specials[i] if i < len(specials) else rng.getrandbits(4200) * rng.choice([1, -1])
              for i in range(count)]
    source = np.array(values, dtype=object).reshape(shape)
    results = []
    for install in (_mpc_speedups.install_array_init, _mpc_speedups.uninstall_array_init):
        install()
        mine = source.copy()
        arr = field.array(mine)
        results.append((arr.value.copy(), arr.value.shape, mine.copy()))
    _mpc_speedups.uninstall_array_init()
    (fast, shape_f, passed_f), (slow, shape_s, passed_s) = results
    assert shape_f == shape_s == shape
    assert fast.tolist() == slow.tolist()
    assert np.ravel(fast).tolist() == [v % p for v in values]
    assert np.array_equal(passed_f, passed_s)  # the caller's array changed alike
    assert all(type(x) is int for x in np.ravel(fast))


def _shares_case(modulus):
    from mpyc import finfields, thresha
    field = finfields.GF(modulus)
    rng = random.Random(modulus % 997)
    secrets_ = [rng.randrange(modulus) for _ in range(9)]
    shares = thresha.np_random_split(field, np.array(secrets_, dtype=object), 1, 3)
    return field, secrets_, shares


@pytest.mark.parametrize("modulus", [regression_primes(2)[1], 2 ** 61 - 1])
def test_recombine_equals_mpycs(modulus):
    from mpyc import thresha
    field, secrets_, shares = _shares_case(modulus)
    out = []
    for install in (_mpc_speedups.install_shares, _mpc_speedups.uninstall_shares):
        install()
        points = [(j + 1, shares[j]) for j in (2, 0)]  # raw values, as MPyC passes them
        one = thresha.np_recombine(field, points)
        several = thresha.np_recombine(field, points, [0, 5])
        out.append((one.value.tolist(), several.value.tolist()))
    assert out[0] == out[1]
    assert out[0][0] == secrets_


def _per_party_shares(name: str, field, keys: dict, n: int) -> tuple[list, list]:
    """Every party's shares from thresha.``name`` (PRSS or PRZS) over the same keys: with our
    replacements installed, and with MPyC's own."""
    from mpyc import thresha
    outs = []
    for install in (_mpc_speedups.install_shares, _mpc_speedups.uninstall_shares):
        install()
        per_party = []
        for i in range(3):
            prfs = {S: thresha.PRF(k, field.modulus) for S, k in keys.items() if i in S}
            per_party.append(getattr(thresha, name)(field, 3, i, prfs, b"uci", n).value.tolist())
        outs.append(per_party)
    return outs[0], outs[1]


@pytest.mark.parametrize("modulus", [regression_primes(1)[0], 2 ** 61 - 1])
def test_pseudorandom_shares_equal_mpycs(modulus):
    """PRSS over the same keys gives MPyC's shares, and they reconstruct one random array."""
    from mpyc import finfields, thresha
    field = finfields.GF(modulus)
    keys = {frozenset(S): bytes([17 * i + 3]) * 16
            for i, S in enumerate([(0, 1), (0, 2), (1, 2)])}
    ours, mpycs = _per_party_shares("np_pseudorandom_share", field, keys, 6)
    assert ours == mpycs
    points = [(i + 1, np.array(ours[i], dtype=object)) for i in (0, 1)]
    other = [(i + 1, np.array(ours[i], dtype=object)) for i in (1, 2)]
    assert thresha.np_recombine(field, points).value.tolist() == thresha.np_recombine(field, other).value.tolist()


@pytest.mark.parametrize("modulus", [regression_primes(1)[0], 2 ** 61 - 1])
def test_elementwise_products_equal_mpycs(modulus):
    from mpyc import finfields
    field = finfields.GF(modulus)
    rng = random.Random(modulus % 991)
    a = field.array(np.array([rng.randrange(modulus) for _ in range(6)], dtype=object).reshape(2, 3))
    b = np.array([rng.randrange(modulus) for _ in range(3)], dtype=object)
    scalar = field.array(np.array(rng.randrange(modulus), dtype=object))

    def products():
        return [(a * a).value, (a * b).value, (b * a).value, (a * 5).value, (5 * a).value,
                (a * field(7)).value, (scalar * a).value, (scalar * scalar).value,
                (a * np.arange(3)).value]
    _mpc_speedups.install_mul()
    fast = products()
    _mpc_speedups.uninstall_mul()
    slow = products()
    for f, s in zip(fast, slow):
        assert np.asarray(f, dtype=object).tolist() == np.asarray(s, dtype=object).tolist()
        assert np.asarray(f).shape == np.asarray(s).shape
        assert all(type(x) is int for x in np.ravel(np.asarray(f, dtype=object)))


@pytest.mark.parametrize("order", [1, 2, 5, 6, 8, 257, 1000])
def test_bulk_random_coefficients_are_uniform(order):
    """The random splits' coefficients: exactly uniform below the order (chi-square)."""
    from scipy import stats
    draws = _mpc_speedups._uniform_below(order, 20_000 if order > 1 else 10)
    assert all(type(v) is int and 0 <= v < order for v in draws)
    if order > 1:
        counts = np.bincount(draws.astype(np.int64), minlength=order)
        assert stats.chisquare(counts).pvalue > 1e-4


def test_party_runtimes_install_every_speed_up():
    """A party runtime runs with the exact speed-ups and the bulk random splits (checked in
    a fresh interpreter: building a runtime takes over the process's event loop)."""
    import subprocess
    import sys
    probe = (
        "import asyncio\n"
        "from jointstats.mpc import runtime as _mpc\nfrom jointstats.mpc import speedups as s\n"
        "from mpyc import finfields, thresha\n"
        "assert not s.installed()\n"
        "async def build():\n"
        "    return _mpc.make_party_runtime(0, ['solo'], [('127.0.0.1', 0)])\n"
        "asyncio.run(build())\n"
        "print(s.installed(), thresha.np_recombine is s.np_recombine,\n"
        "      finfields.FiniteFieldArray.__mul__ is s._mul)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]


@pytest.mark.parametrize("modulus", [regression_primes(1)[0], 2 ** 61 - 1])
def test_pseudorandom_zero_shares_equal_mpycs(modulus):
    """PRZS (degree-2t sharings of zero, used by _mpc.open_local) gives MPyC's shares, and
    the three shares of a degree-2 sharing reconstruct zero."""
    from mpyc import finfields, thresha
    field = finfields.GF(modulus)
    n = 5
    keys = {frozenset(S): bytes([29 * i + 1]) * 16 for i, S in enumerate([(0, 1), (0, 2), (1, 2)])}
    ours, mpycs = _per_party_shares("np_pseudorandom_share_0", field, keys, n)
    assert ours == mpycs
    assert any(v for share in ours for v in share)  # not trivially zero
    points = [(i + 1, np.array(ours[i], dtype=object)) for i in range(3)]
    assert thresha.np_recombine(field, points).value.tolist() == [0] * n
