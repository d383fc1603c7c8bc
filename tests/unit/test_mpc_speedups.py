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
