"""load_lam9600 (real data, skipped without ../shared), make_pi_lots and the trace plots."""

import numpy as np
import pandas as pd
import pytest
from conftest import shared_data

from greyanom import ShapeSignatureDetector
from greyanom.datasets import PI_FAULTS, load_lam9600, make_pi_lots


@pytest.mark.data
def test_load_lam9600():
    path = shared_data("wise_etch_lam9600")
    with pytest.warns(UserWarning, match="l3125"), pytest.warns(UserWarning, match="whose Time goes back"):
        df = load_lam9600(path)
    assert list(df.columns) == ["wafer", "experiment", "run", "fault", "step", "sensor", "t", "value"]
    wafers = df.drop_duplicates("wafer")
    assert len(wafers) == 128 and "l3125" not in set(wafers["wafer"])
    assert wafers["fault"].notna().sum() == 21 and wafers["fault"].isna().sum() == 107
    assert set(df["step"]) == {4, 5} and df["sensor"].nunique() == 19
    assert set(df["experiment"]) == {29, 31, 33}
    assert wafers.set_index("wafer").loc["l2915", "fault"] == "TCP +50"
    assert list(wafers["wafer"]) == sorted(wafers["wafer"])
    # run: the wafer's number in its experiment, every number 1-43 once (normal and faulty together)
    assert (wafers["run"] == wafers["wafer"].str[3:5].astype(int)).all()
    assert all(sorted(g) == list(range(1, 44)) for _, g in full_runs(path).groupby("experiment")["run"])
    assert np.isfinite(df["value"]).all()
    assert not df.duplicated(["wafer", "step", "sensor", "t"]).any()
    with pytest.warns(UserWarning, match="Time goes back"):
        full = load_lam9600(path / "MACHINE_Data.mat", drop=False)
    assert full["wafer"].nunique() == 129
    with pytest.raises(FileNotFoundError, match="MACHINE_Data.mat"):
        load_lam9600(path / "nope")


def full_runs(path):
    with pytest.warns(UserWarning):
        return load_lam9600(path, drop=False).drop_duplicates("wafer")


def test_make_pi_lots():
    a = make_pi_lots(n_lots=3, wafers_per_lot=4, faults={"outliers": 2, "truncated": 1}, n_clean_lots=1,
                     random_state=7)
    b = make_pi_lots(n_lots=3, wafers_per_lot=4, faults={"outliers": 2, "truncated": 1}, n_clean_lots=1,
                     random_state=7)
    pd.testing.assert_frame_equal(a, b)
    per_wafer = a.groupby("wafer")["fault"].first()
    assert per_wafer.value_counts().to_dict() == {"outliers": 2, "truncated": 1}
    assert per_wafer[per_wafer.index.str.startswith("L00")].isna().all()
    span = a.groupby("wafer")["t"].agg(lambda t: t.max() - t.min())
    assert span[per_wafer == "truncated"].iloc[0] < 0.5 * span[per_wafer.isna()].min()
    with pytest.raises(ValueError, match="unknown fault"):
        make_pi_lots(faults=["meteor"])
    with pytest.raises(ValueError, match="faulty wafers requested"):
        make_pi_lots(n_lots=2, wafers_per_lot=2, n_clean_lots=2, faults=["outliers"])
    assert set(PI_FAULTS) >= {"controller_gain", "process_gain", "time_constant", "setpoint_offset",
                              "setpoint_slope", "noise_burst", "outliers", "truncated"}


def test_setpoint_slope_is_the_fitted_c():
    # notes, section 1: for the controlled variable the fitted slope is the set-point slope q1
    df = make_pi_lots(n_lots=2, wafers_per_lot=4, n_points=150, noise_sd=1e-4, random_state=1)
    det = ShapeSignatureDetector(n_jobs=1).fit(df)
    sig = det.signatures(df)
    np.testing.assert_allclose(sig["c"], 0.01, atol=5e-4)


def test_plots(tmp_path):
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    from greyanom.plotting import plot_score_series, plot_signature_heatmap, plot_trace_fits

    df = make_pi_lots(n_lots=3, wafers_per_lot=4, faults=["setpoint_offset"], n_clean_lots=2, random_state=2)
    det = ShapeSignatureDetector(n_initial_lots=2, n_jobs=1).fit(df)
    sig = det.signatures(df)
    ax = plot_signature_heatmap(det, signatures=sig)
    assert len(ax.get_yticklabels()) == 8
    ax = plot_trace_fits(det, df, ["L00W00", "L02W01"], signatures=sig)
    assert len(ax.get_lines()) == 5
    ax = plot_score_series(det.score(df), reference=det.train_scores_, labels=sig["score"] > 1e9)
    assert len(ax.get_lines()) == 5
    ax.figure.savefig(tmp_path / "s.png")
    plt.close("all")
