"""Hypothesis tests of the Python-facing parsers of untrusted input.

Whatever a config entry, a checkpoint's config.json, a Hessian file or the sizes passed
to ``unpack_indices`` hold, the answer is a value or one of the package's ValueError
subclasses: never another exception type, a Rust panic (PanicException is a
BaseException) or a crashed interpreter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import vptq_rs  # noqa: E402
from vptq_rs import _core  # noqa: E402
from vptq_rs.errors import CheckpointError, InvalidValueError, VptqError  # noqa: E402
from vptq_rs.layout import LayerConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_reliability_inputs import VALID_ENTRY, write_packed_fixture  # noqa: E402

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# JSON values that a hostile or broken config may hold where a number is expected
ints = st.one_of(
    st.integers(-3, 70000),
    st.sampled_from([0, 1, 2, 65536, 65537, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]),
    st.integers(),
)
scalars = st.one_of(ints, st.none(), st.booleans(), st.floats(), st.text(max_size=4))
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
)


@st.composite
def mutated_entry(draw: st.DrawFn) -> dict[str, Any]:
    """The valid entry with some keys replaced by hostile values and some removed."""
    entry = dict(VALID_ENTRY)
    for key in draw(st.lists(st.sampled_from(sorted(VALID_ENTRY)), max_size=4, unique=True)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            del entry[key]
        elif key in ("vector_lens", "num_centroids", "num_res_centroids"):
            entry[key] = draw(st.one_of(st.lists(ints, min_size=2, max_size=2), values))
        else:
            entry[key] = draw(values)
    return entry


# ---------------------------------------------------------------- LayerConfig.from_hf


# LayerConfig.from_hf converts "group_size" with int() outside its try block, so a
@SETTINGS
@given(mutated_entry())
def test_layer_config_from_hf_never_crashes(entry: dict[str, Any]) -> None:
    try:
        cfg = LayerConfig.from_hf(entry)
    except InvalidValueError:
        return
    # what parses must be self-consistent
    assert cfg.group_num * cfg.group_size + cfg.outlier_size == cfg.q_cols
    assert 2 <= cfg.num_centroids <= 65536


def test_layer_config_group_size_none_is_invalid_value() -> None:
    with pytest.raises(InvalidValueError):
        LayerConfig.from_hf({**VALID_ENTRY, "group_size": None})


# ---------------------------------------------------------------- validate_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    write_packed_fixture(d, shard_bytes=1 << 30)
    _core.validate_checkpoint(str(d))
    return d


@SETTINGS
@given(entry=mutated_entry(), extra=st.booleans())
def test_validate_checkpoint_on_random_config(
    ckpt: Path, entry: dict[str, Any], extra: bool
) -> None:
    cfg = {
        "quantization_config": {
            "quant_method": "vptq",
            "config_for_layers": {"l.q": entry, **({"l.k": entry} if extra else {})},
            "shared_layer_config": {},
        }
    }
    (ckpt / "config.json").write_text(json.dumps(cfg))
    try:
        report = _core.validate_checkpoint(str(ckpt))
    except (CheckpointError, InvalidValueError):
        return
    assert report["layers"][0]["name"] == "l.q"
    assert report["total"]["bits_per_weight"] > 0


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        values.map(lambda v: json.dumps(v).encode()),
    )
)
def test_validate_checkpoint_on_random_config_bytes(ckpt: Path, raw: bytes) -> None:
    (ckpt / "config.json").write_bytes(raw)
    with pytest.raises(VptqError):
        _core.validate_checkpoint(str(ckpt))


# ---------------------------------------------------------------- Hessian files

tensors = st.builds(
    lambda shape, dt: torch.zeros(shape, dtype=dt),
    st.lists(st.integers(0, 12), max_size=3),
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]),
)
hessian_values = st.one_of(tensors, scalars, st.lists(st.integers(), max_size=3))


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["flatH", "mu", "n", "ct", "H", "invH", "perm", "zero_idx"]),
        hessian_values,
        max_size=5,
    )
)
def test_load_hessian_on_random_dicts(tmp_path: Path, data: dict[str, Any]) -> None:
    from vptq_rs.hessian import load_hessian, load_inverse_hessian

    path = tmp_path / "h.pt"
    torch.save(data, path)
    try:
        h, mu, _ct = load_hessian(path)
    except CheckpointError:
        pass
    else:
        n = mu.numel()
        assert h.shape == (n, n) and torch.equal(h, h.t())
    try:
        inv = load_inverse_hessian(path)
    except CheckpointError:
        pass
    else:
        n = inv.perm.numel()
        assert inv.chol.shape == (n, n)


# ---------------------------------------------------------------- unpack sizes


@SETTINGS
@given(
    rows=st.integers(0, 3),
    words=st.integers(0, 4),
    n=st.one_of(st.integers(0, 200), st.integers(0, 2**63 - 1)),
    bits=st.integers(-2, 20),
    res_bits=st.integers(-2, 20),
)
def test_unpack_indices_sizes(rows: int, words: int, n: int, bits: int, res_bits: int) -> None:
    packed = np.zeros((rows, words), np.int32)
    try:
        main, res = vptq_rs.unpack_indices(packed, bits, n, res_bits=res_bits)
    except InvalidValueError:
        return
    assert main.shape == (rows, n)
    assert (res is None) == (res_bits == 0)


def test_unpack_indices_huge_n_is_an_error_not_a_panic() -> None:
    # regression (found by fuzz/unpack): the output was allocated before the sizes were
    # checked, so a huge n aborted with a Rust panic instead of raising
    for n in (2**59, 2**62, 2**63 - 1):
        with pytest.raises(InvalidValueError, match="words"):
            vptq_rs.unpack_indices(np.zeros((1, 0), np.int32), 16, n, res_bits=16)
