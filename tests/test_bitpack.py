"""Index bit-packing: layout pinned by an independent bit reader, round trips, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vptq_rs
from vptq_rs import InvalidValueError, VptqError


def read_code_bitwise(words: np.ndarray, j: int, total: int) -> int:
    """Decode code j of one packed row one bit at a time, straight from FORMAT.md."""
    u = words.astype(np.int64) & 0xFFFFFFFF
    code = 0
    for b in range(total):
        bit = j * total + b
        code |= int((u[bit // 32] >> (bit % 32)) & 1) << b
    return code


@st.composite
def packing_cases(draw):
    index_bits = draw(st.integers(1, 16))
    res_bits = draw(st.integers(0, 16))
    rows = draw(st.integers(0, 4))
    n = draw(st.integers(0, 67))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from([np.int64, np.int32, np.uint16, np.int16, np.uint8]))
    main = rng.integers(0, 2**index_bits, size=(rows, n))
    if np.iinfo(dtype).max < 2**index_bits - 1:
        dtype = np.int64
    res = rng.integers(0, 2**res_bits, size=(rows, n)) if res_bits else None
    return index_bits, res_bits, main.astype(dtype), res


@settings(max_examples=150, deadline=None)
@given(packing_cases())
def test_pack_matches_bitwise_reader_and_round_trips(case):
    index_bits, res_bits, main, res = case
    total = index_bits + res_bits
    packed = vptq_rs.pack_indices(main, index_bits, res=res, res_bits=res_bits)
    rows, n = main.shape
    assert packed.dtype == np.int32
    assert packed.shape == (rows, -(-n * total // 32))
    for r in range(rows):
        for j in range(n):
            want = int(main[r, j]) | ((int(res[r, j]) << index_bits) if res is not None else 0)
            assert read_code_bitwise(packed[r], j, total) == want
    got_main, got_res = vptq_rs.unpack_indices(packed, index_bits, n, res_bits=res_bits)
    np.testing.assert_array_equal(got_main, main)
    if res is None:
        assert got_res is None
    else:
        np.testing.assert_array_equal(got_res, res)


def test_every_width_round_trips_full_range():
    rng = np.random.default_rng(0)
    for index_bits in range(1, 17):
        for res_bits in range(0, 17):
            main = rng.integers(0, 2**index_bits, size=(3, 37))
            main[0, 0] = 2**index_bits - 1  # the largest code must survive
            res = rng.integers(0, 2**res_bits, size=(3, 37)) if res_bits else None
            packed = vptq_rs.pack_indices(main, index_bits, res, res_bits)
            m, r = vptq_rs.unpack_indices(packed, index_bits, 37, res_bits)
            np.testing.assert_array_equal(m, main)
            if res is not None:
                np.testing.assert_array_equal(r, res)


def test_known_words():
    # codes 1..4 at 8 bits fill one word little-endian: 0x04030201
    packed = vptq_rs.pack_indices(np.array([[1, 2, 3, 4]]), 8)
    assert packed.tolist() == [[0x04030201]]
    # merged code (res << index_bits) | main, 16 + 16 bits, top bit set -> negative int32
    packed = vptq_rs.pack_indices(np.array([[0x1234]]), 16, np.array([[0xFFFF]]), 16)
    assert packed.tolist() == [[np.int32(np.uint32(0xFFFF1234).view(np.int32))]]


def test_non_contiguous_input_is_packed_by_value():
    main = np.arange(64).reshape(8, 8)[:, ::2]
    packed = vptq_rs.pack_indices(main, 6)
    np.testing.assert_array_equal(vptq_rs.unpack_indices(packed, 6, 4)[0], main)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"main": np.array([[8]]), "index_bits": 3}, "does not fit in 3 bits"),
        ({"main": np.array([[-1]]), "index_bits": 3}, "does not fit"),
        ({"main": np.array([[0]]), "index_bits": 0}, "index_bits must be in 1..=16"),
        ({"main": np.array([[0]]), "index_bits": 17}, "index_bits must be in 1..=16"),
        ({"main": np.array([[0]]), "index_bits": 4, "res_bits": -1}, "res_bits"),
        ({"main": np.array([[0]]), "index_bits": 4, "res_bits": 17}, "res_bits"),
        ({"main": np.array([0, 1]), "index_bits": 4}, "must be 2-D"),
        ({"main": np.array([[0.5]]), "index_bits": 4}, "integer dtype"),
        ({"main": [[0]], "index_bits": 4}, "numpy integer array"),
        (
            {"main": np.array([[0]]), "index_bits": 4, "res": np.array([[0]]), "res_bits": 0},
            "res given but res_bits is 0",
        ),
        ({"main": np.array([[0]]), "index_bits": 4, "res_bits": 2}, "no res indices"),
        (
            {"main": np.array([[0, 1]]), "index_bits": 4, "res": np.array([[0]]), "res_bits": 2},
            "res has shape",
        ),
        (
            {"main": np.array([[0]]), "index_bits": 4, "res": np.array([[4]]), "res_bits": 2},
            "res index",
        ),
    ],
)
def test_pack_rejects_bad_input(kwargs, message):
    with pytest.raises(InvalidValueError, match=message) as info:
        vptq_rs.pack_indices(**kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, VptqError)


def test_unpack_rejects_bad_input():
    packed = vptq_rs.pack_indices(np.zeros((2, 10), dtype=np.int64), 4)
    with pytest.raises(InvalidValueError, match="words"):
        vptq_rs.unpack_indices(packed, 4, 17)  # 17 codes need 3 words, rows hold 2
    with pytest.raises(InvalidValueError, match="int32"):
        vptq_rs.unpack_indices(packed.astype(np.int64), 4, 10)
    with pytest.raises(InvalidValueError, match="int32"):
        vptq_rs.unpack_indices(packed[0], 4, 10)
    with pytest.raises(InvalidValueError, match="n must be"):
        vptq_rs.unpack_indices(packed, 4, -1)
