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
- :func:`open_values`: an opening to every party (of values that are public by design);
- :func:`is_zero`: secret bits [x == 0] of entries that are 0 or uniformly random (Fermat);
- :func:`integer_shares`: a secret vector (degree up to 2t: inner products need no
  resharing before) turned into integer additive shares through one statistically masked
  opening.

Every share message is a residue array whose shape every party derives from public values;
it is decoded by ``codec.decode_residues`` (exact length, every residue below its prime), so
a peer sending anything else is dropped and named by the runtime. Every step is its own
``scatter`` on MPyC's program counter.

The arithmetic on whole tables runs in a daemon thread (:func:`offload`; numpy releases the
interpreter lock for it): the event loop goes on reading and writing messages and sending
heartbeats meanwhile, which a loop held for seconds by a million-row array would not (its
peers would take it for silent), and other blocks' steps proceed.
"""
from __future__ import annotations

import hashlib
import math
import secrets
from typing import Callable, Sequence

import numpy as np

from jointstats._threads import in_daemon_thread
from jointstats.mpc import codec as _codec
from jointstats.mpc.rns import Rns


#: Bytes of shares per message: a deal sends a table in chunks of rows of about this size, so
#: that every message, and every temporary array of a deal, stays small whatever the rows.
MESSAGE_BYTES = 4 << 20


async def offload(fn, *args):
    """``fn(*args)`` in a daemon thread, awaited (see the module docstring; not
    ``asyncio.to_thread``, whose threads a failing job would wait for at its end)."""
    return await in_daemon_thread(fn, *args, name="jointstats-table")


def residue_codec(rns: Rns, shape: Sequence[int]) -> _codec.Codec:
    """The codec of a residue array of ``shape`` (without the primes' axis)."""
    shape = tuple(int(s) for s in shape)
    return _codec.Codec("residues", _codec.encode_residues,
                        lambda data: _codec.decode_residues(data, rns.primes, shape))


def row_chunks(rns: Rns, shape: Sequence[int]) -> list[tuple[int, int]]:
    """The (start, stop) row ranges of the messages of a table of ``shape`` (rows first)."""
    n = int(shape[0])
    step = max(1, MESSAGE_BYTES // (4 * len(rns) * max(1, math.prod(shape[1:]))))
    return [(s, min(s + step, n)) for s in range(0, n, step)] or [(0, 0)]


async def pair_seeds(rt) -> None:
    """Give every pair of parties a secret 32-byte seed (``rt.pair_seeds``: peer -> seed): each
    party sends each other a fresh random value, and a pair's seed is the SHA-256 of both
    (neither party alone chooses it). From then on :func:`deal` sends t parties fewer
    messages: see there. Every party must call it, at the same step."""
    m = len(rt.parties)
    mine = [secrets.token_bytes(32) for _ in range(m)]
    got = await rt.scatter(mine, list(range(m)), SEED)
    seeds = {}
    for j in range(m):
        if j != rt.pid:
            first, second = (mine[j], got[j]) if rt.pid < j else (got[j], mine[j])
            seeds[j] = hashlib.sha256(b"jointstats-pair-seed\x00" + first + second).digest()
    rt.pair_seeds = seeds


def _seed(data) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != 32:
        raise _codec.CodecError("expected a 32-byte seed")
    return bytes(data)


#: The codec of a 32-byte secret seed (pair seeds; a shuffle set's permutation seed).
SEED = _codec.Codec("seed", bytes, _seed)


def _quiet(rt, dealer: int) -> list[int]:
    """The t parties after ``dealer`` (cyclically), whose shares of its dealings are
    pseudorandom from their pair's seed (none without ``pair_seeds``)."""
    if getattr(rt, "pair_seeds", None) is None:
        return []
    m = len(rt.parties)
    return [(dealer + i) % m for i in range(1, rt.threshold + 1)]


def _prg_key(rt, dealer: int, receiver: int, step: tuple) -> bytes:
    """The key of the pseudorandom share of ``receiver`` in ``dealer``'s dealing at program
    counter ``step`` (the same on both: every party is at the same step)."""
    seed = rt.pair_seeds[receiver if rt.pid == dealer else dealer]
    tag = b"".join(int(v).to_bytes(8, "little", signed=True) for v in (dealer, receiver, *step))
    return hashlib.sha256(seed + tag).digest()


async def deal(rt, rns: Rns, secret: Callable[[int, int], np.ndarray] | None, dealers: Sequence[int],
               shape: Sequence[int]) -> np.ndarray:
    """This party's share (degree t) of the sum of the dealers' residue arrays of ``shape``.

    Each party of ``dealers`` gives ``secret(start, stop)``: its residues of rows
    start:stop, ``(L, stop - start, *shape[1:])``; they are computed, shared and sent a
    chunk of rows at a time (:func:`row_chunks`), and this party adds up what it receives
    into one uint32 array ``(L, *shape)``.

    With ``pair_seeds`` (a linked job sets them up first), the shares of the t parties after
    a dealer are pseudorandom: AES-CTR residues under a key from their pair's seed and the
    step's program counter, which dealer and receiver both compute; the dealer interpolates
    the others' shares through them and the secret, and sends only those. The polynomial is
    then as random as the t seeded values (uniform, as far as AES is a PRF), a Shamir
    sharing as :meth:`Rns.split` makes, for m - 1 - t messages per dealing instead of m - 1."""
    m, t = len(rt.parties), rt.threshold
    shape = tuple(int(s) for s in shape)
    out = np.empty((len(rns),) + shape, dtype=np.uint32)
    dealers = list(dealers)
    quiet = {d: _quiet(rt, d) for d in dealers}
    for start, stop in row_chunks(rns, shape):
        rows = (stop - start,) + shape[1:]
        step = tuple(rt._program_counter)  # this dealing's step, the same on every party
        parts = None
        if rt.pid in dealers:
            def split(a=start, b=stop):
                values = secret(a, b)
                if not quiet[rt.pid]:
                    return rns.split(values, t, m)
                fixed = {q: rns.random(rows, _prg_key(rt, rt.pid, q, step)) for q in quiet[rt.pid]}
                return rns.split_through(values, fixed, m)
            parts = await offload(split)
        if tuple(rt._program_counter) != step:  # nothing else may run a step in this context
            raise RuntimeError("the program counter moved during a dealing")
        got = await rt.scatter(parts, dealers, residue_codec(rns, rows), skip=quiet)
        seeded = {k: _prg_key(rt, d, rt.pid, step) for k, d in enumerate(dealers) if rt.pid in quiet[d]}

        def total(got=got, seeded=seeded):
            for k, key in seeded.items():  # this party's share of that dealing, from the seed
                got[k] = rns.random(rows, key)
            return rns.total(got)
        out[:, start:stop] = await offload(total)
    return out


async def share(rt, rns: Rns, values: np.ndarray | None, holder: int, shape: Sequence[int]) -> np.ndarray:
    """This party's share of the int64 array ``values`` of party ``holder`` (of ``shape``)."""
    return await deal(rt, rns, lambda a, b: rns.encode(values[a:b]), [holder], shape)


async def reshare_permute(rt, rns: Rns, x: np.ndarray, members: Sequence[int],
                          perm: np.ndarray | None) -> np.ndarray:
    """A fresh sharing of the rows (axis 1 of the share ``x``) permuted by ``perm``, which only
    ``members`` (t + 1 parties) know: each member multiplies its share by its Lagrange
    coefficient among them (an additive share), permutes it and shares it anew; the sum of
    the new sharings is one of the permuted rows."""
    members = list(members)
    lam = rns.lagrange([p + 1 for p in members])[members.index(rt.pid)] if rt.pid in members else None
    return await deal(rt, rns, lambda a, b: rns.scale(x[:, perm[a:b]], lam), members, x.shape[1:])


def _dealers(rt) -> list[int]:
    """The 2t + 1 parties whose product shares determine a product (the first ones)."""
    return list(range(2 * rt.threshold + 1))


def _own_lagrange(rt, rns: Rns) -> np.ndarray | None:
    """This party's Lagrange coefficient among the first 2t + 1 parties (None outside)."""
    dealers = _dealers(rt)
    return rns.lagrange([p + 1 for p in dealers])[rt.pid] if rt.pid in dealers else None


async def reduce_degree(rt, rns: Rns, x: np.ndarray) -> np.ndarray:
    """A fresh degree-t sharing of the value of the degree-2t share ``x`` (GRR98): each of the
    first 2t + 1 parties shares its share times its Lagrange coefficient among them."""
    lam = _own_lagrange(rt, rns)
    return await deal(rt, rns, lambda a, b: rns.scale(x[:, a:b], lam), _dealers(rt), x.shape[1:])


async def multiply(rt, rns: Rns, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shares of the elementwise product of the shared arrays ``a`` and ``b`` (degree t; ``b``
    may broadcast against ``a``). Each dealer's product shares are made a chunk of rows at a
    time, as they are sent (``reduce_degree`` of the whole product would hold it all)."""
    lam = _own_lagrange(rt, rns)
    shape = np.broadcast_shapes(a.shape, b.shape)[1:]
    return await deal(rt, rns, lambda i, j: rns.scale(rns.mul(a[:, i:j], b[:, i:j]), lam), _dealers(rt), shape)


async def open_values(rt, rns: Rns, x: np.ndarray) -> np.ndarray:
    """The values (int64 residues) of the shared array ``x`` (degree t, rows first after the
    primes' axis), opened to every party: the first t + 1 parties send every party their
    shares, a chunk of rows at a time, and each interpolates."""
    openers = list(range(rt.threshold + 1))
    lam = rns.lagrange([p + 1 for p in openers])
    out = np.empty(x.shape, dtype=np.int64)
    for a, b in row_chunks(rns, x.shape[1:]):
        got = await rt.scatter([x[:, a:b]] * len(rt.parties), openers, residue_codec(rns, (b - a,) + x.shape[2:]))
        out[:, a:b] = rns.combine(lam, got)
    return out


async def is_zero(rt, rns: Rns, x: np.ndarray) -> np.ndarray:
    """Shares of the bits [x == 0] of the shared array ``x`` (degree t), whose every entry is
    0 or uniformly random modulo M: per prime p, 1 - x^(p - 1) (Fermat's little theorem), by
    square and multiply with both products of a step in one round (about 31 rounds). The
    residues of a bit agree, so it is a bit modulo M, unless a nonzero entry is 0 modulo some
    prime and not all (odds below 2^-30 each): AND three independent entries to make that
    about 2^-90. Every few rounds all parties meet (an empty exchange), so that the parties
    that deal the products cannot run far ahead of one that does not (its unread bound)."""
    from jointstats.mpc import codec as _codec
    exponents = [p - 1 for p in rns.primes]
    top = max(e.bit_length() for e in exponents)
    base = np.asarray(x, dtype=np.int64)
    acc = None
    for i in range(top):
        if i % ZERO_TEST_SYNC == ZERO_TEST_SYNC - 1:
            await rt.transfer(0, codec=_codec.INT)
        mult = None
        if any((e >> i) & 1 for e in exponents):
            mult = base.copy()
            for l, e in enumerate(exponents):
                if not (e >> i) & 1:
                    mult[l] = 1  # the constant 1: a sharing of degree 0
        last = i == top - 1
        if mult is not None and acc is not None:
            left = np.stack([acc, base] if not last else [acc], axis=-1)
            right = np.stack([mult, base] if not last else [mult], axis=-1)
            del mult
            both = await multiply(rt, rns, left, right)
            del left, right
            acc = both[..., 0].astype(np.int64)
            if not last:
                base = both[..., 1].astype(np.int64)
            continue
        if mult is not None:
            acc = mult
        if not last:
            base = (await multiply(rt, rns, base, base)).astype(np.int64)
    return rns.add(np.ones_like(acc), -acc)


#: Rounds of :func:`is_zero` between two meetings of all parties.
ZERO_TEST_SYNC = 4


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
    lam = _own_lagrange(rt, rns)
    if lam is not None:
        secret = rns.add(secret, rns.scale(x, lam))
    masked = await deal(rt, rns, lambda a, b: secret[:, a:b], range(m), (size,))
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
