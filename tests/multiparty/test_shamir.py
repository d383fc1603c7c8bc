"""The residue-shared protocols of linked jobs (jointstats.mpc.shamir) between real party
processes over TCP: sharing, a resharing permutation, products with a degree reduction,
inner products, zero tests and the masked opening into integer additive shares, for 3 and 5 parties,
with tables sent in many chunks of rows, with and without pseudorandom shares from pair seeds.

The test spawns ``sys.executable`` on this very file (``__main__`` below is the party
program); every party derives the same public inputs from a seed, party 0 holds the table,
and each writes what it computed to a JSON file that the test checks against numpy.
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np

ROWS, COLS = 500, 3


def _inputs():
    rng = np.random.default_rng(11)
    x = rng.integers(-2**30, 2**30, (ROWS, COLS))
    w = rng.integers(0, 2, ROWS)
    perm = rng.permutation(ROWS)
    return x, w, perm


async def _party(pid: int, ports: list[int], out: Path, seeded: bool) -> None:
    from jointstats.mpc import shamir
    from jointstats.mpc.rns import Rns, primes_for
    from jointstats.mpc.runtime import make_party_runtime
    m = len(ports)
    shamir.MESSAGE_BYTES = 2000  # tables sent in many chunks of rows (a few rows each)
    rt = make_party_runtime(pid, [f"p{i}" for i in range(m)], [("127.0.0.1", p) for p in ports])
    await rt.start()
    try:
        if seeded:  # the t parties after each dealer make their shares from a pair's seed
            await shamir.pair_seeds(rt)
        x, w, perm = _inputs()
        bits = (ROWS * 2**60).bit_length() + 1
        rns = Rns(primes_for(shamir.modulus_bits(bits, 64, m)))
        table = np.column_stack([x, w])
        s = await shamir.share(rt, rns, table if pid == 0 else None, 0, (ROWS, COLS + 1))
        members = list(range(1, rt.threshold + 2))  # the holder is not among them
        s = await shamir.reshare_permute(rt, rns, s, members, perm if pid in members else None)
        xs, ws = s[:, :, :COLS], s[:, :, COLS:]
        v = await shamir.multiply(rt, rns, xs, ws)  # x * w, degree t again
        sums = rns.sum_rows(v)
        gram = rns.inner(v, xs).reshape(len(rns), COLS * COLS)  # degree 2t
        shares = await shamir.integer_shares(rt, rns, np.concatenate([sums, gram], axis=1), bits, 64)
        first = await shamir.integer_shares(rt, rns, xs[:, :, 0], 31, 64)  # the permuted column
        z = np.where(w == 1, 0, x[:, 1])  # zero, or not
        zs = await shamir.share(rt, rns, z if pid == 0 else None, 0, (ROWS,))
        zero = await shamir.integer_shares(rt, rns, await shamir.is_zero(rt, rns, zs), 2, 64)
    finally:
        await rt.shutdown()
    out.write_text(json.dumps({"shares": [str(v) for v in shares + first + zero]}))


def _run(tmp: Path, m: int, seeded: bool, timeout: float = 120) -> list[list[int]]:
    from tests.common import run_party_processes
    from tests.ports import free_ports
    ports = free_ports(m)
    outs = [tmp / f"party{i}.json" for i in range(m)]
    run_party_processes(__file__, [[str(i), ",".join(map(str, ports)), str(outs[i]), str(int(seeded))]
                                   for i in range(m)], tmp, timeout)
    return [[int(v) for v in json.loads(o.read_text())["shares"]] for o in outs]


def _check(tmp: Path, m: int, seeded: bool = True) -> None:
    x, w, perm = _inputs()
    got = np.array(_run(tmp, m, seeded), dtype=object).sum(axis=0)  # the integer shares add up
    v = x.astype(object) * w[:, None]
    want = list(v.sum(axis=0)) + list((v.T @ x.astype(object)).ravel()) + list(x[perm, 0])
    want += [int(z == 0) for z in np.where(w == 1, 0, x[:, 1])]  # shamir.is_zero
    assert list(got) == want


def test_three_parties(tmp_path):
    _check(tmp_path, 3)


def test_three_parties_every_share_sent(tmp_path):
    _check(tmp_path, 3, seeded=False)


def test_five_parties_threshold_two(tmp_path):
    _check(tmp_path, 5)


def test_seven_parties_threshold_three(tmp_path):
    _check(tmp_path, 7)


if __name__ == "__main__":
    asyncio.run(_party(int(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")], Path(sys.argv[3]),
                       sys.argv[4] == "1"))
