"""Wafer-level detection on LAM 9600 and simulated PI-loop faults (issues 9, 19), all in one run.

Usage::

    PYTHONPATH=src python benchmarks/shape_wafer_report.py [--data ../shared/data] [--rst DIR] [--splits 5]
    PYTHONPATH=src python benchmarks/shape_wafer_report.py --seeds 100-119 --skip-sim --skip-speed  # development

(a) LAM 9600 metal etch (Wise et al. 1999), 5 random splits: each fits on 75 % of the 107
    normal wafers (random, seeded by the split number) and scores the other normal wafers and
    the 21 fault wafers with

    * ``ShapeSignatureDetector`` at the wafer level (``score_wafers``: signature features
      through the shared wafer model, Q plus the max-type level term), with the wafers' run
      order (``order_key="run"``, the wafer number in its experiment: drifting features
      centred on run-order neighbours),
    * ``MultiwayPCADetector`` (resampled raw traces, same wafer model, Q),
    * the max|z| baseline of issue 19: per wafer, the mean and standard deviation of every
      (step, sensor) trace, standardised by the per-experiment mean and sd of the training
      normals; the score is the largest |z|,
    * and both baselines given the run order too (``MultiwayPCADetector(order_key="run")``;
      max|z| with each drifting statistic centred on its run-order neighbours, chosen by the
      wafer model's rule), so that the comparison does not credit our detector with
      information the baselines were denied,

    Every alarm is at a 99 % out-of-fold limit, estimated two ways from the same out-of-fold
    training scores (the wafer detectors' cross-fitted ``wafer_heldout_scores_``; max|z|'s
    5-fold out-of-fold scores on the same lot-stratified folds): the library's limit
    (``wafer_limit``: the 99 % quantile of a lognormal fitted to them, what
    ``contamination=0.01`` gives ``wafer_threshold_``) and the issue's plain 99th percentile.
    (The old trace-sum score has left this table: an out-of-fold limit for it costs five more
    shape fits per split; it stays in (b).) AUROC, faults above each limit and false alarms on
    held-out normal wafers, averaged over the splits.
    Per fault: in how many splits each method flags it and, for the first split, which
    (sensor, step, feature) explains the shape detector's score (and the largest per-trace
    term of that trace) and which (step, sensor) the multiway PCA's.
    Development: choose variants on seeds 100-119 (``--seeds``), report seeds 0-4 once.
(b) Simulated PI-loop lots with all eight fault types (truncated step included): wafer-level
    AUROC of each type against held-out normal wafers.
(c) Speed: ``score_wafers`` of all 128 LAM wafers (on the frame, and as a view of an analysis)
    and the per-trace ``analyse`` (lot EM) beside ``fit_traces`` on the same 4,864 traces (one
    plain fit without prior), in the same run; the median of 5 timings each.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from greyanom import MultiwayPCADetector, ShapeSignatureDetector
from greyanom._crossfit import make_folds
from greyanom.base import threshold_from_scores
from greyanom.datasets import PI_FAULTS, load_lam9600, make_pi_lots
from greyanom.shape import Traces, fit_traces
from greyanom.traces import _wafer_model as wm
from greyanom.traces._wafer_scorer import wafer_limit
from shape_detector_report import _rst  # the sibling script's rst table writer (same folder)

TERMS = ["fit", "gamma", "R", "omega", "y", "phi", "c"]
LIMIT = 0.01  # alarms at the 99 % out-of-fold limit


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():  # the benchmark reports statuses itself
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def _top(explain_row, groups):
    g = explain_row[groups].astype(float).idxmax()
    return g


def _trace_stats(df):
    """Mean and sd of every (step, sensor) trace, one row per wafer (the max|z| features)."""
    return df.groupby(["wafer", "step", "sensor"])["value"].agg(["mean", "std"]).unstack(["step", "sensor"])


def _maxz_scores(A, lots_a, B, lots_b, order_a=None, order_b=None, n_neighbours=6):
    """Largest |z| of rows ``B`` under the per-experiment mean and sd of rows ``A``.

    With the run order (``order_a``, ``order_b``) the baseline gets what the wafer model's
    ``order_key`` gets: a statistic that drifts within an experiment (chosen on ``A`` by the
    wafer model's rule) is centred on the median of the ``n_neighbours`` rows of ``A`` of the
    experiment nearest in run order, and scaled by the sd of the rows of ``A`` about their own
    neighbours (each left out).
    """
    Z = np.full_like(B, np.nan)
    for lot in np.unique(lots_b):
        a, b = lots_a == lot, lots_b == lot
        mu = np.nanmean(A[a], axis=0)
        sd = np.nanstd(A[a], axis=0, ddof=1)
        Z[b] = (B[b] - mu) / np.where(sd > 0, sd, np.inf)  # a constant statistic cannot alarm
    if order_a is not None:
        filled = np.where(np.isfinite(A), A, np.nanmedian(A, axis=0))
        local, centres, has = wm._local_features(filled, lots_a, order_a, n_neighbours)
        cols = np.flatnonzero(local)
        nb, has_b = wm.neighbour_centres(filled[:, cols], lots_a, order_a, lots_b, order_b, n_neighbours)
        for lot in np.unique(lots_b):
            a, b = has & (lots_a == lot), has_b & (lots_b == lot)
            if a.sum() < 3:
                continue
            sd = np.std(A[a][:, cols] - centres[a][:, cols], axis=0, ddof=1)
            Z[np.ix_(np.flatnonzero(b), cols)] = (B[b][:, cols] - nb[b]) / np.where(sd > 0, sd, np.inf)
    return np.nanmax(np.abs(Z), axis=1)


def maxz_baseline(stats, lots, train, test, folds, order=None):
    """max|z| scores of ``test`` and its 5-fold out-of-fold training scores (to set the limit from).

    ``order``: each wafer's run order (a Series), for the baseline with the run order.
    """
    A = stats.reindex(train).to_numpy(dtype=np.float64)
    la = lots.reindex(train).to_numpy()
    oa = None if order is None else order.reindex(train).to_numpy(dtype=np.float64)
    ob = None if order is None else order.reindex(test).to_numpy(dtype=np.float64)
    oof = np.empty(len(train))
    for k in np.unique(folds):
        f = folds == k
        oof[f] = _maxz_scores(A[~f], la[~f], A[f], la[f], *((None, None) if oa is None else (oa[~f], oa[f])))
    s = _maxz_scores(A, la, stats.reindex(test).to_numpy(dtype=np.float64), lots.reindex(test).to_numpy(), oa, ob)
    return pd.Series(s, index=test), oof


def lam(path, seeds=range(5)):
    df = _quiet(load_lam9600, path)
    wafers = df.drop_duplicates("wafer").set_index("wafer")[["experiment", "run", "fault"]]
    normal = wafers.index[wafers["fault"].isna()]
    stats = _trace_stats(df)
    lots = wafers["experiment"].astype(str)
    rows, flags, per_fault = [], [], []
    seeds = list(seeds)
    for split in seeds:
        rng = np.random.default_rng(split)
        train = set(rng.choice(normal, int(0.75 * len(normal)), replace=False))
        tr, te = df[df["wafer"].isin(train)], df[~df["wafer"].isin(train)]
        shape = ShapeSignatureDetector(
            group_keys=("sensor", "step"), lot_key="experiment", order_key="run", contamination=LIMIT,
            random_state=split,
        )
        t0 = time.perf_counter()
        _quiet(shape.fit, tr)
        a = _quiet(shape.analyse, te)
        s_shape = shape.score_wafers(a)
        t_shape = time.perf_counter() - t0
        mpca = MultiwayPCADetector(lot_key="experiment", contamination=LIMIT, random_state=split)
        t0 = time.perf_counter()
        mpca.fit(tr)
        s_mpca = mpca.score_wafers(te)
        t_mpca = time.perf_counter() - t0
        mpca_run = MultiwayPCADetector(lot_key="experiment", order_key="run", contamination=LIMIT, random_state=split)
        t0 = time.perf_counter()
        s_mpca_run = mpca_run.fit(tr).score_wafers(te)
        t_mpca_run = time.perf_counter() - t0
        # the baselines' out-of-fold limits use the wafer model's folds (lot-stratified, same seed)
        tr_wafers = pd.Index(sorted(train), name="wafer")
        folds = make_folds(len(tr_wafers), 5, split, groups=lots.reindex(tr_wafers).to_numpy())
        t0 = time.perf_counter()
        s_maxz, oof_maxz = maxz_baseline(stats, lots, tr_wafers, s_shape.index, folds)
        t_maxz = time.perf_counter() - t0
        t0 = time.perf_counter()
        s_maxz_run, oof_maxz_run = maxz_baseline(stats, lots, tr_wafers, s_shape.index, folds, order=wafers["run"])
        t_maxz_run = time.perf_counter() - t0
        y = wafers["fault"].reindex(s_shape.index).notna().to_numpy()
        for name, s, oof, sec in (
            ("ShapeSignatureDetector (wafer level)", s_shape, shape.wafer_heldout_scores_, t_shape),
            ("MultiwayPCADetector", s_mpca.reindex(s_shape.index), mpca.wafer_heldout_scores_, t_mpca),
            ("max abs z of trace means, sds", s_maxz.reindex(s_shape.index), oof_maxz, t_maxz),
            ("MultiwayPCADetector, run order", s_mpca_run.reindex(s_shape.index), mpca_run.wafer_heldout_scores_,
             t_mpca_run),
            ("max abs z, run order", s_maxz_run.reindex(s_shape.index), oof_maxz_run, t_maxz_run),
        ):
            v = s.to_numpy()
            oof = np.asarray(oof, dtype=np.float64)
            lim = wafer_limit(oof, LIMIT)
            p99 = float(threshold_from_scores(oof, LIMIT))
            rows.append({
                "split": split, "method": name, "AUROC": roc_auc_score(y, v),
                "faults flagged": int((v[y] > lim).sum()), "false alarms": float((v[~y] > lim).mean()),
                "flagged (p99)": int((v[y] > p99).sum()), "false alarms (p99)": float((v[~y] > p99).mean()),
                "seconds (fit + score)": sec,
            })
            flags.append(pd.Series(v[y] > lim, index=s_shape.index[y], name=(split, name)))
        assert shape.wafer_threshold_ == wafer_limit(shape.wafer_heldout_scores_, LIMIT)
        if split == seeds[0]:
            es = shape.explain_wafers(a)
            em = mpca.explain_wafers(te)
            ex = shape.explain(a)
            feat = shape.explain_wafer_features(a)
            gs = [c for c in es.columns if c not in ("score", "status")]
            gm = [c for c in em.columns if c not in ("score", "status")]
            for w in s_shape.index[y]:
                g = _top(es.loc[w], gs)
                f = feat.loc[w][g].astype(float).idxmax() if isinstance(g, tuple) else ""
                trace_row = ex.loc[(*g, w)] if isinstance(g, tuple) and (*g, w) in ex.index else None
                term = trace_row[TERMS].astype(float).idxmax() if trace_row is not None and trace_row[TERMS].notna().all() else "-"
                gm_top = _top(em.loc[w], gm)
                per_fault.append({
                    "wafer": w, "fault": wafers.loc[w, "fault"],
                    "shape: (sensor, step) / feature / trace term": f"{g[0]} / {g[1]} / {f} / {term}",
                    "MPCA: (step, sensor)": f"{gm_top[0]} / {gm_top[1]}",
                })
        print(pd.DataFrame(rows[-5:]).to_string(index=False), flush=True)
    res = pd.DataFrame(rows)
    summary = res.groupby("method", sort=False).agg(
        AUROC=("AUROC", "mean"), AUROC_min=("AUROC", "min"), faults_flagged=("faults flagged", "mean"),
        false_alarms=("false alarms", "mean"), flagged_p99=("flagged (p99)", "mean"),
        false_alarms_p99=("false alarms (p99)", "mean"), seconds=("seconds (fit + score)", "mean"),
    ).reset_index()
    for col in ("faults_flagged", "flagged_p99"):
        summary[col] = summary[col].map(lambda v: f"{v:.2f} / 21")
    for col in ("false_alarms", "false_alarms_p99"):
        summary[col] = summary[col].map(lambda v: f"{100 * v:.1f} %")
    n_split = len(seeds)
    flagged = pd.concat(flags, axis=1)
    short = {"ShapeSignatureDetector (wafer level)": "shape", "MultiwayPCADetector": "MPCA",
             "max abs z of trace means, sds": "max z", "MultiwayPCADetector, run order": "MPCA run",
             "max abs z, run order": "max z run"}
    counts = pd.DataFrame({
        f"{short[m]} flagged": flagged.loc[:, [c for c in flagged.columns if c[1] == m]].sum(axis=1).map(
            lambda v: f"{int(v)} / {n_split}")
        for m in short
    })
    faults = pd.DataFrame(per_fault).set_index("wafer") if per_fault else pd.DataFrame(index=counts.index)
    per_fault = pd.concat([faults.iloc[:, :1], counts.reindex(faults.index), faults.iloc[:, 1:]], axis=1).reset_index()
    return summary, per_fault, df


def simulated(random_state=0, n_per_fault=6):
    df = make_pi_lots(
        n_lots=12, wafers_per_lot=10, faults={f: n_per_fault for f in PI_FAULTS}, n_clean_lots=4,
        random_state=random_state,
    )
    det = ShapeSignatureDetector(n_initial_lots=4, random_state=random_state)
    _quiet(det.fit, df)
    a = _quiet(det.analyse, df)
    s = det.score_wafers(a)
    old = det.score(a).groupby(level="wafer", sort=False).sum().reindex(s.index)
    fault = df.groupby("wafer", sort=False)["fault"].first().reindex(s.index)
    train = set(det.wafer_heldout_scores_.index)
    held = fault.isna().to_numpy() & ~s.index.isin(train)
    rows = []
    for f in PI_FAULTS:
        sub = (fault == f).to_numpy()
        y = np.r_[np.zeros(held.sum()), np.ones(sub.sum())]
        rows.append({
            "fault": f, "n": int(sub.sum()),
            "wafer-level AUROC": roc_auc_score(y, np.r_[s[held], s[sub]]),
            "trace-sum AUROC": roc_auc_score(y, np.r_[old[held], old[sub]]),
            "flagged": f"{int((s[sub] > det.wafer_threshold_).sum())} / {int(sub.sum())}",
        })
    info = {"held-out normal wafers": int(held.sum()),
            "false alarms": float((s[held] > det.wafer_threshold_).mean())}
    return pd.DataFrame(rows), info


def _median_time(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _quiet(fn)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def speed(df, repeat=5):
    """Median of ``repeat`` timings each (the machine's noise is large against one run)."""
    normal = df[df["fault"].isna()]
    det = ShapeSignatureDetector(group_keys=("sensor", "step"), lot_key="experiment", order_key="run", random_state=0)
    _quiet(det.fit, normal)
    traces = Traces.from_frame(df, by=("sensor", "step", "wafer"))
    _quiet(fit_traces, traces)  # JIT warm-up outside the timers
    _quiet(det.score_wafers, df.head(2000))
    _quiet(det.analyse, df.head(2000))
    t_fit = _median_time(lambda: fit_traces(traces), repeat)
    t_wafers = _median_time(lambda: det.score_wafers(df), repeat)
    t_analyse = _median_time(lambda: det.analyse(df), repeat)
    a = _quiet(det.analyse, df)
    t_view = _median_time(lambda: det.score_wafers(a), repeat)
    rows = [
        (f"fit_traces, {len(traces)} traces (no prior)", t_fit),
        ("score_wafers(frame), 128 wafers (normal-prior fits, no lot EM)", t_wafers),
        ("analyse(frame), 128 wafers (lot_prior='em' refits, default)", t_analyse),
        ("score_wafers(analysis), 128 wafers (a view)", t_view),
    ]
    return pd.DataFrame([{"what": w, "seconds": t, "ratio to fit_traces": t / t_fit} for w, t in rows])


def _seeds(text):
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def _seed_text(seeds):
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--rst", default=None, help="folder to write the tables as .rst")
    parser.add_argument("--splits", type=int, default=5, help="splits seeded 0 .. splits-1 (the standard protocol)")
    parser.add_argument(
        "--seeds", default=None,
        help="split seeds instead, e.g. '100-119' or '3,7' (development: choose variants on seeds "
        "other than 0-4, report 0-4 once)",
    )
    parser.add_argument("--skip-sim", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--speed-only", action="store_true", help="only (c)")
    args = parser.parse_args(argv)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_colwidth", 80)
    tables = {}
    path = Path(args.data) / "wise_etch_lam9600"
    if (path / "MACHINE_Data.mat").exists() and args.speed_only:
        sp = speed(_quiet(load_lam9600, path))
        print(sp.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        tables["shape_wafer_speed"] = sp
        args.skip_sim = True
    elif (path / "MACHINE_Data.mat").exists():
        seeds = _seeds(args.seeds) if args.seeds else range(args.splits)
        summary, per_fault, df = lam(path, seeds)
        print(f"\n(a) LAM 9600, {len(seeds)} splits (seeds {_seed_text(seeds)}), alarms at the 99 % out-of-fold limit "
              "(lognormal fit: faults_flagged, false_alarms; plain 99th percentile: *_p99)")
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(per_fault.to_string(index=False))
        tables["shape_wafer_lam"] = summary
        tables["shape_wafer_lam_faults"] = per_fault
        if not args.skip_speed:
            sp = speed(df)
            print("\n(c) speed (2 shared cores)")
            print(sp.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
            tables["shape_wafer_speed"] = sp
    else:
        print(f"(a) skipped: {path} not found")
    if not args.skip_sim:
        sim, info = simulated()
        print("\n(b) simulated PI-loop faults", info)
        print(sim.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        tables["shape_wafer_sim"] = sim
    if args.rst:
        out = Path(args.rst)
        out.mkdir(parents=True, exist_ok=True)
        for name, t in tables.items():
            (out / f"{name}.rst").write_text(_rst(t))


if __name__ == "__main__":
    main()
