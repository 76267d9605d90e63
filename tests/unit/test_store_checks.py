"""What the store refuses: lossy casts, NaN/inf, stamps going backwards, step-schema violations
(property tests on the cast rule, real zarr stores for the rest)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_learning.data.maintenance import validate
from robot_learning.data.store import (
    CONTROL_SOURCES,
    STEP_STAMPED,
    EpisodeMeta,
    EpisodeStore,
    StoreError,
    schema_step,
)
from robot_learning.data.writer import exact_cast

INTS = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
FLOATS = [np.float16, np.float32, np.float64]


def _exact(value, dtype) -> bool:
    """Independent oracle: the value survives the cast unchanged (Python ints compared as integers)."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        return info.min <= int(value) <= info.max
    with np.errstate(over="ignore"):
        return float(np.dtype(dtype).type(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(2**64), max_value=2**64), st.sampled_from(INTS + FLOATS))
def test_python_ints_are_stored_only_when_exact(value, dtype) -> None:
    out, why = exact_cast(value, np.dtype(dtype))
    if -(2**63) <= value < 2**64 and _exact(value, dtype):
        assert out is not None, why
        assert int(out) == value
    else:
        assert out is None and why


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(INTS), st.sampled_from(INTS + FLOATS), st.data())
def test_typed_ints_follow_safe_casting_and_round_trip(src, dst, data) -> None:
    info = np.iinfo(src)
    values = np.asarray(data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=1, max_size=5)), src)
    out, _why = exact_cast(values, np.dtype(dst))
    if not np.can_cast(src, dst, "safe"):
        assert out is None  # refused whatever the values: the stream's dtype changed
    elif out is not None:
        assert out.dtype == dst and [int(v) for v in out] == [int(v) for v in values]
    else:  # safe by numpy's rule, but an integer that float64 cannot hold exactly (> 2**53)
        assert np.dtype(dst).kind == "f" and any(float(np.dtype(dst).type(v)) != int(v) for v in values)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(FLOATS))
def test_python_floats_never_overflow_or_underflow(value, dtype) -> None:
    out, why = exact_cast(value, np.dtype(dtype))
    with np.errstate(over="ignore"):
        rounded = float(np.dtype(dtype).type(value))
    lossy = not np.isfinite(rounded) or abs(rounded - value) > float(np.finfo(dtype).eps) * abs(value)
    assert (out is None) == lossy, why
    if out is not None:
        assert float(out) == rounded


@pytest.mark.parametrize(("value", "dtype"), [
    (np.int64(2**40 + 5), np.int32), (2**40 + 5, np.int32), (np.array([-(2**33)], np.int64), np.int32), (-(2**33), np.int32),
    (np.float64(1e40), np.float32), (1e40, np.float32), (1e-50, np.float32), (np.int64(2**53 + 1), np.float64),
    (2**53 + 1, np.float64), (1.5, np.int64), (np.float32(1.0), np.int32), (3, np.bool_), (-1, np.uint8),
])
def test_lossy_casts_named_in_the_issue_are_refused(value, dtype) -> None:
    out, why = exact_cast(value, np.dtype(dtype))
    assert out is None and why


def _store(tmp_path, name="c.zarr", **kw) -> EpisodeStore:
    return EpisodeStore.open(tmp_path / name, mode="w", **kw)


def _st(values: dict, t: float) -> dict:
    """Capture stamps for every observation key of a step (all at the tick)."""
    return {"step": t, **{k: t for k in values if k not in STEP_STAMPED}}


def _steps(store, values: list[dict], commit: bool = True) -> int | None:
    w = store.begin_episode(EpisodeMeta(task="lift"))
    try:
        for i, v in enumerate(values):
            w.append(v, _st(v, float(i)))
    except BaseException:
        w.discard()
        raise
    return w.commit() if commit else w.discard()


def test_store_refuses_lossy_values_naming_key_episode_and_step(tmp_path) -> None:
    s = _store(tmp_path)
    _steps(s, [{"count": np.int32(1), "q": np.zeros(2, np.float32)}])
    w = s.begin_episode(EpisodeMeta(task="lift"))
    w.append({"count": np.int32(2), "q": np.zeros(2, np.float32)}, _st({"count": 0, "q": 0}, 0.0))
    cases = [
        ({"count": np.int64(2**40 + 5)}, r"episode 1, step 1: key 'count' has dtype int64, which int32 cannot hold"),
        ({"count": -(2**33)}, r"episode 1, step 1: key 'count' value -8589934592 is out of the range of int32"),
        ({"q": np.full(2, 1e40)}, r"episode 1, step 1: key 'q' has dtype float64, which float32 cannot hold"),
        ({"q": [1e40, 0.0]}, r"episode 1, step 1: key 'q' value 1e\+40 does not fit float32"),
    ]
    for bad, match in cases:
        with pytest.raises(StoreError, match=match):
            w.append({"count": np.int32(3), "q": np.zeros(2, np.float32), **bad}, _st({"count": 0, "q": 0}, 1.0))
    w.append({"count": 7, "q": [0.5, 0.25]}, _st({"count": 0, "q": 0}, 1.0))  # untyped values that fit exactly are fine
    w.commit()
    ep = s.read_episode(1)
    assert ep["count"].tolist() == [2, 7] and ep["q"][1].tolist() == [0.5, 0.25]


def test_nonfinite_refused_by_default_and_allowed_per_key(tmp_path) -> None:
    s = _store(tmp_path)
    _steps(s, [{"action": np.zeros(3, np.float32)}])
    with pytest.raises(StoreError, match=r"episode 1, step 2: key 'action' holds NaN/inf at index \(1,\).*allow_nonfinite"):
        _steps(s, [{"action": np.zeros(3, np.float32)}] * 2 + [{"action": np.array([0, np.nan, 0], np.float32)}])
    w = s.begin_episode(EpisodeMeta(task="lift"))
    w.append({"action": np.zeros(3, np.float32)}, _st({}, 0.0))
    with pytest.raises(StoreError, match=r"episode 1, stream 'joints': sample 3 holds NaN/inf"):
        w.append_stream("joints", np.where(np.arange(5)[:, None] == 3, np.inf, 0.0) * np.ones((5, 2)), np.arange(5.0))
    w.discard()
    assert len(s) == 1
    s.close()
    nan_ok = _store(tmp_path, "nan.zarr", allow_nonfinite=("depth_min",))
    _steps(nan_ok, [{"depth_min": np.float32(np.nan), "action": np.zeros(3, np.float32)}])
    assert np.isnan(nan_ok.read_episode(0)["depth_min"][0]) and nan_ok.allow_nonfinite == {"depth_min"}
    with pytest.raises(StoreError, match="'action' holds NaN/inf"):
        _steps(nan_ok, [{"depth_min": np.float32(1.0), "action": np.full(3, np.inf, np.float32)}])
    nan_ok.close()
    with pytest.raises(StoreError, match=r"allow_nonfinite=\[\] but the store was created with \['depth_min'\]"):
        EpisodeStore.open(tmp_path / "nan.zarr", mode="a", allow_nonfinite=())
    assert EpisodeStore.open(tmp_path / "nan.zarr", mode="r").allow_nonfinite == {"depth_min"}


def test_validate_flags_nonfinite_values_in_a_store(tmp_path) -> None:
    import zarr

    s = _store(tmp_path, allow_nonfinite=("x", "y"))
    _steps(s, [{"x": np.float32(np.nan), "y": np.float32(np.inf)}])
    s.close()
    report = validate(EpisodeStore.open(tmp_path / "c.zarr", mode="r"), deep=True)
    assert report.ok and not report.warnings  # allowed: not a problem
    root = zarr.open_group(tmp_path / "c.zarr", mode="r+")
    cfg = dict(root.attrs["robot_learning_store"])
    root.attrs["robot_learning_store"] = dict(cfg, allow_nonfinite=["x"])  # as if written by a careless writer
    report = validate(EpisodeStore.open(tmp_path / "c.zarr", mode="r"), deep=True)
    assert report.errors == ["episode 0: key 'y' holds NaN/inf (first at step 0)"]
    del cfg["allow_nonfinite"]  # a store written before the policy existed: a warning, as before
    root.attrs["robot_learning_store"] = cfg
    report = validate(EpisodeStore.open(tmp_path / "c.zarr", mode="r"), deep=True)
    assert report.ok and len(report.warnings) == 2


def test_stamps_of_every_stream_and_of_raw_streams_must_not_go_backwards(tmp_path) -> None:
    s = _store(tmp_path)
    w = s.begin_episode(EpisodeMeta(task="lift"))
    w.append({"depth_min": np.float32(0), "joint_pos": np.zeros(2, np.float32)},
             {"step": 1.0, "depth_min": 0.99, "joint_pos": 0.995})
    w.append({"depth_min": np.float32(0), "joint_pos": np.zeros(2, np.float32)},  # same frame again: fine
             {"step": 1.1, "depth_min": 0.99, "joint_pos": 1.095})
    with pytest.raises(StoreError, match=r"episode 0, step 2: the capture stamp of 'joint_pos' went backwards \(1.0 < 1.095"):
        w.append({"depth_min": np.float32(0), "joint_pos": np.zeros(2, np.float32)},
                 {"step": 1.2, "depth_min": 1.19, "joint_pos": 1.0})
    w.append_stream("joints", np.zeros((3, 2)), [1.0, 1.002, 1.004])
    with pytest.raises(StoreError, match=r"episode 0, stream 'joints': stamps go backwards at sample 1 \(1.003 < 1.005\)"):
        w.append_stream("joints", np.zeros((3, 2)), [1.005, 1.003, 1.007])
    with pytest.raises(StoreError, match=r"stamps go backwards at sample 0 \(1.0 < 1.004\)"):
        w.append_stream("joints", np.zeros((1, 2)), [1.0])
    w.append_stream("joints", np.zeros((1, 2)), [1.006])
    w.commit()
    assert s.read_stream(0, "joints")[1].tolist() == [1.0, 1.002, 1.004, 1.006]


def test_a_discarded_episode_does_not_fix_a_new_streams_shape(tmp_path) -> None:
    s = _store(tmp_path)
    w = s.begin_episode(EpisodeMeta(task="lift"))
    w.append({"q": np.zeros(2, np.float32)}, _st({"q": 0}, 0.0))
    w.append_stream("joints", np.zeros((4, 6)), np.arange(4.0))  # a bad first sample size...
    w.discard()
    assert "joints" not in s.streams
    w = s.begin_episode(EpisodeMeta(task="lift"))
    w.append({"q": np.zeros(2, np.float32)}, _st({"q": 0}, 0.0))
    w.append_stream("joints", np.ones((4, 7), np.float32), np.arange(4.0))  # ...decides nothing
    w.commit()
    assert s.streams["joints"] == ((7,), np.dtype(np.float32))
    with pytest.raises(StoreError, match=r"stream 'joints': samples float64 \(6,\) do not match the store's float32 \(7,\)"):
        w = s.begin_episode(EpisodeMeta(task="lift"))
        w.append_stream("joints", np.zeros((4, 6)), np.arange(4.0))
    w.discard()


def test_step_schema_is_enforced(tmp_path) -> None:
    s = _store(tmp_path)
    base = {"q": np.zeros(2, np.float32)}
    with pytest.raises(StoreError, match=r"key 'reward' is a step-schema key: one float32 value per step, got shape \(1,\)"):
        _steps(s, [{**base, "reward": np.zeros(1, np.float32)}])
    with pytest.raises(StoreError, match=r"episode 0, step 0: key 'reward' has dtype float64, which float32 cannot"):
        _steps(s, [{**base, "reward": np.float64(0.5)}])
    with pytest.raises(StoreError, match=r"episode 0, step 1: control_source 7 is not a valid code"):
        _steps(s, [{**base, **schema_step()}, {**base, **schema_step(), "control_source": 7}])
    with pytest.raises(StoreError, match=r"episode 0, step 2: the episode already ended \(done=True at step 1\)"):
        _steps(s, [{**base, **schema_step()}, {**base, **schema_step(done=True)}, {**base, **schema_step()}])
    with pytest.raises(StoreError, match="terminal=True but done=False"):
        _steps(s, [{**base, **schema_step(), "terminal": np.asarray(True)}])
    _steps(s, [{**base, **schema_step(reward=0.1, control_source="human", intervention=True)},
               {**base, **schema_step(reward=1.0, done=True, terminal=True)}])
    ep = s.read_episode(0)
    assert ep["reward"].dtype == np.float32 and ep["control_source"].dtype == np.uint8
    assert [CONTROL_SOURCES[c] for c in ep["control_source"]] == ["human", "policy"]
    assert ep["done"].tolist() == [False, True] and ep["terminal"].tolist() == [False, True]
    # python scalars are fine where they fit: 0.25 for a float32 reward, 3 for a control_source code
    _steps(s, [{**base, "reward": 0.25, "done": True, "terminal": False, "intervention": False, "control_source": 3}])
    assert s.read_episode(1)["control_source"].tolist() == [CONTROL_SOURCES.index("estop")]


def test_schema_step_helper_refuses_bad_fields() -> None:
    with pytest.raises(StoreError, match="control_source 'robot' is not one of"):
        schema_step(control_source="robot")
    with pytest.raises(StoreError, match="control_source code 9"):
        schema_step(control_source=9)
    with pytest.raises(StoreError, match="terminal=True needs done=True"):
        schema_step(terminal=True)
    with pytest.raises(StoreError, match="overflows float32"):
        schema_step(reward=1e40)
    assert {k: v.dtype for k, v in schema_step().items()} == {
        "reward": np.float32, "done": np.bool_, "terminal": np.bool_, "intervention": np.bool_, "control_source": np.uint8}


def test_a_store_without_control_source_stays_readable_and_appendable(tmp_path) -> None:
    s = _store(tmp_path)
    old = {"q": np.zeros(2, np.float32), "reward": 0.0, "done": False}  # what writers stored before the schema
    _steps(s, [old, dict(old, done=True)])
    s.close()
    s = EpisodeStore.open(tmp_path / "c.zarr", mode="a")
    _steps(s, [old])
    assert "control_source" not in s.keys and s.read_episode(1)["done"].tolist() == [False]
