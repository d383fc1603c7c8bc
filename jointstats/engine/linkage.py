"""Secure record linkage: the building blocks without MPyC (docs/linkage.md has the protocol,
what each party learns, and the references; ``engine.vertical`` runs it, ``engine.opprf``
builds the tables).

- key normalisation and the duplicate/missing-key rule (local to each holder);
- bins: three public hash functions of a key to the leader's bins, cuckoo hashing of the
  leader's keys into them (local);
- a Diffie-Hellman PRF on Curve25519 with a secret scalar per bin, F_b(key) = k_b * H(key):
  a key is hashed to a point of the curve (SHA-512, never a point of the twist) and
  multiplied by the scalar (X25519 through libsodium, from the maintained ``PyNaCl``
  binding); the leader gets the output of its own key in each bin obliviously, through a
  blinding by a fresh r;
- the shuffle sets: sets of ``t + 1`` parties such that every coalition of ``t`` parties
  misses at least one set, each permuting the secret-shared table by resharing, so that no
  coalition knows the final order of its rows.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import secrets
import unicodedata

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


_PM = gmpy2.mpz(_P)


def _on_curve(u) -> bool:
    """True when u is the u-coordinate of a point of Curve25519 itself, not of its quadratic
    twist (u^3 + A u^2 + u a nonzero square), and not of small order 2 (u = 0)."""
    rhs = (u * u * (u + _A) + u) % _PM
    return rhs != 0 and gmpy2.jacobi(rhs, _PM) == 1


def _to_point(seed: bytes) -> bytes:
    """A point of Curve25519 (as a canonical u-coordinate) derived from ``seed`` by SHA-512 with
    a counter, the first candidate on the curve kept (about two tries). Never a point of the
    twist: X25519 keeps a point on the curve or on the twist through every multiplication, so
    a raw 32-byte hash would carry a public bit (which of the two) from a key to its blinded
    query, testable against any guessed key."""
    counter = 0
    while True:
        digest = hashlib.sha512(seed + counter.to_bytes(4, "little")).digest()
        raw = digest[:POINT - 1] + bytes((digest[POINT - 1] & 127,))  # 255 bits, little-endian
        u = gmpy2.from_binary(b"\x01\x01" + raw)  # gmpy2's own format: a non-negative mpz
        if u < _PM and _on_curve(u):
            return raw
        counter += 1


def _framed(item: bytes) -> bytes:
    return len(item).to_bytes(4, "little") + item


def _points(domain: bytes, dataset: str, items: list[bytes]) -> np.ndarray:
    """Each item hashed to a point of Curve25519 (its u-coordinate), as an (n, 32) uint8 array:
    the input is the domain tag, then the dataset name and the item, each prefixed by its
    length, so that no two (domain, dataset, item) give the same input."""
    prefix = domain + _framed(dataset.encode())
    raw = b"".join([_to_point(prefix + _framed(item)) for item in items])
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(items), POINT).copy()


def random_points(n: int) -> np.ndarray:
    """``n`` random points of the curve, distributed as hashed keys are: the leader's queries
    for its empty bins, which decode to nothing and, blinded, look like any other."""
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
    """A per-job secret scalar (the leader's blinding): a random residue modulo the subgroup
    order that has a clamped X25519 representative (RFC 7748: a multiple of the cofactor, so
    a multiplication also clears any small-order component), as does its inverse in
    :func:`blinding`. The multiplications go through libsodium's ``crypto_scalarmult``
    (PyNaCl), on raw bytes: no key objects per point."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        while True:
            value = secrets.randbelow(_ELL - 1) + 1
            if _clamped(value) is not None:
                self._value = value
                return

    def key(self) -> bytes | None:
        """The X25519 scalar of this residue, or None if it has none."""
        return _clamped(self._value)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Every point multiplied by this scalar. LinkageError if a point is of small order
        (X25519's all-zero result: never from a hashed key, only from a deviating peer)."""
        key = self.key()
        return multiply(np.frombuffer(key * len(points), dtype=np.uint8).reshape(-1, POINT), points)


def blinding() -> tuple["Scalar", "Scalar"]:
    """A fresh scalar r and a scalar acting as r^-1 (each with an X25519 representative): the
    leader multiplies its query points by the first and the answers by the second, so the
    answering holder sees only uniformly random points of the subgroup, and the leader gets
    the holder's PRF outputs."""
    while True:
        r = Scalar()
        inverse = Scalar.__new__(Scalar)
        inverse._value = pow(r._value, -1, _ELL)
        if inverse.key() is not None:
            return r, inverse


# ----------------------------------------------------------------------------- bins

#: Bins per leader key (cuckoo hashing with three hash functions; 1.27 keeps the chance of a
#: key that finds no bin small, and a key that does is simply left out by the leader's log).
BIN_EXPANSION = 1.27
#: Most evictions per insertion before a key is given up.
_KICKS = 500


def bin_count(keys: int) -> int:
    """Bins of a leader with ``keys`` keys (public: its announced number)."""
    return math.ceil(BIN_EXPANSION * keys) + 32


def bin_choices(keys: list[str], dataset: str, bins: int) -> np.ndarray:
    """The three candidate bins of every key, ``(n, 3)`` int64 (distinct per key when bins
    allow; a key may repeat a bin, which then counts once). A public function of the key:
    each holder applies it to its own keys only, and no bin is ever shown to anyone."""
    prefix = b"jointstats-bins-v1\x00" + _framed(dataset.encode())
    raw = b"".join(hashlib.sha256(prefix + _framed(k.encode())).digest()[:24] for k in keys)
    words = np.frombuffer(raw, dtype="<u8").reshape(len(keys), 3)
    return (words % np.uint64(bins)).astype(np.int64)


def cuckoo(choices: np.ndarray, bins: int) -> tuple[np.ndarray, int]:
    """(owner of every bin (-1: empty), keys left out): every key placed in one of its three
    bins, evicting a key to another of its bins when all are taken (random walk). A key
    still without a bin after ``_KICKS`` evictions is left out (it links with nothing; with
    1.27 bins per key this is rare, and decided locally)."""
    owner = np.full(bins, -1, dtype=np.int64)
    rng = secrets.SystemRandom()
    dropped = 0
    table = choices.tolist()
    for key in range(len(table)):
        cur = key
        for _ in range(_KICKS):
            cand = table[cur]
            free = next((b for b in cand if owner[b] < 0), None)
            if free is not None:
                owner[free] = cur
                cur = -1
                break
            b = cand[rng.randrange(3)]
            owner[b], cur = cur, int(owner[b])
        if cur >= 0:
            dropped += 1
    return owner, dropped


def hash_points(keys: list[str], dataset: str) -> np.ndarray:
    """Each (normalised) key hashed to a point of Curve25519, H(key)."""
    return _points(_DOMAIN, dataset, [k.encode() for k in keys])


def bin_keys(seed: bytes, bins: int) -> np.ndarray:
    """One secret X25519 scalar per bin, ``(bins, 32)`` uint8: 32 bytes of an AES-256-CTR
    keystream under the 32-byte secret ``seed`` each, clamped as RFC 7748 does (the usual
    X25519 key; a multiple of the cofactor, so a product also clears any small-order part).
    The PRF of a holder is F_b(key) = k_b * H(key): a key's output in one bin says nothing of
    its output in another, so the leader, which obtains F_b only for the one key it has in
    each bin b, can decode a holder's table for that key in that bin and nowhere else."""
    stream = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()
    raw = np.frombuffer(stream.update(bytes(POINT * bins)), dtype=np.uint8).reshape(bins, POINT).copy()
    raw[:, 0] &= 248
    raw[:, POINT - 1] &= 127
    raw[:, POINT - 1] |= 64
    return raw


def multiply(keys: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Row by row, the point times the X25519 scalar of the same row (libsodium). LinkageError
    if a point is of small order (X25519's all-zero result: never from a hashed key, only
    from a deviating peer)."""
    from nacl.bindings import crypto_scalarmult
    from nacl.exceptions import CryptoError
    if not len(points):
        return np.zeros((0, POINT), dtype=np.uint8)
    k = np.ascontiguousarray(keys, dtype=np.uint8).tobytes()
    raw = np.ascontiguousarray(points, dtype=np.uint8).tobytes()
    try:
        out = b"".join([crypto_scalarmult(k[i:i + POINT], raw[i:i + POINT]) for i in range(0, len(raw), POINT)])
    except CryptoError:
        raise LinkageError("a point of small order in the linkage") from None
    return np.frombuffer(out, dtype=np.uint8).reshape(points.shape).copy()


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


def permutation(seed: bytes, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` from a 32-byte secret seed (AES-256-CTR
    keystream: 64-bit sort keys; ties, at most n^2 / 2^65 likely, broken by position)."""
    stream = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()
    keys = np.frombuffer(stream.update(b"\x00" * (8 * n)), dtype=np.uint64)
    return np.argsort(keys, kind="stable")
