"""Programmed tables of an oblivious programmable PRF (OPPRF), as a linked job uses them.

A holder ``j`` knows, for each of its keys ``y`` and each of the (up to three) bins ``b`` a
key may occupy, the PRF output ``F = k_b * H(y)`` (its secret scalar of bin ``b``,
``engine.linkage.bin_keys``),
and a value ``v(y, b)`` (its encoded row minus a secret mask of bin ``b``, and minus the bin's
secret tag). It sends the leader one table from which, for any ``F``, anyone can compute a
value: ``v(y, b)`` when ``F`` is one of the programmed outputs, and a pseudorandom value
otherwise. The leader holds ``F`` only for the one key it has in each bin (it gets them
through a blinded exchange), so it decodes one value per bin, and cannot tell whether it was
programmed: every programmed value is masked by the bin's secrets, and every table entry is
uniform. This is the OPPRF of Kolesnikov, Matania, Pinkas, Rosulek and Trieu (CCS 2017),
built as in the later literature from an OPRF and an oblivious key-value store (OKVS):

- **the OKVS** is a garbled cuckoo table (Pinkas, Rosulek, Trieu and Yanai, "PaXoS",
  Eurocrypt 2020, without its small dense part): ``rows`` entries in three equal parts; a
  key points at one entry of each part, and its value is the sum of those three entries
  (modulo each prime of the residue system). Encoding peels the random 3-hypergraph of the
  keys (2-core empty: at 1.3 entries per key that holds with high probability; else another
  seed, which depends on nothing but the pseudorandom outputs) and fixes, in reverse peeling
  order, each key's last free entry; every other entry is uniformly random.
- **the mask**: every value is stored plus ``G(seed, F)`` (SHAKE-256 of the output), and
  decoding subtracts it, so a programmed value shows up only under its own output, and the
  table is uniform to anyone without the outputs.

The residues are those of ``jointstats.mpc.rns`` (shape ``(L, keys, width)``); masks come
from 128-bit words reduced modulo each prime (statistical distance below 2^-96 each).
"""
from __future__ import annotations

import hashlib
import math
import secrets

import numpy as np

from jointstats.errors import LinkageError

#: Entries per key of a table, and a constant for small ones (peeling needs more than 1.222).
EXPANSION = 1.3
SLACK = 30
#: Seeds tried before a table is given up (each fails with a small probability).
TRIES = 16
#: Keys hashed per batch (bounds the temporaries).
_BATCH = 1 << 15
_DOMAIN = b"jointstats-opprf-v1\x00"


def table_rows(keys: int) -> int:
    """Entries of the table of at most ``keys`` programmed outputs (three equal parts)."""
    part = -(-(math.ceil(EXPANSION * keys) + SLACK) // 3)
    return 3 * part


def _expand(rns, outputs: np.ndarray, seed: bytes, width: int, rows: int,
            start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(n, 3)`` and masks ``(L, n, width)`` (int64) of outputs start:stop."""
    L = len(rns)
    words = 3 + 2 * L * width  # 64-bit words: three positions, then two per residue
    prefix = _DOMAIN + seed
    raw = b"".join(hashlib.shake_256(prefix + outputs[i].tobytes()).digest(8 * words)
                   for i in range(start, stop))
    w = np.frombuffer(raw, dtype="<u8").reshape(stop - start, words)
    part = rows // 3
    pos = (w[:, :3] % np.uint64(part)).astype(np.int64) + np.arange(3, dtype=np.int64) * part
    lo = w[:, 3::2].reshape(-1, L, width)
    hi = w[:, 4::2].reshape(-1, L, width)
    mask = np.empty((L, stop - start, width), dtype=np.int64)
    for l, p in enumerate(rns.primes):
        up = np.uint64(p)
        shift = np.uint64(pow(2, 64, p))
        mask[l] = ((hi[:, l] % up) * shift % up + lo[:, l] % up) % up  # < 2^62 before the last %
    return pos, mask


def _peel(pos: np.ndarray, rows: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The peeling of the hypergraph of ``pos`` as rounds of (keys, their own entry): in a
    round, every remaining key with an entry no other remaining key touches; None if some
    keys remain that no round can take (a non-empty 2-core)."""
    remaining = np.arange(len(pos))
    rounds = []
    while remaining.size:
        sub = pos[remaining]
        degree = np.bincount(sub.ravel(), minlength=rows)
        single = degree[sub] == 1
        free = single.any(axis=1)
        if not free.any():
            return None
        keys = remaining[free]
        own = sub[free, np.argmax(single[free], axis=1)]
        rounds.append((keys, own))
        remaining = remaining[~free]
    return rounds


def _mask(rns, outputs: np.ndarray, seed: bytes, values: np.ndarray, rows: int, sign: int) -> np.ndarray:
    """Add (sign +1) or remove (-1) every value's mask G(seed, output), in place; returns the
    outputs' entries ``(n, 3)``."""
    n, width = len(outputs), values.shape[2]
    pos = np.empty((n, 3), dtype=np.int64)
    for a in range(0, n, _BATCH):
        b = min(a + _BATCH, n)
        pos[a:b], mask = _expand(rns, outputs, seed, width, rows, a, b)
        if sign < 0:
            np.negative(mask, out=mask)
        mask += values[:, a:b]
        for l, p in enumerate(rns.primes):
            values[l, a:b] = mask[l] % p
    return pos


def program(rns, outputs: np.ndarray, values: np.ndarray, rows: int) -> tuple[bytes, np.ndarray]:
    """(seed, table): a table of ``rows`` entries (uint32 residues ``(L, rows, width)``)
    that decodes to ``values[:, i]`` under ``outputs[i]`` (``(n, 32)`` uint8, distinct) and to
    a pseudorandom value under any other output. ``rows`` is at least ``table_rows(n)``
    (every holder's is public: from its announced number of keys, not its real one).
    ``values`` (uint32 residues ``(L, n, width)``) is overwritten (it holds the masked values:
    a table of a million keys must not hold two copies)."""
    n = len(outputs)
    L, width = len(rns), values.shape[2]
    if rows < table_rows(n) or rows % 3:
        raise ValueError("an OPPRF table needs table_rows(keys) entries")
    for _ in range(TRIES):
        seed = secrets.token_bytes(32)
        pos = _mask(rns, outputs, seed, values, rows, +1)
        rounds = _peel(pos, rows)
        if rounds is None:  # another seed; first the values as they were
            _mask(rns, outputs, seed, values, rows, -1)
            continue
        table = np.empty((L, rows, width), dtype=np.uint32)
        for a in range(0, rows, _BATCH):
            b = min(a + _BATCH, rows)
            table[:, a:b] = rns.random((b - a, width))
        for keys, own in reversed(rounds):
            # the key's other two entries are set already (later rounds) or random; own is free
            other = table[:, pos[keys]].sum(axis=2, dtype=np.int64) - table[:, own]
            value = np.subtract(values[:, keys], other, dtype=np.int64)
            for l, p in enumerate(rns.primes):
                table[l, own] = value[l] % p
        return seed, table
    raise LinkageError("could not build an OPPRF table (peeling failed for every seed)")


def evaluate(rns, seed: bytes, table: np.ndarray, outputs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The values ``(L, n, width)`` (uint32 residues, into ``out`` if given) that ``table``
    gives under ``outputs``: the programmed value for a programmed output, a pseudorandom
    one otherwise."""
    n = len(outputs)
    L, rows, width = table.shape
    if out is None:
        out = np.empty((L, n, width), dtype=np.uint32)
    for a in range(0, n, _BATCH):
        b = min(a + _BATCH, n)
        pos, mask = _expand(rns, outputs, seed, width, rows, a, b)
        got = table[:, pos].sum(axis=2, dtype=np.int64) - mask
        for l, p in enumerate(rns.primes):
            out[l, a:b] = got[l] % p
    return out
