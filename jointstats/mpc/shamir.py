"""Protocols on residue-shared arrays (``jointstats.mpc.rns``) between the parties of a runtime.

The few a linked job needs (``jointstats.engine.vertical``), each the textbook protocol for
Shamir sharing among m parties with threshold t = (m - 1) // 2 (semi-honest, honest
majority, as MPyC), on numpy arrays of residues:

- :func:`share`: a party secret-shares an int64 array (degree t);
- :func:`reshare_permute`: t + 1 parties that know a permutation turn their shares into
  additive ones (their Lagrange coefficients), permute them and share them anew: a fresh
  sharing of the permuted rows (Laur, Willemson and Zhang 2011);
- :func:`multiply`: elementwise products, the degree 2t brought back to t by resharing
  (Gennaro, Rabin and Rabin 1998);
- :func:`integer_shares`: a secret vector (degree up to 2t: inner products need no
  resharing before) turned into integer additive shares through one statistically masked
  opening.

Every share message is a residue array whose shape every party derives from public values;
it is decoded by ``codec.decode_residues`` (exact length, every residue below its prime), so
a peer sending anything else is dropped and named by the runtime. Every step is its own
``scatter`` on MPyC's program counter.
"""
from __future__ import annotations

import math
import secrets
from typing import Sequence

import numpy as np

from jointstats.mpc import codec as _codec
from jointstats.mpc.rns import Rns


def residue_codec(rns: Rns, shape: Sequence[int]) -> _codec.Codec:
    """The codec of a residue array of ``shape`` (without the primes' axis)."""
    shape = tuple(int(s) for s in shape)
    return _codec.Codec("residues", _codec.encode_residues,
                        lambda data: _codec.decode_residues(data, rns.primes, shape))


async def deal(rt, rns: Rns, secret: np.ndarray | None, dealers: Sequence[int],
               shape: Sequence[int]) -> list[np.ndarray]:
    """Each party of ``dealers`` shares its residue array ``secret`` (``(L, *shape)``) with
    degree t among all parties; returns this party's share from each dealer, in order."""
    m, t = len(rt.parties), rt.threshold
    parts = rns.split(secret, t, m) if rt.pid in dealers else None
    return await rt.scatter(parts, list(dealers), residue_codec(rns, shape))


async def share(rt, rns: Rns, values: np.ndarray | None, holder: int, shape: Sequence[int]) -> np.ndarray:
    """This party's share of the int64 array ``values`` of party ``holder`` (of ``shape``)."""
    secret = rns.encode(values) if rt.pid == holder else None
    return (await deal(rt, rns, secret, [holder], shape))[0]


async def reshare_permute(rt, rns: Rns, x: np.ndarray, members: Sequence[int],
                          perm: np.ndarray | None) -> np.ndarray:
    """A fresh sharing of the rows (axis 1 of the share ``x``) permuted by ``perm``, which only
    ``members`` (t + 1 parties) know: each member multiplies its share by its Lagrange
    coefficient among them (an additive share), permutes it and shares it anew; the sum of
    the new sharings is one of the permuted rows."""
    members = list(members)
    secret = None
    if rt.pid in members:
        lam = rns.lagrange([p + 1 for p in members])[members.index(rt.pid)]
        secret = rns.scale(x[:, perm], lam)
    return rns.total(await deal(rt, rns, secret, members, x.shape[1:]))


def _dealers(rt) -> list[int]:
    """The 2t + 1 parties whose product shares determine a product (the first ones)."""
    return list(range(2 * rt.threshold + 1))


async def reduce_degree(rt, rns: Rns, x: np.ndarray) -> np.ndarray:
    """A fresh degree-t sharing of the value of the degree-2t share ``x`` (GRR98): each of the
    first 2t + 1 parties shares its share times its Lagrange coefficient among them."""
    dealers = _dealers(rt)
    secret = None
    if rt.pid in dealers:
        lam = rns.lagrange([p + 1 for p in dealers])[rt.pid]
        secret = rns.scale(x, lam)
    return rns.total(await deal(rt, rns, secret, dealers, x.shape[1:]))


async def multiply(rt, rns: Rns, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shares of the elementwise product of the shared arrays ``a`` and ``b`` (degree t)."""
    return await reduce_degree(rt, rns, rns.mul(a, b))


async def integer_shares(rt, rns: Rns, x: np.ndarray, bits: int, sigma: int) -> list[int]:
    """Integer additive shares of the shared vector ``x`` (shape ``(L, size)``, shares of
    degree up to 2t) whose values lie below 2**bits in magnitude.

    In one round every party shares a secret mask r_i < 2**(bits + sigma) (drawn afresh per
    entry), and the first 2t + 1 add their share of ``x`` times their Lagrange coefficient
    to it (as :func:`reduce_degree`): the sum is a degree-t sharing of x + sum r_i. In a
    second round the first t + 1 parties send party 0 their shares of it plus 2**bits, and
    party 0 opens the integer x + 2**bits + sum r_i (below the modulus: no wrap-around).
    Party 0's share is that minus 2**bits - r_0, every other party's -r_i. For any t
    parties the opened value is within 2**-(sigma - 1) in statistical distance of one that
    does not depend on x (the honest parties' masks hide it)."""
    m, t = len(rt.parties), rt.threshold
    size = x.shape[1]
    if (m + 2) << (bits + sigma) >= rns.modulus:
        raise ValueError("the modulus is too small for this masked opening")  # the plan sizes it
    mask = [secrets.randbits(bits + sigma) for _ in range(size)]
    secret = rns.from_ints(mask)
    dealers = _dealers(rt)
    if rt.pid in dealers:
        lam = rns.lagrange([p + 1 for p in dealers])[rt.pid]
        secret = rns.add(secret, rns.scale(x, lam))
    masked = rns.total(await deal(rt, rns, secret, range(m), (size,)))
    masked = rns.add(masked, rns.from_ints([1 << bits] * size))
    openers = list(range(t + 1))
    got = await rt.scatter([masked] * m, openers, residue_codec(rns, (size,)), receivers=[0])
    if rt.pid != 0:
        return [-r for r in mask]
    lam = rns.lagrange([p + 1 for p in openers])
    opened = rns.to_ints(rns.combine(lam, got))
    return [v - (1 << bits) - r for v, r in zip(opened, mask)]


def modulus_bits(bits: int, sigma: int, parties: int) -> int:
    """Bits the modulus needs for :func:`integer_shares` of values below 2**bits."""
    return bits + sigma + math.ceil(math.log2(parties + 2)) + 1
