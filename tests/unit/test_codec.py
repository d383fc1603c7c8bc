"""The typed wire codec (jointstats.mpc.codec): round trips, hostile inputs, fuzzing.

Every decoder must return exactly what the receiving step expects or raise CodecError;
in particular a pickle is never unpickled (its ``__reduce__`` would create a file here).
"""
from __future__ import annotations

import pickle
import secrets
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jointstats.mpc import codec as c
from jointstats.mpc.codec import CodecError

ORDERS = [2, 251, (1 << 31) - 1, (1 << 61) - 1, (1 << 64) - 59, 1 << 64, (1 << 89) - 1,
          (1 << 127) - 1, (1 << 128) - 159, (1 << 128) + 51, (1 << 521) - 1, (1 << 2048) - 1942289]

STATUS = {"party": "hospital_b", "plan": "ab" * 32, "job": "job-1", "refusal": None,
          "min_count_floor": 5}
RENDEZVOUS = {"type": c.RENDEZVOUS_TYPE, "party": "registry_c",
              "queue": [[1_700_000_000, "job-1", "alice", "0" * 64],
                        [1_700_000_001, "job-2", "bob", "f" * 64]],
              "refusal": "party 'registry_c' is between jobs", "job": None, "plan": None,
              "min_count_floor": 0}


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("order", ORDERS)
def test_field_values_round_trip_fixed_width(order):
    values = [0, order - 1] + [secrets.randbelow(order) for _ in range(100)]
    data = c.encode_field_values(np.array(values, dtype=object), order)
    assert len(data) == len(values) * c.width(order)
    out = c.decode_field_values(data, order, len(values))
    assert out.dtype == object and out.tolist() == values
    assert all(type(v) is int for v in out.tolist())
    assert c.decode_field_values(c.encode_field_values([], order), order, 0).size == 0


@pytest.mark.parametrize("order", ORDERS)
def test_field_values_are_reduced_when_encoded(order):
    out = c.decode_field_values(c.encode_field_values([-1, order, order + 3], order), order, 3)
    assert out.tolist() == [order - 1, 0, 3 % order]


def test_field_values_match_mpyc_bytes():
    # the same little-endian fixed-width layout as MPyC's own field.to_bytes
    from jointstats.mpc import runtime as _mpc
    field = _mpc._mpyc_runtime.finfields.GF((1 << 127) - 1)
    values = [secrets.randbelow(field.order) for _ in range(20)]
    assert c.encode_field_values(values, field.order) == field.to_bytes(values)


@pytest.mark.parametrize("dtype,shape", [(np.uint64, (3, 4)), (np.int32, (7,)), (np.uint8, (2, 0, 3)),
                                         (np.int64, ())])
def test_arrays_round_trip(dtype, shape):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    data = c.encode_array(a, dtype)
    assert len(data) == a.size * np.dtype(dtype).itemsize
    out = c.decode_array(data, dtype, shape)
    assert out.dtype == np.dtype(dtype) and out.shape == shape and np.array_equal(out, a)


def test_ints_texts_and_records_round_trip():
    for v in (0, 1, -1, (1 << 63) - 1, -(1 << 63) + 1):
        assert c.decode_int(c.encode_int(v)) == v
    assert c.decode_ints(c.encode_ints((3, -4, 5))) == [3, -4, 5]
    assert c.decode_ints(c.encode_ints([])) == []
    for text in ("ready", "end", "", "naïve ✓"):
        assert c.decode_text(c.encode_text(text)) == text
    assert c.decode_record(c.encode_record(STATUS)) == STATUS
    assert c.decode_record(c.encode_record({**STATUS, "plan": None, "job": None,
                                            "refusal": "party 'x' refused: no"}))["refusal"] == "party 'x' refused: no"
    assert c.decode_record(c.encode_record(RENDEZVOUS)) == RENDEZVOUS
    assert c.decode_notice(c.encode_notice(2), 3) == c.Notice(2, c.MALFORMED)
    for cause in c.CAUSES:
        assert c.decode_notice(c.encode_notice(1, cause), 3) == c.Notice(1, cause)
    digests = [bytes([i]) * 32 for i in range(3)]
    assert c.decode_digests(c.encode_digests(digests), 3) == digests
    with pytest.raises(CodecError):
        c.decode_digests(c.encode_digests(digests), 4)
    c.decode_heartbeat(c.HEARTBEAT)
    with pytest.raises(CodecError):
        c.decode_heartbeat(b"\x00")
    with pytest.raises(CodecError, match="unknown cause"):
        c.decode_notice(c.encode_int(1) + b"\x09", 3)


def test_transfer_codecs():
    assert c.codec_for(3) is c.INT and c.codec_for("end") is c.TEXT
    for obj in ({"a": 1}, [1, 2], None, True, 1.5, b"x"):
        with pytest.raises(TypeError):
            c.codec_for(obj)


def test_peer_texts_come_back_as_short_printable_lines():
    forged = {**STATUS, "party": "a\nb", "job": "j\x1b[31m", "refusal": "x\ny" + "z" * 5000}
    record = c.decode_record(c.encode_record(forged))
    assert record["party"] == "a?b" and record["job"] == "j?[31m"
    assert record["refusal"].startswith("x?y") and len(record["refusal"]) == c.REFUSAL_LIMIT
    entry = c.decode_record(c.encode_record({**RENDEZVOUS, "queue": [[1, "j\r", "a\n", "h"]]}))["queue"]
    assert entry == [[1, "j?", "a?", "h"]]
    with pytest.raises(CodecError, match="not one of 3"):
        c.decode_notice(c.encode_notice(3), 3)


def test_refusals_are_named_by_their_sender():
    own = "party 'party_b' refused: its budget is exhausted"
    assert c.refusal_line("party_b", own) == own
    forged = c.refusal_line("party_b", "party 'party_a' refused: budget exhausted")
    assert forged == "party 'party_b' refused: party 'party_a' refused: budget exhausted"
    assert c.refusal_line("party_bb", own).startswith("party 'party_bb' refused: party 'party_b'")
    long = c.refusal_line("b", "\x1b" + "x" * 1000)
    assert len(long) == c.REFUSAL_LIMIT and "\x1b" not in long


def test_long_refusals_are_shortened_and_other_fields_bounded():
    long = {**STATUS, "refusal": "x" * 10_000}
    assert len(c.decode_record(c.encode_record(long))["refusal"]) <= c.REFUSAL_LIMIT
    with pytest.raises(CodecError):
        c.encode_record({**STATUS, "party": "p" * 1000})
    with pytest.raises(CodecError):
        c.encode_record({**STATUS, "extra": 1})
    with pytest.raises(CodecError):
        c.encode_record({**RENDEZVOUS, "queue": [[1, "j", "a", "h"]] * (c.MAX_QUEUE + 1)})
    with pytest.raises(CodecError):
        c.encode_int(1 << 63)


# ----------------------------------------------------------------------------- hostile inputs

def _decoders():
    """Every decoder, bound to what a receiving step would expect."""
    return [lambda d: c.decode_field_values(d, (1 << 61) - 1, 4),
            lambda d: c.decode_field_values(d, (1 << 127) - 1, 3),
            lambda d: c.decode_field_values(d, (1 << 2048) - 1942289, 2),
            lambda d: c.decode_array(d, np.uint64, (2, 3)),
            c.decode_int, c.decode_ints, c.decode_text, c.decode_record,
            lambda d: c.decode_notice(d, 3), c.decode_heartbeat, lambda d: c.decode_digests(d, 3)]


@pytest.mark.parametrize("decode", _decoders())
def test_pickles_are_refused_and_never_run(tmp_path, decode):
    sentinel = tmp_path / "PWNED"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        payload = pickle.dumps(_Exploit(sentinel), protocol=protocol)
        with pytest.raises(CodecError):
            decode(payload)
    for obj in (STATUS, [1, 2, 3], "end", np.arange(6, dtype=np.uint64)):
        with pytest.raises(CodecError):
            decode(pickle.dumps(obj))
    assert not sentinel.exists()


def test_truncated_and_padded_messages():
    order = (1 << 89) - 1
    good = c.encode_field_values([1, 2, 3], order)
    for bad in (good[:-1], good + b"\0", b""):
        with pytest.raises(CodecError):
            c.decode_field_values(bad, order, 3)
    arr = c.encode_array(np.zeros((2, 3), np.uint64), np.uint64)
    for bad in (arr[:-1], arr + b"\0"):
        with pytest.raises(CodecError):
            c.decode_array(bad, np.uint64, (2, 3))
    with pytest.raises(CodecError):  # the right number of bytes for another shape
        c.decode_array(arr, np.uint64, (3, 3))
    rec = c.encode_record(RENDEZVOUS)
    for cut in range(len(rec)):
        with pytest.raises(CodecError):
            c.decode_record(rec[:cut])
    with pytest.raises(CodecError):
        c.decode_record(rec + b"\0")


def test_values_at_or_above_the_order_are_refused():
    for order in ((1 << 61) - 1, (1 << 64) - 59, (1 << 127) - 1, (1 << 128) - 159, (1 << 521) - 1):
        r = c.width(order)
        for bad in (order, (1 << (8 * r)) - 1):
            data = c.encode_field_values([5], order) + bad.to_bytes(r, "little")
            with pytest.raises(CodecError, match="not below"):
                c.decode_field_values(data, order, 2)


def test_oversized_length_prefixes():
    with pytest.raises(CodecError, match="over the limit"):
        c.decode_ints(struct.pack("<I", c.MAX_INTS + 1))
    with pytest.raises(CodecError):
        c.decode_ints(struct.pack("<I", 0xFFFFFFFF) + b"\0" * 8)
    with pytest.raises(CodecError, match="over the limit"):
        c.decode_text(struct.pack("<H", 0xFFFF) + b"a" * 0xFFFF)
    # a rendezvous record announcing more queue entries than allowed
    head = bytes([2]) + struct.pack("<H", 1) + b"p" + b"\0"
    with pytest.raises(CodecError, match="over the limit"):
        c.decode_record(head + struct.pack("<I", c.MAX_QUEUE + 1))
    with pytest.raises(CodecError, match="truncated"):
        c.decode_record(head + struct.pack("<I", 5))
    with pytest.raises(CodecError, match="exceed"):
        c.decode_field_values(b"", 1 << 127, c.MAX_MESSAGE)


def test_messages_over_the_size_limit(monkeypatch):
    monkeypatch.setattr(c, "MAX_MESSAGE", 64)
    with pytest.raises(CodecError, match="over the limit"):
        c.decode_array(b"\0" * 72, np.uint64, (9,))
    with pytest.raises(CodecError, match="over the limit"):
        c.decode_text(b"\0" * 65)


def test_wrong_types_and_bad_fields():
    with pytest.raises(CodecError):
        c.decode_text(np.zeros(3))  # not bytes
    with pytest.raises(CodecError, match="UTF-8"):
        c.decode_text(struct.pack("<H", 2) + b"\xff\xfe")
    with pytest.raises(CodecError, match="unknown record kind"):
        c.decode_record(b"\x07")
    with pytest.raises(CodecError, match="presence flag"):
        c.decode_record(bytes([1]) + struct.pack("<H", 1) + b"p" + b"\x05")
    status = bytearray(c.encode_record(STATUS))
    status[-8:] = struct.pack("<q", -1)
    with pytest.raises(CodecError, match="negative"):
        c.decode_record(bytes(status))
    with pytest.raises(CodecError, match="out of bounds"):
        c.decode_int(struct.pack("<q", -(1 << 63)))


# ----------------------------------------------------------------------------- fuzzing

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(range(len(_decoders()))))
def test_decoding_random_bytes_raises_nothing_but_codec_errors(data, which):
    try:
        _decoders()[which](data)
    except CodecError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_record_mutations_decode_to_valid_records_or_codec_errors(suffix):
    for base in (c.encode_record(STATUS), c.encode_record(RENDEZVOUS)):
        for data in (base[:len(base) // 2] + suffix, base[:1] + suffix):
            try:
                record = c.decode_record(data)
            except CodecError:
                continue
            assert set(record) >= {"party", "plan", "job", "refusal", "min_count_floor"}
            assert isinstance(record["party"], str) and isinstance(record["min_count_floor"], int)
