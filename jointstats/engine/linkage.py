"""Secure record linkage: pseudonyms under a key no single party holds, in an order no single
party knows (docs/linkage.md has the protocol, what each party learns, and the references).

Building blocks, all without MPyC (the secure-array side is in ``_vertical``):

- key normalisation and the duplicate/missing-key rule (local to each holder);
- a commutative pseudorandom function on Curve25519: a key is hashed to a point (SHA-512),
  and every party multiplies it by each of its per-job secret scalars (X25519 through
  libsodium, from the maintained ``PyNaCl`` binding). The pseudonym of a key is ``[s_1 ... s_m] H(key)``:
  every party's scalars are needed to compute it, so no party alone (and, with the
  shuffles below, no ``t`` parties) can test a guessed identifier against a pseudonym;
- the shuffle schedule: sets of ``t + 1`` parties such that every coalition of ``t``
  parties misses at least one set; each set permutes the secret-shared rows by resharing
  and, at the same time, one of its members (the carrier) permutes the blinded points and
  multiplies them by a scalar of its own, so that nobody can follow a row through a set
  it is not in (by position: the permutation; by value: the scalar, under DDH);
- the grouping of the final pseudonyms into linked records (in the clear: by then no party
  can tie a pseudonym, or a position, to a record or an identifier).
"""
from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import unicodedata
from dataclasses import dataclass

import gmpy2
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from jointstats.errors import LinkageError

#: Bytes of a point (an X25519 u-coordinate).
POINT = 32
#: Domain separation of the hash of a key to a point (the dataset name follows it).
_DOMAIN = b"jointstats-link-v1\x00"


# ----------------------------------------------------------------------------- keys


def normalise_key(value, case: str = "fold") -> str | None:
    """The normalised text of one identifier, or None if it is missing.

    Rules (docs/linkage.md): None, NaN and text that is empty after trimming are missing;
    integral floats (a numeric column read as 1234.0) are written as integers; text is put in
    Unicode NFKC form and trimmed of surrounding whitespace; with ``case`` ``fold`` (the
    default) it is case-folded (and put in NFKC form again: Unicode's caseless matching). Nothing else is changed (separators such as '-' count).
    """
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:
            return None
        if value.is_integer():
            value = int(value)
    text = unicodedata.normalize("NFKC", str(value)).strip()
    if not text:
        return None
    # NFKC again after folding (Unicode's caseless matching, D145): the result is stable
    return unicodedata.normalize("NFKC", text.casefold()).strip() if case == "fold" else text


def usable_keys(keys: list[str | None]) -> np.ndarray:
    """Which rows take part in the linkage: a present key that occurs once in this party's
    data. A missing key, and every row of a key that occurs more than once (which of them
    is the person's cannot be told), are left out; the holder logs how many, and nobody
    else learns it (the padding to ``link.rows`` hides the number of rows kept)."""
    counts: dict[str, int] = {}
    for k in keys:
        if k is not None:
            counts[k] = counts.get(k, 0) + 1
    return np.fromiter((k is not None and counts[k] == 1 for k in keys), dtype=bool, count=len(keys))


#: Curve25519: v^2 = u^3 + A u^2 + u over GF(2^255 - 19) (RFC 7748).
_P = 2**255 - 19
_A = 486662


def _on_curve(u: int) -> bool:
    """True when u is the u-coordinate of a point of Curve25519 itself, not of its quadratic
    twist (u^3 + A u^2 + u a nonzero square), and not of small order 2 (u = 0)."""
    rhs = (u * u % _P * (u + _A) + u) % _P
    return rhs != 0 and gmpy2.legendre(rhs, _P) == 1


def _to_point(seed: bytes) -> bytes:
    """A point of Curve25519 (as a canonical u-coordinate) derived from ``seed`` by SHA-512 with
    a counter, the first candidate on the curve kept (about two tries). Never a point of the
    twist: X25519 keeps a point on the curve or on the twist through every multiplication, so
    a raw 32-byte hash would carry a public bit (which of the two) from a key to its
    pseudonym, testable against any guessed key."""
    counter = 0
    while True:
        digest = hashlib.sha512(seed + counter.to_bytes(4, "little")).digest()
        u = int.from_bytes(digest[:POINT], "little") & ((1 << 255) - 1)
        if u < _P and _on_curve(u):
            return u.to_bytes(POINT, "little")
        counter += 1


def _framed(item: bytes) -> bytes:
    return len(item).to_bytes(4, "little") + item


def _points(domain: bytes, dataset: str, items: list[bytes]) -> np.ndarray:
    """Each item hashed to a point of Curve25519 (its u-coordinate), as an (n, 32) uint8 array:
    the input is the domain tag, then the dataset name and the item, each prefixed by its
    length, so that no two (domain, dataset, item) give the same input."""
    prefix = domain + _framed(dataset.encode())
    out = np.empty((len(items), POINT), dtype=np.uint8)
    for i, item in enumerate(items):
        out[i] = np.frombuffer(_to_point(prefix + _framed(item)), dtype=np.uint8)
    return out


def hash_points(keys: list[str], dataset: str) -> np.ndarray:
    """Each (normalised) key hashed to a point of Curve25519."""
    return _points(_DOMAIN, dataset, [k.encode() for k in keys])


def dummy_points(ids: list[bytes], dataset: str) -> np.ndarray:
    """The points of dummy linked records (DP mode) from their random identifiers: hashed in a
    domain of their own, so no real key's point is ever one of them."""
    return _points(b"jointstats-dummy-v1\x00", dataset, ids)


def random_points(n: int) -> np.ndarray:
    """``n`` points of dummy keys (padding): random points of the curve, distributed as hashed
    keys are, so they link with nothing and look like any other."""
    return _points(b"jointstats-pad-v1\x00", "", [os.urandom(32) for _ in range(n)])


#: The order of Curve25519's prime-order subgroup; X25519 acts on its points modulo it.
_ELL = 2**252 + 27742317777372353535851937790883648493
_INV8 = pow(8, -1, _ELL)


def _clamped(x: int) -> bytes | None:
    """The X25519 scalar acting as ``x`` (mod the subgroup order) on the prime-order subgroup:
    c = x (mod ell), c = 0 (mod 8), 2^254 <= c < 2^255, so that RFC 7748's clamping leaves it
    unchanged and it also clears any small-order component. None when no such c exists
    (about half of the residues)."""
    c = 8 * (x % _ELL * _INV8 % _ELL)
    if (1 << 254) <= c < (1 << 255):
        return c.to_bytes(POINT, "little")
    return None


class Scalar:
    """One per-job secret scalar of a party: a random residue modulo the subgroup order that
    has a clamped X25519 representative (RFC 7748: a multiple of the cofactor, so a
    multiplication also clears any small-order component). ``apply`` may multiply it by a
    factor first (a block's blinding, :func:`block_blinding`). The multiplications go through
    libsodium's ``crypto_scalarmult`` (PyNaCl), on raw bytes: no key objects per point."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        while True:
            value = secrets.randbelow(_ELL - 1) + 1
            if _clamped(value) is not None:
                self._value = value
                return

    def key(self, factor: int = 1) -> bytes | None:
        """The X25519 scalar of this scalar times ``factor``, or None if it has none."""
        return _clamped(self._value * factor)

    def apply(self, points: np.ndarray, factor: int = 1) -> np.ndarray:
        """Every point multiplied by this scalar (times ``factor``). LinkageError if a point is
        of small order (X25519's all-zero result: never from a hashed key, only from a
        deviating peer)."""
        from nacl.bindings import crypto_scalarmult
        from nacl.exceptions import CryptoError
        key = self.key(factor)
        if key is None:
            raise ValueError("this factor gives the scalar no X25519 representative")
        try:
            raw = np.ascontiguousarray(points, dtype=np.uint8).tobytes()
            out = b"".join([crypto_scalarmult(key, raw[i:i + POINT]) for i in range(0, len(raw), POINT)])
        except CryptoError:
            raise LinkageError("a point of small order in the linkage") from None
        return np.frombuffer(out, dtype=np.uint8).reshape(points.shape).copy()


def block_blinding(first: Scalar, last: Scalar) -> tuple[int, int]:
    """A fresh factor r and its inverse for one block, with which ``first`` (times r) and
    ``last`` (times r^-1) both have X25519 representatives. A party that applies several
    scalars to a block multiplies its first by r and its last by r^-1: its product over the
    block, and so every pseudonym, is unchanged, while its intermediate values differ from
    block to block (otherwise a coalition could match an early stage of one block, in an order
    it knows, with a late stage of another by value)."""
    while True:
        r = secrets.randbelow(_ELL - 1) + 1
        r_inv = pow(r, -1, _ELL)
        if first.key(r) is not None and last.key(r_inv) is not None:
            return r, r_inv


# ----------------------------------------------------------------------------- shuffles


def shuffle_sets(m: int, t: int) -> tuple[tuple[int, ...], ...]:
    """Sets of ``t + 1`` parties, each permuting the rows by resharing, such that for every
    coalition of ``t`` parties some set has no member in it (so no coalition knows the
    composed permutation). Deterministic: every party derives the same sets."""
    sets: list[tuple[int, ...]] = []
    for coalition in itertools.combinations(range(m), t):
        if any(not set(s) & set(coalition) for s in sets):
            continue
        sets.append(tuple(p for p in range(m) if p not in coalition)[:t + 1])
    return tuple(sets)


@dataclass(frozen=True)
class Chain:
    """The route of one block's points: who applies which scalar when.

    The holder applies its first scalar to the hashed keys before they leave it: as the
    carrier of the first shuffle set when it is a member of it (``carriers[0] == holder``),
    otherwise before that step. For each shuffle set ``sets[k]`` the carrier ``carriers[k]``
    permutes the points and applies its next scalar; then each party of ``tail``
    (party, count) applies its remaining scalars, in that order; the last one sends the
    pseudonyms to all. Every party applies each of its ``scalars`` scalars exactly once to
    every block, so every block's pseudonym of a key is the same.
    """

    holder: int
    sets: tuple[tuple[int, ...], ...]
    carriers: tuple[int, ...]
    tail: tuple[tuple[int, int], ...]
    scalars: int

    @property
    def holder_carries_first(self) -> bool:
        """True when the holder's first scalar is applied at the first shuffle (it carries it)."""
        return bool(self.carriers) and self.carriers[0] == self.holder


#: Up to this many parties a block's chain may start with its holder as the first carrier and
#: its sets in the order that needs the fewest scalars; checked for every holder set and every
#: coalition of t parties (tests/unit/test_linkage_views.py). Above it, the fixed order of
#: ``shuffle_sets`` with a separate first blinding (docs/linkage.md: what t >= 2 coalitions see).
_REORDER_UP_TO = 4


def _carriers(order: tuple[tuple[int, ...], ...], m: int, holder: int,
              holder_first: bool = True) -> tuple[tuple[int, ...], list[int]]:
    """Carriers of the sets in ``order`` for the block of ``holder`` and the scalars each party
    then applies at the head of the chain. The holder carries the first set when it is a
    member (its first scalar is then applied there); every later carrier is a member other
    than the party holding the points (it applies a scalar that party does not know), the one
    that has applied the fewest so far, lowest index first."""
    used = [0] * m
    used[holder] = 1
    carriers = []
    prev = holder
    for k, s in enumerate(order):
        if k == 0 and holder_first and holder in s:
            choice = holder  # permutes and applies its first scalar in one step
        else:
            choice = min((p for p in s if p != prev), key=lambda p: (used[p], p))
            used[choice] += 1
        carriers.append(choice)
        prev = choice
    return tuple(carriers), used


def _heads(m: int, t: int, holder: int) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...], list[int]]:
    """The order of the shuffle sets for the block of ``holder``, their carriers and how many
    scalars each party applies there: the order that needs the fewest scalars per party
    (then in all), first in a fixed enumeration, so every party derives the same (up to
    ``_REORDER_UP_TO`` parties; above, the sets' fixed order). With 3 parties every party
    applies one scalar per block (3 multiplications per row)."""
    sets = shuffle_sets(m, t)
    reorder = m <= _REORDER_UP_TO
    orders = itertools.permutations(sets) if reorder else [sets]
    best = None
    for order in orders:
        carriers, used = _carriers(order, m, holder, holder_first=reorder)
        score = (max(used), sum(used))
        if best is None or score < best[0]:
            best = (score, order, carriers, used)
    return best[1], best[2], best[3]


def scalars_needed(m: int, t: int, holders: list[int]) -> int:
    """Scalars per party: the most any party applies at the head of some block's chain."""
    return max(max(_heads(m, t, h)[2]) for h in holders)


def chain(m: int, t: int, holder: int, scalars: int) -> Chain:
    """The route of the block of ``holder`` (see :class:`Chain`)."""
    order, carriers, used = _heads(m, t, holder)
    last = carriers[-1] if carriers else holder
    ring = [(last + i) % m for i in range(m)]  # the last carrier first: no extra transfer
    tail = tuple((p, scalars - used[p]) for p in ring if scalars > used[p])
    return Chain(holder, order, carriers, tail, scalars)


def permutation(seed: bytes, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` from a 32-byte secret seed (AES-256-CTR
    keystream: 64-bit sort keys; ties, at most n^2 / 2^65 likely, broken by position)."""
    stream = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()
    keys = np.frombuffer(stream.update(b"\x00" * (8 * n)), dtype=np.uint64)
    return np.argsort(keys, kind="stable")


# ----------------------------------------------------------------------------- grouping


def group(pseudonyms: list[np.ndarray], join: str = "inner", base: int = 0) -> list[np.ndarray]:
    """Positions, in each block, of the rows of every linked record.

    ``pseudonyms[j]`` is block j's (n_j, 32) array. Inner join: the pseudonyms present in
    every block, in the order of their bytes (random); left join: every row of block
    ``base`` in its (random) order, and for the other blocks the partner's position or -1.
    A pseudonym twice in one block (never from distinct keys, whose rows are deduplicated)
    links its first position only."""
    keyed = [np.ascontiguousarray(p).view(f"S{POINT}").ravel() for p in pseudonyms]
    if join == "left":
        out = []
        want = keyed[base]
        for j, k in enumerate(keyed):
            if j == base:
                out.append(np.arange(len(want)))
            elif not len(k):
                out.append(np.full(len(want), -1))
            else:
                sorter = np.argsort(k, kind="stable")
                pos = np.minimum(np.searchsorted(k[sorter], want), len(k) - 1)
                out.append(np.where(k[sorter][pos] == want, sorter[pos], -1))
        return out
    common = keyed[0]
    for k in keyed[1:]:
        common = np.intersect1d(common, k)
    return [np.intersect1d(common, k, return_indices=True)[2] for k in keyed]
