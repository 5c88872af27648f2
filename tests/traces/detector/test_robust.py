"""Issue 9 item 4: the time origin comes from the step, and a trace's units never break the fit."""

import warnings

import numpy as np
import pytest

from greyanom import ShapeSignatureDetector
from greyanom.datasets import make_pi_lots
from greyanom.traces import Traces, fit_traces

WAFERS = ["L02W00", "L02W01", "L02W02"]


@pytest.fixture(scope="module")
def lots():
    df = make_pi_lots(n_lots=3, wafers_per_lot=6, sensors=("v",), random_state=3)
    # make_pi_lots shifts each wafer's clock by up to 1: the step starts at its first sample
    df["t0"] = df.groupby("wafer")["t"].transform("min")
    return df


def _fit(data, **kw):
    return ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=2, n_jobs=1, **kw).fit(data)


def _drop_first(new, wafer, k):
    return new.drop(new[new["wafer"] == wafer].index[:k])


def _shifts(det, new):
    s0 = det.score(new)
    return np.array(
        [[det.score(_drop_first(new, w, k)).loc[("v", w)] - s0.loc[("v", w)] for k in (1, 2, 3)] for w in WAFERS]
    )


def test_start_time_column_makes_missing_first_samples_harmless(lots):
    new = lots[lots["lot"] == "L02"]
    robust = _shifts(_fit(lots, start_time="t0"), new)
    # dropping 1-3 first samples moves a score by about what a missing middle sample does
    assert np.abs(robust).max() < 2.5, robust
    # without the step's start the origin moves with the first sample: scores jump by hundreds
    first = _shifts(_fit(lots), new)
    assert first.min() > 100, first


def test_nominal_start_of_aligned_group(lots):
    aligned = lots.assign(t=lots["t"] - lots["t0"])  # every trace's clock starts at the step
    det = _fit(aligned)
    nm = det.normal_model_
    assert nm.loc["v", "t_start"] == 0.0 and np.isfinite(nm.loc["v", "t_tol"])
    shifts = _shifts(det, aligned[aligned["lot"] == "L02"])
    assert np.abs(shifts).max() < 2.5, shifts
    # the origin is the nominal start; the duration is measured from it
    a = det.analyse(_drop_first(aligned[aligned["lot"] == "L02"], "L02W00", 2)).traces
    assert a.loc[("v", "L02W00"), "origin"] == 0.0
    last = aligned[aligned["wafer"] == "L02W00"]["t"].max()
    assert a.loc[("v", "L02W00"), "duration"] == pytest.approx(last)


def test_unaligned_group_keeps_first_sample_origin(lots):
    nm = _fit(lots).normal_model_
    assert np.isnan(nm.loc["v", "t_tol"])  # clocks offset per wafer: no nominal start


def test_start_time_must_be_numeric(lots):
    with pytest.raises(TypeError, match="must be numeric"):
        _fit(lots.assign(t0="x"), start_time="t0")
    with pytest.raises(ValueError, match=r"no column\(s\) \['start'\]"):
        _fit(lots, start_time="start")


def _trace():
    t = np.linspace(0.0, 20.0, 150)
    noise = 0.01 * np.random.default_rng(0).standard_normal(150)
    return t, 2.0 * np.exp(-0.15 * t) * np.cos(1.2 * t - 0.4) + 0.05 * t + 1.0 + noise


@pytest.mark.parametrize("scale", [1e-100, 1e100, 1e154])
def test_fit_traces_is_unit_free(scale):
    t, z = _trace()
    ref = fit_traces(Traces.from_arrays([t], [z]))
    fit = fit_traces(Traces.from_arrays([t], [z * scale]))
    assert fit.success[0]
    units = np.array([1.0, scale, 1.0, scale, 1.0, scale])  # gamma R omega y phi c
    np.testing.assert_allclose(fit.params.to_numpy() / units, ref.params.to_numpy(), rtol=1e-9)


def test_fit_traces_out_of_range_is_a_status_not_nan_success():
    t, z = _trace()
    with pytest.warns(Warning, match="not fitted successfully"):
        fit = fit_traces(Traces.from_arrays([t, t], [z, z * 1e200]))
    assert fit.success.tolist() == [True, False]
    assert fit.status[1] == -3 and "floating-point" in fit.message[1]
    assert np.isnan(fit.params.to_numpy()[1]).all()
    assert (~fit.success | np.isfinite(fit.params.to_numpy()).all(axis=1)).all()


def test_detector_trace_scaled_by_1e200(lots):
    det = _fit(lots)
    new = lots[lots["lot"] == "L02"].copy()
    rows = new["wafer"] == "L02W00"
    new.loc[rows, "value"] *= 1e200
    with pytest.warns(UserWarning, match="out_of_range"):
        sig = det.signatures(new)
    row = sig.loc[("v", "L02W00")]
    assert row["status"] == "out_of_range" and np.isnan(row["score"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        wafer = det.score_wafers(new)
    assert np.isfinite(wafer).all()
    # an unfittable trace raises its wafer's score, never lowers it
    assert wafer["L02W00"] == wafer.max()


@pytest.fixture(scope="module")
def two_sensors():
    df = make_pi_lots(n_lots=3, wafers_per_lot=6, sensors=("v", "u"), random_state=3)
    df["t0"] = df.groupby("wafer")["t"].transform("min")
    return df


def _drop_first_v(new, wafer, k):
    return new.drop(new[(new["wafer"] == wafer) & (new["sensor"] == "v")].index[:k])


def _shifts_v(det, new):
    s0 = det.score(new)
    return np.array(
        [[det.score(_drop_first_v(new, w, k)).loc[("v", w)] - s0.loc[("v", w)] for k in (1, 2, 3)] for w in WAFERS]
    )


def test_wafer_clock_makes_missing_first_samples_harmless(two_sensors):
    # each wafer has its own clock: no nominal start in absolute time, but v and u start
    # together on the wafer's clock, so the wafer's other group gives the origin
    det = _fit(two_sensors)
    nm = det.normal_model_
    assert np.isnan(nm["t_tol"]).all()
    assert (nm["t_clock"] == 0.0).all() and (nm["t_offset"] == 0.0).all() and np.isfinite(nm["t_offset_tol"]).all()
    new = two_sensors[two_sensors["lot"] == "L02"]
    clock = _shifts_v(det, new)
    # as little as dropping samples elsewhere moves it (3 samples fewer in the fit term);
    # with the first sample as origin these shifts were 145 to 19,700
    assert np.abs(clock).max() < 4.0, clock
    # the same origins as a start_time column: the same scores
    column = _shifts_v(_fit(two_sensors, start_time="t0"), new)
    np.testing.assert_allclose(clock, column, atol=1e-6)
    a = det.analyse(_drop_first_v(new, "L02W00", 3)).traces
    t0 = new.loc[new["wafer"] == "L02W00", "t0"].iloc[0]
    assert a.loc[("v", "L02W00"), "origin"] == t0 and a.loc[("u", "L02W00"), "origin"] == t0


def test_start_time_column_and_single_group_have_no_wafer_clock(two_sensors, lots):
    nm = _fit(two_sensors, start_time="t0").normal_model_
    cols = ["t_clock", "t_offset", "t_offset_tol"]
    assert np.isnan(nm[cols].to_numpy()).all()
    nm = _fit(lots).normal_model_  # one group per wafer: nothing to tell a late trace from a late clock
    assert np.isnan(nm[cols].to_numpy()).all()
    assert list(nm.columns[nm.columns.get_loc("t_tol") + 1 :][:3]) == cols


def test_wafer_clock_rules():
    from greyanom.traces._scoring import clock_offsets, clock_origins, wafer_clock

    # lower median: with two votes the earlier wins, with three a late minority cannot move it
    assert wafer_clock([5.0, 7.0, 1.0, 1.5, 9.0], [0, 0, 1, 1, 1], np.zeros(5), 2).tolist() == [5.0, 1.5]
    assert np.isnan(wafer_clock([5.0], [0], [0.0], 1)).all()  # one vote: no clock
    # groups 0 and 1 start together (+0, +2 on each wafer's clock), group 2 anywhere,
    # groups 3 and 4 together on a clock of their own (a later step of variable start)
    rng = np.random.default_rng(0)
    clocks, later = rng.uniform(0, 10, 20), rng.uniform(20, 40, 20)
    first = np.concatenate([clocks, clocks + 2.0, rng.uniform(0, 30, 20), later, later + 0.5])
    group = np.repeat([0, 1, 2, 3, 4], 20)
    wafer = np.tile(np.arange(20), 5)
    clock, offset, tol = clock_offsets(first, np.full(100, 0.1), wafer, group, 5)
    np.testing.assert_array_equal(clock, [0, 0, np.nan, 1, 1])
    np.testing.assert_allclose(offset, [0.0, 2.0, np.nan, 0.0, 0.5])
    assert np.isnan(tol[2]) and (tol[[0, 1, 3, 4]] > 0).all()
    # only one group stable: no clock at all
    keep = np.isin(group, [0, 2])
    assert np.isnan(clock_offsets(first[keep], np.full(40, 0.1), wafer[keep], group[keep], 5)[0]).all()
    # origins: a trace missing its first samples keeps its set's clock; one far too early does not
    o = clock_origins([0.0, 2.9, 1.0, 3.0, 1.0 - 5.0], [10.0] * 5, [0, 0, 1, 1, 1], [0, 0, 0, 0, 0],
                      [0.0, 2.0, 0.0, 2.0, 2.0], [0.8] * 5, np.array([True, True, True, True, False]))
    assert o[:4].tolist() == [0.0, 2.0, 1.0, 3.0] and np.isnan(o[4])
    # no set: first sample
    assert np.isnan(clock_origins([1.0], [2.0], [0], [np.nan], [np.nan], [np.nan], [True])).all()
