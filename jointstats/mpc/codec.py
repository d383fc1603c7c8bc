"""The typed wire codec of everything parties (and nodes) send each other.

MPyC 0.11 pickles its messages, so a certified peer could run code on every other party
by sending a crafted pickle. The party runtime (``jointstats.mpc.runtime.JointRuntime``) encodes
and decodes every message with this module instead. Nothing received is ever unpickled,
unmarshalled, evaluated or parsed as YAML: each decoder is told what the receiving step
expects (a field's order and a number of elements, a dtype and shape, one of two control
records) and accepts only bytes of exactly that form, or raises :class:`CodecError`.

Formats (all integers little-endian):

- field values: ``count`` elements of ``width(order)`` bytes each, every one below ``order``;
  the count and the order are the receiver's, never read from the message;
- numpy arrays: the raw little-endian elements of the declared dtype and shape;
- residue arrays (the shares of a linked job's table): uint32 elements of the declared
  shape, each below the prime of its row;
- bounded integers: 8 bytes signed; lists of them: a 4-byte count, then 8 bytes each;
- short texts: a 2-byte length, then UTF-8 (at most ``MAX_TEXT`` bytes);
- control records (the job's status exchange and the nodes' rendezvous): a kind byte, then
  fixed fields, strings and a bounded queue of (timestamp, job id, analyst, spec hash);
- notices (an honest party telling the others which party made it stop the job, and why):
  that party's index and a cause byte (``CAUSES``);
- heartbeats (sent on idle and busy links alike, on a fixed period): an empty payload;
- echoes (the round after a record every party sends every party): one 32-byte SHA-256
  digest per party.

Every length prefix is bounded, and so is any message (``MAX_MESSAGE``). This module
imports no MPyC, so the codec can be tested (and fuzzed) on its own.
"""
from __future__ import annotations

import math
import struct
from itertools import repeat
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from jointstats.errors import CodecError

__all__ = ["CodecError", "Codec", "MAX_MESSAGE", "MAX_TEXT", "MAX_QUEUE", "width",
           "encode_field_values", "decode_field_values", "encode_array", "decode_array",
           "encode_residues", "decode_residues",
           "encode_int", "decode_int", "encode_ints", "decode_ints", "encode_text", "decode_text",
           "encode_record", "decode_record", "refusal_line", "encode_notice", "decode_notice",
           "Notice", "CAUSES", "MALFORMED", "SILENT", "LOST", "EQUIVOCATED", "DIED", "HEARTBEAT", "decode_heartbeat",
           "encode_digests", "decode_digests", "DIGEST_SIZE",
           "INT", "INTS", "TEXT", "RECORD", "codec_for", "RENDEZVOUS_TYPE"]

#: Largest message any party accepts (bytes); a frame announcing more is malformed.
MAX_MESSAGE = 1 << 30
#: Most bytes of messages from one peer held unread (received before a step asks for them),
#: whatever the job: each job's own bound is lower (``JointRuntime.unread_limit``, set from
#: its plan by ``jointstats.engine.party.unread_limit``).
MAX_UNREAD = 1 << 30
#: The bound on unread bytes per peer of a runtime with no plan (the nodes' rendezvous) and
#: the floor of every job's bound: the fixed costs of records and of the noise samplers (the
#: headline DP job's largest message is 0.4 MB).
UNREAD_FLOOR = 32 << 20
#: Largest text (bytes of UTF-8) in a message: names, ids, refusal reasons.
MAX_TEXT = 4096
#: Most queue entries in one rendezvous record.
MAX_QUEUE = 10_000
#: Most integers in one list of integers.
MAX_INTS = 1 << 20
#: Largest absolute value of a bounded integer (signed 64 bits).
INT_BOUND = 1 << 63
#: The ``type`` of a decoded rendezvous record (``jointstats.node.service``).
RENDEZVOUS_TYPE = "jointstats-rendezvous/1"

_MASK64 = (1 << 64) - 1
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


def _fail(message: str) -> CodecError:
    return CodecError(message)


def _check_size(data) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _fail(f"expected bytes, found {type(data).__name__}")
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if len(view) > MAX_MESSAGE:
        raise _fail(f"{len(view)} bytes, over the limit of {MAX_MESSAGE}")
    return view


def _exact(view: memoryview, expected: int, what: str) -> None:
    if len(view) != expected:
        raise _fail(f"expected {expected} bytes of {what}, got {len(view)}")


# ----------------------------------------------------------------------------- field values

def width(order: int) -> int:
    """Bytes per element of a field of ``order`` elements (MPyC's ``byte_length``)."""
    return (int(order).bit_length() + 7) >> 3


def encode_field_values(values, order: int) -> bytes:
    """Field elements (ints in [0, order), a list or a numpy object array) as fixed-width bytes.

    Values outside [0, order) are reduced first (a share is defined modulo the order)."""
    r = width(order)
    values = np.asarray(values, dtype=object).reshape(-1).tolist()
    try:
        data = b"".join(map(int.to_bytes, values, repeat(r), repeat("little")))
        if not values or not _bytes_above(data, r, order, values):
            return data
    except (OverflowError, TypeError):  # negative, too large, or not a Python int
        pass
    values = [int(v) % order for v in values]
    return b"".join(map(int.to_bytes, values, repeat(r), repeat("little")))


def _bytes_above(data, r: int, order: int, values) -> bool:
    """True if any of the fixed-width elements in ``data`` is at least ``order``."""
    if r <= 16:
        lo, hi = _limbs(data, r)
        return _above(lo, hi, order)
    return max(values) >= order


def _limbs(data, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Elements of r <= 16 bytes as two uint64 limbs (low, high)."""
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, r)
    padded = np.zeros((raw.shape[0], 16), dtype=np.uint8)
    padded[:, :r] = raw
    limbs = padded.view("<u8")
    return limbs[:, 0], limbs[:, 1]


def _above(lo: np.ndarray, hi: np.ndarray, order: int) -> bool:
    """True if any value lo + 2**64 hi (uint64 limbs) is at least ``order`` (< 2**128)."""
    top = np.uint64(order >> 64)
    if bool((hi > top).any()):
        return True
    ties = np.flatnonzero(hi == top)
    if not ties.size:
        return False
    if top == 0:
        return bool((lo[ties] >= np.uint64(order)).any())
    low = order & _MASK64
    return bool((lo[ties] >= np.uint64(low)).any())


def decode_field_values(data, order: int, count: int) -> np.ndarray:
    """Exactly ``count`` field elements of a field of ``order`` elements, as a numpy object
    array of Python ints in [0, order); CodecError on anything else."""
    view = _check_size(data)
    r = width(order)
    if count < 0 or count * r > MAX_MESSAGE:
        raise _fail(f"{count} elements of {r} bytes exceed the message limit")
    _exact(view, count * r, f"{count} field element{'s' if count != 1 else ''} of {r} bytes")
    if count == 0:
        return np.empty(0, dtype=object)
    if r <= 16 and _bytes_above(view, r, order, None):
        raise _fail(f"a field element is not below the field's order {order}")
    values = list(map(int.from_bytes, np.frombuffer(view, dtype=f"V{r}").tolist(), repeat("little")))
    if r > 16 and max(values) >= order:
        raise _fail("a field element is not below the field's order")
    out = np.empty(count, dtype=object)
    out[:] = values
    return out


# ----------------------------------------------------------------------------- numpy arrays

def _dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in "iu" or dt.itemsize > 8:
        raise TypeError(f"only numpy integer dtypes are exchanged, not {dt}")
    return dt.newbyteorder("<")


def encode_array(array: np.ndarray, dtype) -> bytes:
    """A numpy integer array as its raw little-endian elements of ``dtype``."""
    return np.ascontiguousarray(array, dtype=_dtype(dtype)).tobytes()


def decode_array(data, dtype, shape: Sequence[int]) -> np.ndarray:
    """A numpy array of exactly ``dtype`` (native byte order) and ``shape``; CodecError else."""
    view = _check_size(data)
    dt = _dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"bad shape {shape}")
    size = math.prod(shape) * dt.itemsize
    _exact(view, size, f"a {dt.name} array of shape {shape}")
    # read-only, without a copy, where the machine is little-endian
    return np.frombuffer(view, dtype=dt).astype(np.dtype(dtype).newbyteorder("="), copy=False).reshape(shape)


def encode_residues(residues: np.ndarray) -> bytes:
    """Shares of a residue array (``jointstats.mpc.rns``: shape ``(L, ...)``, entries below
    2^31) as little-endian uint32."""
    return np.ascontiguousarray(residues, dtype="<u4").tobytes()


def decode_residues(data, primes: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """A residue array of exactly ``(len(primes), *shape)`` uint32 entries, each below its
    prime (a read-only uint32 array over ``data``); CodecError on anything else."""
    flat = decode_array(data, np.uint32, (len(primes), math.prod(shape)))
    for row, p in zip(flat, primes):
        if row.size and int(row.max()) >= p:
            raise _fail(f"a residue is not below its prime {p}")
    return flat.reshape((len(primes), *shape))


# ----------------------------------------------------------------------------- integers, texts

def encode_int(value: int) -> bytes:
    """A bounded integer (|value| < 2**63) in 8 bytes."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not -INT_BOUND < int(value) < INT_BOUND:
        raise _fail(f"not a bounded integer: {type(value).__name__}")
    return _I64.pack(int(value))


def decode_int(data) -> int:
    view = _check_size(data)
    _exact(view, 8, "an integer")
    value = _I64.unpack(view)[0]
    if value == -INT_BOUND:
        raise _fail("integer out of bounds")
    return value


def encode_ints(values: Sequence[int]) -> bytes:
    """A list (or tuple) of bounded integers: a 4-byte count, then 8 bytes each."""
    values = list(values)
    if len(values) > MAX_INTS:
        raise _fail(f"{len(values)} integers, over the limit of {MAX_INTS}")
    return _U32.pack(len(values)) + b"".join(encode_int(v) for v in values)


def decode_ints(data) -> list[int]:
    view = _check_size(data)
    if len(view) < 4:
        raise _fail("truncated list of integers")
    n = _U32.unpack(view[:4])[0]
    if n > MAX_INTS:
        raise _fail(f"{n} integers, over the limit of {MAX_INTS}")
    _exact(view, 4 + 8 * n, f"a list of {n} integers")
    values = np.frombuffer(view, dtype="<i8", offset=4, count=n)
    if n and int(values.min()) == -INT_BOUND:
        raise _fail("integer out of bounds")
    return [int(v) for v in values]


def _text_bytes(text: str, limit: int = MAX_TEXT, truncate: bool = False) -> bytes:
    if not isinstance(text, str):
        raise _fail(f"expected a text, found {type(text).__name__}")
    raw = text.encode("utf-8", "replace")
    if len(raw) > limit:
        if not truncate:
            raise _fail(f"a text of {len(raw)} bytes, over the limit of {limit}")
        raw = raw[:limit - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return raw


class _Reader:
    """Reads typed fields off a message; any overrun or bad field is a CodecError."""

    def __init__(self, view: memoryview):
        self.view = view
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.view):
            raise _fail(f"truncated message (reading {what})")
        part = self.view[self.pos:self.pos + n]
        self.pos += n
        return part

    def int64(self, what: str) -> int:
        value = _I64.unpack(self.take(8, what))[0]
        if value == -INT_BOUND:
            raise _fail(f"{what} out of bounds")
        return value

    def text(self, what: str, limit: int = MAX_TEXT) -> str:
        n = _U16.unpack(self.take(2, what))[0]
        if n > limit:
            raise _fail(f"{what}: a text of {n} bytes, over the limit of {limit}")
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(f"{what} is not UTF-8") from None

    def line(self, what: str, limit: int = MAX_TEXT) -> str:
        """A text made one printable line (a peer's text may end up in errors and logs)."""
        return _printable(self.text(what, limit))

    def optional_line(self, what: str, limit: int = MAX_TEXT) -> str | None:
        text = self.optional_text(what, limit)
        return None if text is None else _printable(text)

    def optional_text(self, what: str, limit: int = MAX_TEXT) -> str | None:
        flag = self.take(1, what)[0]
        if flag == 0:
            return None
        if flag != 1:
            raise _fail(f"{what}: bad presence flag {flag}")
        return self.text(what, limit)

    def end(self) -> None:
        if self.pos != len(self.view):
            raise _fail(f"{len(self.view) - self.pos} unexpected trailing bytes")


def _put_text(out: list, text: str, limit: int = MAX_TEXT, truncate: bool = False) -> None:
    raw = _text_bytes(text, limit, truncate)
    out.append(_U16.pack(len(raw)))
    out.append(raw)


def _put_optional_text(out: list, text: str | None, limit: int = MAX_TEXT, truncate: bool = False) -> None:
    if text is None:
        out.append(b"\x00")
    else:
        out.append(b"\x01")
        _put_text(out, text, limit, truncate)


def encode_text(text: str) -> bytes:
    """A short text ("ready", "end"): 2-byte length and UTF-8."""
    out: list = []
    _put_text(out, text)
    return b"".join(out)


def decode_text(data) -> str:
    reader = _Reader(_check_size(data))
    text = reader.text("a text")
    reader.end()
    return text


# ----------------------------------------------------------------------------- control records

#: Limits of record fields (bytes of UTF-8).
NAME_LIMIT = 256
ID_LIMIT = 256
_STATUS, _RENDEZVOUS = 1, 2
_STATUS_KEYS = frozenset({"party", "plan", "job", "refusal", "min_count_floor"})
_RENDEZVOUS_KEYS = _STATUS_KEYS | {"type", "queue"}


def encode_record(record: dict) -> bytes:
    """A control record: a job's status (``party, plan, job, refusal, min_count_floor``), or a
    node's rendezvous (the same keys plus ``type`` = RENDEZVOUS_TYPE and ``queue``, a list of
    (timestamp, job id, analyst, spec sha256) entries). Refusals longer than MAX_TEXT bytes
    are shortened; any other field out of bounds is a CodecError."""
    if not isinstance(record, dict):
        raise _fail(f"expected a record, found {type(record).__name__}")
    keys = set(record)
    out: list = []
    if keys == _RENDEZVOUS_KEYS and record["type"] == RENDEZVOUS_TYPE:
        queue = list(record["queue"])
        if len(queue) > MAX_QUEUE:
            raise _fail(f"a queue of {len(queue)} jobs, over the limit of {MAX_QUEUE}")
        out.append(bytes([_RENDEZVOUS]))
        _put_text(out, record["party"], NAME_LIMIT)
        _put_optional_text(out, record["refusal"], truncate=True)
        out.append(_U32.pack(len(queue)))
        for entry in queue:
            timestamp, job_id, analyst, spec_sha = entry
            out.append(encode_int(timestamp))
            _put_text(out, job_id, ID_LIMIT)
            _put_text(out, analyst, NAME_LIMIT)
            _put_text(out, spec_sha, ID_LIMIT)
    elif keys == _STATUS_KEYS:
        out.append(bytes([_STATUS]))
        _put_text(out, record["party"], NAME_LIMIT)
        _put_optional_text(out, record["plan"], ID_LIMIT)
        _put_optional_text(out, record["job"], ID_LIMIT)
        _put_optional_text(out, record["refusal"], truncate=True)
        out.append(encode_int(record["min_count_floor"]))
    else:
        raise _fail(f"not a status or rendezvous record (keys {sorted(map(str, keys))})")
    return b"".join(out)


def decode_record(data) -> dict:
    """A status or rendezvous record (as ``encode_record`` takes them); CodecError otherwise.

    Its texts come back as single printable lines (control characters replaced by '?'), a
    refusal cut to REFUSAL_LIMIT characters. A rendezvous record decodes with ``job`` and ``plan`` None and ``min_count_floor`` 0, so
    a worker that meets one by mistake sees its refusal and stops."""
    reader = _Reader(_check_size(data))
    kind = reader.take(1, "the record kind")[0]
    if kind == _STATUS:
        record = {"party": reader.line("party", NAME_LIMIT),
                  "plan": reader.optional_line("plan", ID_LIMIT),
                  "job": reader.optional_line("job", ID_LIMIT),
                  "refusal": _short(reader.optional_line("refusal")),
                  "min_count_floor": reader.int64("min_count_floor")}
        if record["min_count_floor"] < 0:
            raise _fail("min_count_floor is negative")
    elif kind == _RENDEZVOUS:
        record = {"type": RENDEZVOUS_TYPE, "party": reader.line("party", NAME_LIMIT),
                  "refusal": _short(reader.optional_line("refusal")), "job": None, "plan": None,
                  "min_count_floor": 0}
        n = _U32.unpack(reader.take(4, "queue length"))[0]
        if n > MAX_QUEUE:
            raise _fail(f"a queue of {n} jobs, over the limit of {MAX_QUEUE}")
        queue = []
        for _ in range(n):
            queue.append([reader.int64("timestamp"), reader.line("job id", ID_LIMIT),
                          reader.line("analyst", NAME_LIMIT), reader.line("spec hash", ID_LIMIT)])
        record["queue"] = queue
    else:
        raise _fail(f"unknown record kind {kind}")
    reader.end()
    return record


#: Longest refusal kept from a peer's record (characters): it becomes an error line.
REFUSAL_LIMIT = 300


def _printable(text: str) -> str:
    """``text`` with every non-printable character (newlines, escapes) replaced by '?'."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _short(text: str | None) -> str | None:
    if text is None or len(text) <= REFUSAL_LIMIT:
        return text
    return text[:REFUSAL_LIMIT - 3] + "..."


def refusal_line(sender: str, refusal: str) -> str:
    """The one-line error for a refusal received from party ``sender`` (named by its index):
    the sender's own text if it names the sender first, else that text after its name."""
    head = f"party {sender!r}"
    line = refusal if refusal.startswith(head + " ") else f"{head} refused: {refusal}"
    return _printable(line)[:REFUSAL_LIMIT]


# ----------------------------------------------------------------------------- notices

#: Why a party stopped the job because of another (the cause byte of a notice).
MALFORMED, SILENT, LOST, EQUIVOCATED, DIED = 0, 1, 2, 3, 4
CAUSES = {MALFORMED: "sent a malformed message", SILENT: "went silent",
          LOST: "disconnected", EQUIVOCATED: "sent different parties different records",
          DIED: "died before connecting (its node says so)"}


@dataclass(frozen=True)
class Notice:
    """An honest party telling the others that it stopped the job because of party
    ``culprit`` (an MPC index), for ``cause`` (one of ``CAUSES``)."""

    culprit: int
    cause: int


def encode_notice(culprit: int, cause: int = MALFORMED) -> bytes:
    """A notice: the culprit's index (8 bytes) and the cause (1 byte). Only these travel, so
    a notice cannot carry forged text."""
    if cause not in CAUSES:
        raise _fail(f"unknown notice cause {cause}")
    return encode_int(culprit) + bytes([cause])


def decode_notice(data, parties: int) -> Notice:
    """The notice, naming one of ``parties`` indices for a known cause; CodecError otherwise."""
    view = _check_size(data)
    _exact(view, 9, "a notice")
    culprit = decode_int(view[:8])
    if not 0 <= culprit < parties:
        raise _fail(f"a notice names index {culprit}, not one of {parties} parties")
    cause = view[8]
    if cause not in CAUSES:
        raise _fail(f"a notice gives an unknown cause {cause}")
    return Notice(culprit, cause)


# ----------------------------------------------------------------------------- heartbeats

#: The payload of a heartbeat: nothing (a heartbeat is its reserved program counter alone,
#: sent on a fixed period, so it carries nothing about the data or the computation).
HEARTBEAT = b""


def decode_heartbeat(data) -> None:
    """Accept a heartbeat's payload (empty); CodecError on anything else."""
    _exact(_check_size(data), 0, "a heartbeat")


# ----------------------------------------------------------------------------- echoes

#: Bytes of one digest in an echo (SHA-256).
DIGEST_SIZE = 32


def encode_digests(digests: Sequence[bytes]) -> bytes:
    """An echo: one SHA-256 digest per party, in index order, of the message this party
    received from it (its own for itself)."""
    if any(len(d) != DIGEST_SIZE for d in digests):
        raise _fail("an echo holds digests of 32 bytes only")
    return b"".join(digests)


def decode_digests(data, parties: int) -> list[bytes]:
    """Exactly ``parties`` digests; CodecError otherwise."""
    view = _check_size(data)
    _exact(view, parties * DIGEST_SIZE, f"an echo of {parties} digests")
    return [bytes(view[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]) for i in range(parties)]


# ----------------------------------------------------------------------------- transfer codecs

class Codec:
    """An encoder and the decoder of what the receiving step expects (``rt.transfer``).

    ``echoed``: a transfer from every party to every party with this codec is followed by an
    echo round (``JointRuntime.transfer``), so that no party can tell different parties
    different things (the job agreement's records)."""

    __slots__ = ("name", "encode", "decode", "echoed")

    def __init__(self, name: str, encode: Callable[[Any], bytes], decode: Callable[[Any], Any],
                 echoed: bool = False):
        self.name, self.encode, self.decode, self.echoed = name, encode, decode, echoed

    def __repr__(self) -> str:
        return f"Codec({self.name})"


INT = Codec("int", encode_int, decode_int)
INTS = Codec("ints", encode_ints, decode_ints)
#: Integer lists every party must have heard alike from each sender (a linked job's holdings:
#: a holder that told parties different key counts would make them derive different
#: layouts, and one could then send another its secrets).
ECHOED_INTS = Codec("ints", encode_ints, decode_ints, echoed=True)
TEXT = Codec("text", encode_text, decode_text)
RECORD = Codec("record", encode_record, decode_record, echoed=True)


def codec_for(obj: Any) -> Codec:
    """The codec of a value every party transfers alike: an int or a short text (MPyC's own
    shutdown transfers the party's index). Anything else must name its codec."""
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return INT
    if isinstance(obj, str):
        return TEXT
    raise TypeError(f"transfer of a {type(obj).__name__} needs an explicit codec")
