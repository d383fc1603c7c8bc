"""The OPPRF tables of the linkage (jointstats.engine.opprf): a programmed output decodes to
its value, any other output to a uniform-looking one, and the table itself looks uniform."""
import os

import numpy as np
import pytest

from jointstats.engine import opprf
from jointstats.errors import LinkageError
from jointstats.mpc.rns import Rns, primes_for

RNS = Rns(primes_for(100))


def outputs(n: int) -> np.ndarray:
    return np.frombuffer(os.urandom(32 * n), dtype=np.uint8).reshape(n, 32)


@pytest.mark.parametrize("n", [0, 1, 7, 500, 20_000])
def test_programmed_outputs_decode_to_their_values(n):
    keys = outputs(n)
    values = RNS.random((n, 3))
    rows = opprf.table_rows(n)
    seed, table = opprf.program(RNS, keys, values.astype(np.uint32), rows)
    assert table.shape == (len(RNS), rows, 3) and table.dtype == np.uint32
    assert (opprf.evaluate(RNS, seed, table, keys) == values).all()


def test_the_tables_size_is_public_not_the_number_of_programmed_outputs():
    rows = opprf.table_rows(3 * 1000)  # from the announced keys
    for n in (0, 10, 3000):
        seed, table = opprf.program(RNS, outputs(n), RNS.random((n, 2)).astype(np.uint32), rows)
        assert table.shape[1] == rows
    with pytest.raises(ValueError):
        opprf.program(RNS, outputs(3001), RNS.random((3001, 2)).astype(np.uint32), rows)


def test_other_outputs_decode_to_uniform_values_and_the_table_is_uniform():
    """Without a programmed output nothing tells a table's entries or decodings from random:
    residues of unprogrammed outputs and of the table pass a coarse uniformity check, and
    never equal a programmed value (the leader cannot tell a match from a miss)."""
    n = 5000
    values = np.zeros((len(RNS), n, 1), dtype=np.uint32)  # the worst case: all values equal
    seed, table = opprf.program(RNS, outputs(n), values, opprf.table_rows(n))
    misses = opprf.evaluate(RNS, seed, table, outputs(20_000))
    assert not (misses == 0).all(axis=0).any()
    for sample in (misses[0, :, 0].astype(np.int64), table[0, :, 0].astype(np.int64)):
        counts = np.bincount(sample * 16 // RNS.primes[0], minlength=16)
        expected = len(sample) / 16
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 50  # 15 degrees of freedom: p < 1e-5 for a uniform sample


def test_a_failed_peeling_takes_another_seed(monkeypatch):
    real = opprf._peel
    calls = []

    def flaky(pos, rows):
        calls.append(1)
        return None if len(calls) < 3 else real(pos, rows)
    monkeypatch.setattr(opprf, "_peel", flaky)
    keys, values = outputs(50), RNS.random((50, 2))
    seed, table = opprf.program(RNS, keys, values.astype(np.uint32), opprf.table_rows(50))
    # each failed seed's masks were taken off again: the values decode as they were (a real
    # peeling of 50 keys fails too, about 1 time in 20: then one more seed)
    assert len(calls) >= 3 and (opprf.evaluate(RNS, seed, table, keys) == values).all()
    monkeypatch.setattr(opprf, "_peel", lambda pos, rows: None)
    with pytest.raises(LinkageError, match="could not build an OPPRF table"):
        opprf.program(RNS, keys, values.astype(np.uint32), opprf.table_rows(50))


def test_peeling_fails_on_a_two_core():
    """Three keys on the same three entries cannot all be peeled: a 2-core."""
    pos = np.array([[0, 3, 6], [0, 3, 6], [0, 3, 6], [1, 4, 7]])
    assert opprf._peel(pos, 9) is None
    rounds = opprf._peel(np.array([[0, 3, 6], [0, 4, 7], [1, 4, 8]]), 9)
    assert sorted(k for keys, _ in rounds for k in keys.tolist()) == [0, 1, 2]
