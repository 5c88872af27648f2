"""Measure ShapeSignatureDetector: simulated PI-loop faults and the LAM 9600 etch data.

Usage::

    PYTHONPATH=src python benchmarks/shape_detector_report.py [--data ../shared/data] [--rst DIR]

(a) Simulated lots (``make_pi_lots``) with injected faults: AUROC of each fault type against
    held-out normal wafers, and how often the largest term of ``explain`` names a parameter the
    fault acts on (``PI_FAULTS``).
(b) LAM 9600 metal etch (Wise et al. 1999), when the data is present: fit on the first half of
    the normal wafers of every experiment, score the other normal wafers and the 21 fault
    wafers; AUROC and detections at the 95 % / 99 % limits of the held-out normal scores, beside
    multiway PCA (sklearn PCA on time-aligned, unfolded traces; Q and T^2) computed here too.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from greyanom import ShapeSignatureDetector
from greyanom.datasets import PI_FAULTS, load_lam9600, make_pi_lots

TERMS = ["fit", "gamma", "R", "omega", "y", "phi", "c"]


def simulated(random_state=0, n_per_fault=6, lot_prior="em", fault_scale=1.0):
    """AUROC per fault type and how often the top explain term is a targeted parameter."""
    df = make_pi_lots(
        n_lots=12, wafers_per_lot=10, faults={f: n_per_fault for f in PI_FAULTS}, n_clean_lots=4,
        fault_scale=fault_scale, random_state=random_state,
    )
    t0 = time.perf_counter()
    det = ShapeSignatureDetector(n_initial_lots=4, lot_prior=lot_prior).fit(df)
    ex = det.explain(df)
    seconds = time.perf_counter() - t0
    fault = df.groupby("wafer", sort=False)["fault"].first().reindex(ex.index)
    held = ex[fault.isna().to_numpy() & ~ex.index.isin(det.train_scores_.index)]
    rows = []
    for f, (change, targets) in PI_FAULTS.items():
        sub = ex[(fault == f).to_numpy()]
        y = np.r_[np.zeros(len(held)), np.ones(len(sub))]
        auroc = roc_auc_score(y, np.r_[held["score"], sub["score"]])
        top = sub[TERMS].idxmax(axis=1)
        named = float(np.mean(top.isin(targets))) if targets else np.nan
        rows.append({
            "fault": f, "size": fault_scale, "change": change if fault_scale == 1.0 else f"{fault_scale:g} x that", "n": len(sub), "AUROC": auroc,
            "targets": ", ".join(targets) if targets else "(none)",
            "top term right": named, "top terms": ", ".join(f"{k} {v}" for k, v in top.value_counts().items()),
        })
    table = pd.DataFrame(rows)
    info = {"held-out normal": len(held), "seconds": seconds,
            "held-out normal score mean": float(held["score"].mean()),
            "train score mean": float(det.train_scores_.mean())}
    return table, info


def _lam_split(df):
    wafers = df.drop_duplicates("wafer")[["wafer", "experiment", "fault"]]
    normal = wafers[wafers["fault"].isna()]
    train = set()
    for _, g in normal.groupby("experiment"):
        train |= set(g["wafer"].iloc[: len(g) // 2])
    return train, wafers


def _mpca_matrix(df, n_grid=40):
    """Time-aligned, unfolded traces: per (step, sensor) each trace interpolated to n_grid points."""
    out = {}
    for (w, step, sensor), g in df.groupby(["wafer", "step", "sensor"], sort=False):
        t = g["t"].to_numpy()
        u = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        grid = np.linspace(0.0, 1.0, n_grid)
        out.setdefault(w, {})[(step, sensor)] = np.interp(grid, u, g["value"].to_numpy())
    keys = sorted(next(iter(out.values())).keys())
    wafers = list(out)
    X = np.array([np.concatenate([out[w].get(k, np.full(n_grid, np.nan)) for k in keys]) for w in wafers])
    return pd.DataFrame(X, index=wafers)


def mpca_scores(df, train, n_components=4):
    X = _mpca_matrix(df)
    Xtr = X.loc[[w for w in X.index if w in train]]
    mean, sd = Xtr.mean(), Xtr.std().replace(0.0, 1.0).fillna(1.0)
    Z = ((X - mean) / sd).fillna(0.0)
    pca = PCA(n_components=n_components).fit(Z.loc[Xtr.index])
    T = pca.transform(Z)
    Q = ((Z.to_numpy() - pca.inverse_transform(T)) ** 2).sum(axis=1)
    T2 = (T**2 / pca.explained_variance_).sum(axis=1)
    return pd.DataFrame({"Q": Q, "T2": T2}, index=X.index)


def _limits_table(scores, normal_idx, fault_idx):
    rows = []
    for name, s in scores.items():
        ref = s.loc[normal_idx]
        y = np.r_[np.zeros(len(normal_idx)), np.ones(len(fault_idx))]
        row = {"method": name, "AUROC": roc_auc_score(y, np.r_[ref, s.loc[fault_idx]])}
        for q in (0.95, 0.99):
            lim = np.quantile(ref, q)
            row[f"detected at {int(q * 100)}% limit"] = f"{int((s.loc[fault_idx] > lim).sum())} / {len(fault_idx)}"
        rows.append(row)
    return pd.DataFrame(rows)


def lam9600(path, lot_prior="em"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        df = load_lam9600(path)
    train, wafers = _lam_split(df)
    test_wafers = [w for w in wafers["wafer"] if w not in train]
    fault = wafers.set_index("wafer")["fault"]
    normal_idx = [w for w in test_wafers if fault[w] is None]
    fault_idx = [w for w in test_wafers if fault[w] is not None]
    det = ShapeSignatureDetector(
        group_keys=("sensor", "step"), trace_keys=("wafer",), lot_key="experiment", lot_prior=lot_prior
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det.fit(df[df["wafer"].isin(train)])
        fit_s = time.perf_counter() - t0
        test = df[df["wafer"].isin(test_wafers)]
        ex = det.explain(test)
    seconds = time.perf_counter() - t0
    tk = ex.groupby(level="wafer", sort=False)
    wafer_score = tk["score"].sum()
    status = ex["status"].value_counts().to_dict()
    # robust per-group standardisation of the trace scores by the training scores
    mp = mpca_scores(df, train)
    scores = {
        "ShapeSignatureDetector (sum of trace scores)": wafer_score,
        "multiway PCA, Q (SPE)": mp["Q"],
        "multiway PCA, T^2": mp["T2"],
    }
    table = _limits_table(scores, normal_idx, fault_idx)
    # which parameters explain each fault wafer: the largest group terms
    lim99 = np.quantile(wafer_score.loc[normal_idx], 0.99)
    lim95 = np.quantile(wafer_score.loc[normal_idx], 0.95)
    rows = []
    for w in fault_idx:
        e = ex.xs(w, level="wafer")
        flat = e[TERMS].stack().sort_values(ascending=False)
        top = [f"{s}/{st} {p} {v:.0f}" for (s, st, p), v in flat.head(3).items()]
        rows.append({"wafer": w, "fault": fault[w], "score": wafer_score[w],
                     "detected": "99%" if wafer_score[w] > lim99 else ("95%" if wafer_score[w] > lim95 else "no"),
                     "MPCA Q detected": "99%" if mp["Q"][w] > np.quantile(mp["Q"].loc[normal_idx], 0.99) else (
                         "95%" if mp["Q"][w] > np.quantile(mp["Q"].loc[normal_idx], 0.95) else "no"),
                     "largest terms (sensor/step parameter value)": "; ".join(top)})
    per_fault = pd.DataFrame(rows)
    info = {"train wafers": len(train), "held-out normal": len(normal_idx), "fault wafers": len(fault_idx),
            "fit seconds": fit_s, "total seconds": seconds, "statuses": status,
            "traces scored": int(len(ex))}
    return table, per_fault, info


def _rst(df, floatfmt=".3f"):
    cols = list(df.columns)
    def cell(v):
        if isinstance(v, float):
            return "n/a" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    body = [[cell(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(str(c)), *(len(r[i]) for r in body)) for i, c in enumerate(cols)]
    line = "  ".join("=" * w for w in widths)
    out = [line, "  ".join(str(c).ljust(w) for c, w in zip(cols, widths)).rstrip(), line]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in body]
    out.append(line)
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--rst", default=None, help="folder to write the tables as .rst")
    parser.add_argument("--lot-prior", default="em", choices=["em", "mean", "normal"])
    parser.add_argument("--skip-sim", action="store_true")
    args = parser.parse_args(argv)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 120)
    tables = {}
    if not args.skip_sim:
        sims = []
        for scale in (1.0, 0.25):
            sim, info = simulated(lot_prior=args.lot_prior, fault_scale=scale)
            print(f"(a) simulated PI-loop lots with injected faults, fault_scale={scale}", info)
            print(sim.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            sims.append(sim)
        tables["shape_detector_sim"] = pd.concat(sims, ignore_index=True).drop(columns=["targets"])
    path = Path(args.data) / "wise_etch_lam9600"
    if (path / "MACHINE_Data.mat").exists():
        lam, per_fault, info = lam9600(path, lot_prior=args.lot_prior)
        print("\n(b) LAM 9600 metal etch", info)
        print(lam.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(per_fault.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        tables["shape_detector_lam"] = lam
        tables["shape_detector_lam_faults"] = per_fault.assign(score=per_fault["score"].map(lambda v: f"{v:.0f}"))
    else:
        print(f"\n(b) skipped: {path} not found")
    if args.rst:
        out = Path(args.rst)
        out.mkdir(parents=True, exist_ok=True)
        for name, t in tables.items():
            (out / f"{name}.rst").write_text(_rst(t))


if __name__ == "__main__":
    main()
