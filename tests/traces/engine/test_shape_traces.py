"""Traces: CSR layout, builders, indexing, validation."""

import numpy as np
import pandas as pd
import pytest

from greyanom.traces import Traces


def _two():
    return Traces.from_arrays([np.array([0.0, 1.0, 2.5]), np.array([3.0, 4.0])], [np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0])])


def test_from_arrays_builds_flat_arrays_and_offsets():
    tr = _two()
    assert len(tr) == 2
    assert tr.t.dtype == np.float64 and tr.offsets.dtype == np.int64
    np.testing.assert_array_equal(tr.offsets, [0, 3, 5])
    np.testing.assert_array_equal(tr.n_points, [3, 2])
    t1, z1 = tr[1]
    np.testing.assert_array_equal(t1, [3.0, 4.0])
    np.testing.assert_array_equal(z1, [5.0, 6.0])
    assert isinstance(tr.keys, pd.RangeIndex) and tr.keys.name == "trace"
    assert "n_traces=2" in repr(tr)


def test_indexing_subsets_keep_keys_and_samples():
    tr = Traces.from_arrays([np.arange(n, dtype=float) for n in (2, 3, 4)], [np.full(n, n, float) for n in (2, 3, 4)], keys=["a", "b", "c"])
    sub = tr[[2, 0]]
    assert list(sub.keys) == ["c", "a"]
    np.testing.assert_array_equal(sub.n_points, [4, 2])
    np.testing.assert_array_equal(sub.z, [4, 4, 4, 4, 2, 2])
    np.testing.assert_array_equal(tr[1:].n_points, [3, 4])
    np.testing.assert_array_equal(tr[np.array([True, False, True])].n_points, [2, 4])
    np.testing.assert_array_equal(tr[-1][0], np.arange(4.0))
    with pytest.raises(IndexError):
        tr[3]


def test_from_frame_groups_sorts_and_round_trips():
    df = pd.DataFrame({
        "tool": ["T1"] * 5 + ["T2"] * 3,
        "wafer": [2, 1, 2, 1, 2, 7, 7, 7],
        "t": [1.0, 0.0, 0.0, 1.0, 2.0, 5.0, 3.0, 4.0],
        "value": [10.0, 1.0, 9.0, 2.0, 11.0, 30.0, 10.0, 20.0],
    })
    tr = Traces.from_frame(df, by=("tool", "wafer"))
    assert isinstance(tr.keys, pd.MultiIndex)
    assert list(tr.keys) == [("T1", 1), ("T1", 2), ("T2", 7)]
    np.testing.assert_array_equal(tr[1][0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(tr[1][1], [9.0, 10.0, 11.0])
    np.testing.assert_array_equal(tr[2][1], [10.0, 20.0, 30.0])
    back = Traces.from_frame(tr.to_frame(), by=["tool", "wafer"])
    np.testing.assert_array_equal(back.t, tr.t)
    np.testing.assert_array_equal(back.z, tr.z)
    assert back.keys.equals(tr.keys)
    single = Traces.from_frame(df[df.tool == "T1"], by="wafer")
    assert list(single.keys) == [1, 2] and single.keys.name == "wafer"


def test_unsorted_times_are_sorted_with_a_warning():
    with pytest.warns(UserWarning, match="1 trace"):
        tr = Traces.from_arrays([np.array([2.0, 0.0, 1.0])], [np.array([20.0, 0.0, 10.0])])
    np.testing.assert_array_equal(tr.t, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(tr.z, [0.0, 10.0, 20.0])
    with pytest.raises(ValueError, match="not sorted"):
        Traces(np.array([1.0, 0.0]), np.array([0.0, 0.0]), np.array([0, 2]))


def test_duplicated_times_raise_naming_the_trace():
    with pytest.raises(ValueError, match="duplicated time.*'b'"):
        Traces.from_arrays([np.arange(3.0), np.array([0.0, 1.0, 1.0])], [np.zeros(3), np.zeros(3)], keys=["a", "b"])


def test_nan_policy_raise_and_omit():
    times = [np.array([0.0, 1.0, np.nan, 3.0]), np.arange(3.0)]
    values = [np.array([1.0, np.inf, 2.0, 3.0]), np.zeros(3)]
    with pytest.raises(ValueError, match="NaN or infinite"):
        Traces.from_arrays(times, values)
    tr = Traces.from_arrays(times, values, nan_policy="omit")
    np.testing.assert_array_equal(tr.n_points, [2, 3])
    np.testing.assert_array_equal(tr[0][0], [0.0, 3.0])
    assert tr.nan_policy == "omit"
    # a trace left empty at the end is kept (and reported by the fit)
    tr = Traces.from_arrays([np.arange(3.0), np.array([np.nan])], [np.zeros(3), np.zeros(1)], nan_policy="omit")
    np.testing.assert_array_equal(tr.n_points, [3, 0])
    with pytest.raises(ValueError, match="nan_policy"):
        Traces.from_arrays(times, values, nan_policy="ignore")


@pytest.mark.parametrize(
    "times, values, match",
    [
        ([], [], "empty"),
        ([np.arange(3.0)], [np.arange(3.0), np.arange(2.0)], "same number"),
        ([np.arange(3.0)], [np.arange(2.0)], "3 entries"),
        ([np.zeros((2, 2))], [np.zeros((2, 2))], "1-D"),
    ],
)
def test_bad_input_raises_value_error(times, values, match):
    with pytest.raises(ValueError, match=match):
        Traces.from_arrays(times, values)


def test_bad_types_and_keys():
    with pytest.raises(TypeError, match="numeric"):
        Traces.from_arrays([np.array(["a", "b"])], [np.zeros(2)])
    with pytest.raises(ValueError, match="one label per trace"):
        Traces.from_arrays([np.arange(2.0)], [np.zeros(2)], keys=["a", "b"])
    with pytest.raises(TypeError, match="DataFrame"):
        Traces.from_frame({"t": [0.0]})
    with pytest.raises(ValueError, match="not found"):
        Traces.from_frame(pd.DataFrame({"t": [0.0], "value": [1.0]}), by="wafer")
    with pytest.raises(ValueError, match="missing values"):
        Traces.from_frame(pd.DataFrame({"t": [0.0], "value": [1.0], "wafer": [np.nan]}))


def test_short_traces_are_kept():
    tr = Traces.from_arrays([np.arange(2.0), np.arange(10.0)], [np.zeros(2), np.zeros(10)])
    np.testing.assert_array_equal(tr.n_points, [2, 10])


def test_greyanom_shape_is_an_alias_of_greyanom_traces():
    import greyanom.shape
    import greyanom.shape.control
    import greyanom.traces
    from greyanom.shape.traces import Traces as OldTraces

    assert OldTraces is Traces is greyanom.traces.Traces
    assert greyanom.shape.control is greyanom.traces.control
    assert greyanom.shape.__all__ == greyanom.traces.__all__
    for name in greyanom.traces.__all__:
        assert getattr(greyanom.shape, name) is getattr(greyanom.traces, name), name
