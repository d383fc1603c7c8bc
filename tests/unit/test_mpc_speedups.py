"""The gmpy2 matrix products for big prime fields give exactly MPyC's own results."""
from __future__ import annotations

import random

import numpy as np
import pytest

from jointstats import _mpc, _mpc_speedups  # noqa: F401 (_mpc first: it shields sys.argv)
from jointstats._fields import regression_primes


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
    from mpyc import finfields
    original = (finfields.FiniteFieldArray.__init__, finfields.FiniteFieldArray.__matmul__)
    _mpc_speedups.install_exact()
    assert finfields.FiniteFieldArray.__init__ is not original[0]
    assert finfields.FiniteFieldArray.__matmul__ is not original[1]
    _mpc_speedups.uninstall_exact()
    assert (finfields.FiniteFieldArray.__init__, finfields.FiniteFieldArray.__matmul__) == original
