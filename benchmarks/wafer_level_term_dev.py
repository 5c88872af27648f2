"""How the shape detector's level term was chosen (issue 19): the residual off the subspace.

Development splits of LAM 9600 only (seeds 100-119 by default; never the evaluation seeds 0-4),
on the per-split cache of ``benchmarks/wafer_limit_dev.py`` (the same ``--cache`` folder: the
shape fits are made once, and every variant here only refits the wafer model), and small
simulated PI-loop lots, which no choice was tuned on.

Usage::

    PYTHONPATH=src python benchmarks/wafer_level_term_dev.py --cache /tmp/wafer-limit-dev
    PYTHONPATH=src python benchmarks/wafer_level_term_dev.py --cache /tmp/wafer-limit-dev --skip-sim
    PYTHONPATH=src python benchmarks/wafer_level_term_dev.py --cache /tmp/wafer-limit-dev --fresh 200-299
    PYTHONPATH=src python benchmarks/wafer_level_term_dev.py --cache /tmp/wafer-limit-dev --seeds 100-160 --repeats 5

Printed:

1. LAM 9600, every variant of the wafer model's level term (means over the splits, alarms at
   the library's 99 % limit, ``wafer_limit``): AUROC, its worst split, faults flagged of 21,
   false alarms on the held-out normal wafers, which normal wafers raise them and which faults
   are missed (split counts). The variants: the level term on the scaled features (the
   library before this round) or on the residual off the principal subspace, with
   ``n_components``, ``level_weight`` and ``level_subspace_weight`` around the defaults.
2. Simulated lots (``make_pi_lots``, 6 lots of 10 wafers, 4 for training, 2 wafers of each of
   5 fault types, seeds 1-8): AUROC of each fault type against the held-out normal wafers, for
   the same level terms (one shape fit per seed; only the wafer model changes).
3. With ``--fresh SEEDS`` instead: the detector's wafer model (its defaults, at the library's
   limit) beside those of the two rounds before (one fold split and the plug-in lognormal
   limit; the scaled level term with 8 components) and the two baselines (multiway PCA, max|z|,
   as in ``shape_wafer_report.py``, at the library's limit) on split seeds that no choice looked
   at (the same protocol; e.g. 200-299): the A/B of a round on data it was not tuned on, with 20
   times the normal wafers of the 5 evaluation splits. ``best_0`` and
   ``best_1``: the faults flagged, on average, by each split's best threshold in hindsight that
   flags no held-out normal wafer, or one (3.7 % of 27): what the score's ranking allows.
5. With ``--demo-lots`` instead: the detector end to end on the simulated lots of ``greyanom
   demo`` (10 lots of 10 wafers, the first 4 for training, 4 wafers of each of 7 fault types,
   seeds 0-5), with the level term before this round and the residual one at several
   ``level_subspace_weight``: the setpoint offset's AUROC against the held-out normal wafers,
   and the shares of normal and fault wafers above the wafer limit (means over the seeds).
4. With ``--repeats R`` instead (development seeds only): a candidate for the next round, not in
   the library. The wafer model's level weights and normalisers come from one cross-fitting of
   the training wafers, so its fold seed moves the ranking; the candidate averages the scores
   of ``R`` wafer models that differ only in that seed (repeated cross-fitting). Printed:
   AUROC, the faults flagged and false alarms at the 99 % limit from the first model's
   out-of-fold scores (from the average of the ``R`` models' out-of-fold scores the limit is
   too low: those models were fitted on different folds, so their average is smoother than a
   new wafer's), and what each split's best threshold in hindsight flags with 0 or 1 false
   alarm.

6. With ``--cv-repeats 1,3,5,10`` instead (development seeds only): the wafer model with that many
   fold splits pooled in its cross-fitting (``cv_repeats``), at the library's limit: AUROC, the
   faults flagged and false alarms at the 99 % limit, what each split's best threshold in
   hindsight flags with 0 or 1 false alarm, and the wafer model's fit time per split.

The adoption rule of the residual level term's round, fixed before the grid was run: AUROC >= 0.997, >= 19.9 / 21
faults flagged and <= 1.4 % false alarms on the development splits (the library before this
round: 0.998, 19.95 / 21, 1.85 %), and every simulated fault type >= 0.95.

Findings (2 shared cores; about 4 minutes with a warm cache and the simulated part):

* The false alarms of the scaled level term are the first wafers of experiments 31 and 29
  (l3101, l2901, l2902): their RF matching (TCP tuner, RF phase error, RF load) and optical
  endpoint levels move together. That joint move is one of the normal wafers' principal
  directions, so on the residual it no longer counts; a gas-flow or He chuck fault, which
  breaks the pattern (the pressure trace's spread, the He pressure's residual), still does.
* Residual, 4 components, ``level_weight=0.5``: AUROC 0.9989 (worst 0.9947), 19.95 / 21,
  0.74 % false alarms, against 0.9981 (0.9912), 19.95 / 21, 1.85 % for the scaled level term
  with 8 components. The other residual variants gave 0.74-1.48 % false alarms and
  19.55-19.95 faults (``n_components`` 3-12, ``level_weight`` 0.35-0.75); adding T² (Q + T²)
  lost 3-12 faults: the faults lie off the subspace.
* On the simulated lots the residual alone lowered the setpoint offset's AUROC (0.938 against
  0.975 for the scaled term, 4 components): that fault moves its trace's level features
  together, partly as normal wafers do. Letting each level feature's scaled value count at
  half weight when it is larger (``level_subspace_weight=0.5``) gave 0.956 and flags on LAM
  exactly what the residual alone flags; 0.7 gave 0.962 and 19.90 / 21 at 0.74 %.
* The development splits flattered the choice. On 200 fresh splits (``--fresh 200-299`` and
  ``--fresh 300-399``, 5,400 held-out normal wafers; ``benchmarks/results/wafer_level_term_fresh_200-399.txt``)
  the residual term gave 19.87 and 20.08 / 21 at 2.19 and 2.15 % false alarms, against 19.95
  and 20.09 / 21 at 2.44 and 2.78 % before: 117 false alarms against 141, 9 catches fewer of
  4,200, AUROC 0.9969 / 0.9974 against 0.9970 / 0.9972. Of 40 blocks of 5 consecutive splits
  (the issue's goal is a mean over 5), 12 meet ">= 20 / 21 at <= 2 %" against 5 before.
  Multiway PCA: 16.76 / 16.75 at 1.48 / 1.67 %; max|z|: 17.89 / 17.84 at 1.59 / 1.70 %.
* The goal sits at the edge of what the score's ranking allows: each split's best threshold in
  hindsight that flags no held-out normal wafer flags 19.72 and 19.92 faults on average (19.79
  and 19.76 before), one false alarm per split (3.7 %) 20.74 and 20.73. A limit estimated
  from ~80 training wafers cannot do better than that; the 99 % limit is exceeded by about
  2.2 % of the fresh normal wafers (the lognormal tail is too light, ``wafer_limit_dev.py``).
  On 61 development splits (100-160) the chosen model gives 19.95 / 21 at 1.88 %: the first 20
  (0.74 %) were a lucky draw.
* The price, on simulated lots (``--demo-lots``, the lots of ``greyanom demo``, seeds 0-5;
  ``benchmarks/results/wafer_level_term_demo_lots.txt``): the setpoint offset's AUROC 0.957
  before, 0.931 with the residual term (``level_subspace_weight`` 0.5), 0.941 (0.7), 0.951 (1);
  normal wafers above the limit 7.3 % before, 5.2 % (0.5) and 4.7 % (0.7, 1); fault wafers
  above it 96.4 % before, 92.9 % (0.5) and 94.6 % (0.7, 1). On the 61 development splits
  100-160, 0.7 gave 19.93 / 21 at 2.06 % and 1 gave 19.80 / 21 at 2.31 %, against 19.95 / 21 at
  1.88 % for 0.5 and 20.05 / 21 at 2.25 % before. So on both data sets the residual term moves
  the operating point towards fewer false alarms and a few fewer catches more than it improves
  the ranking; 0.5 stays the default because the false alarms are what issue 19 misses.
* A candidate for the next round (``--seeds 100-160 --repeats 5``, development splits only;
  ``benchmarks/results/wafer_level_term_repeats_100-160.txt``, 2 min 27 s): the average of 5
  wafer models that differ only in their fold seed raised the AUROC from 0.9971 to 0.9976 and
  what hindsight allows from 19.79 / 20.70 to 19.92 / 20.84 faults (0 / 1 false alarm per
  split); at the first model's limit 20.10 / 21 at 2.00 % against 19.95 / 21 at 1.88 %. Not in
  the library: its limit needs the nested cross-fitting of the average (R times the wafer
  model's fit) and its model file R sets of weights and normalisers.
* The next round built a cheaper form of it (``cv_repeats``, 6. above): one wafer model whose
  weights and normalisers come from the pooled out-of-fold wafers of R fold splits, its limit
  from the first split's held-out scores, and the lognormal prediction limit instead of the
  plug-in quantile. On the 61 development splits (``--cv-repeats 1,3,5,10``,
  ``benchmarks/results/wafer_cv_repeats_dev_100-160.txt``, 4 min 15 s with a fresh A/B beside
  it): 1 / 3 / 5 / 10 repeats gave AUROC 0.9971 / 0.9977 / 0.9976 / 0.9977, 19.80 / 20.05 /
  20.08 / 20.18 faults at 1.82 / 1.94 / 1.88 / 2.06 % false alarms, hindsight 19.79 / 20.00 /
  19.98 / 20.03 at no false alarm; 5 is the default. At the plug-in limit 5 repeats gave 20.25
  at 2.19 %. On the fresh splits (``--fresh``, ``benchmarks/results/wafer_cv_repeats_fresh_200-399.txt``)
  20.06 / 21 at 2.02 % over 200 splits against 19.98 at 2.17 % the round before, 14 of 40 blocks
  of 5 meeting the goal against 12: a small gain; the goal stays at the edge.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score

from greyanom import ShapeSignatureDetector
from greyanom.datasets import load_lam9600, make_pi_lots
from greyanom.traces._features import LEVEL_FEATURES
from greyanom.traces._wafer_scorer import WaferScorer, wafer_limit
from shape_wafer_report import LIMIT, _seeds
from wafer_limit_dev import _quiet, build_cache

#: The wafer model's keyword arguments shared by every variant (the detector's defaults).
BASE = dict(statistic="q", scale_floor=0.5, clip=7.0, new_lots="pooled", cv=5, level_features=LEVEL_FEATURES,
            level_weight=0.5, level_subspace_weight=0.5)

#: The variants: name -> what changes from BASE.
VARIANTS = {
    "scaled, 8 components (before)": dict(level_term="scaled", n_components=8),
    "scaled, 4 components": dict(level_term="scaled", n_components=4),
    **{f"residual, {k} components": dict(level_term="residual", n_components=k, level_subspace_weight=0.0)
       for k in (3, 4, 5, 6, 8, 12)},
    **{f"residual, 4 components, level_weight {w}": dict(level_term="residual", n_components=4, level_weight=w,
                                                        level_subspace_weight=0.0) for w in (0.35, 0.75)},
    **{f"residual, 4 components, subspace weight {c}": dict(level_term="residual", n_components=4,
                                                           level_subspace_weight=c) for c in (0.5, 0.7)},
    "residual, 8 components, subspace weight 0.5": dict(level_term="residual", n_components=8),
}

SIM_FAULTS = {"truncated": 2, "setpoint_offset": 2, "controller_gain": 2, "time_constant": 2, "setpoint_slope": 2}
SIM_VARIANTS = {
    "scaled, 4 components": dict(level_term="scaled", n_components=4),
    "residual, 4 components": dict(level_term="residual", n_components=4, level_subspace_weight=0.0),
    "residual, 4 components, subspace weight 0.5": dict(level_term="residual", n_components=4),
    "residual, 4 components, subspace weight 0.7": dict(level_term="residual", n_components=4,
                                                        level_subspace_weight=0.7),
}


def plug_in_limit(heldout, contamination):
    """The wafer limit before the prediction limit: the plug-in quantile of the fitted lognormal."""
    logs = np.log(np.asarray(heldout, dtype=np.float64))
    return float(np.exp(logs.mean() + stats.norm.ppf(1.0 - contamination) * logs.std(ddof=1)))


def _counts(items):
    return ", ".join(f"{w} {n}" for w, n in pd.Series(items, dtype=object).value_counts().items())


def _split_figures(y, v, lim):
    """One split's figures: AUROC, faults flagged and false alarms at the limit ``lim``, held-out
    normal wafers, and the faults flagged by its best thresholds in hindsight with 0 and 1 false alarm."""
    top = np.sort(v[~y])[::-1]
    return {"AUROC": roc_auc_score(y, v), "flagged": int((v[y] > lim).sum()), "false alarms": int((v[~y] > lim).sum()),
            "normals": int((~y).sum()), "best_0": int((v[y] > top[0]).sum()), "best_1": int((v[y] > top[1]).sum())}


def blocks_meeting_goal(g):
    """``"met / blocks"``: blocks of 5 consecutive splits of one method's rows ``g`` whose means meet
    the goal of issue 19 (>= 20 / 21 flagged at <= 2 % false alarms)."""
    blocks = [g.iloc[i:i + 5] for i in range(0, len(g) - 4, 5)]
    met = [b["flagged"].mean() >= 20 and b["false alarms"].sum() / b["normals"].sum() <= 0.02 for b in blocks]
    return f"{sum(met)} / {len(met)}"


def lam(caches, fault):
    rows = []
    for name, kw in VARIANTS.items():
        per, alarms, missed = [], [], []
        for c in caches:
            train_wf, test_wf, _ = c["shape"]
            sc = WaferScorer.fit(train_wf, contamination=LIMIT, random_state=c["seed"], **{**BASE, **kw})
            s = sc.score(test_wf)
            y = fault.reindex(s.index).notna().to_numpy()
            v = s.to_numpy()
            per.append(_split_figures(y, v, sc.threshold))
            alarms += list(s.index[~y][v[~y] > sc.threshold])
            missed += list(s.index[y][v[y] <= sc.threshold])
        a = pd.DataFrame(per)
        rows.append({"variant": name, "AUROC": a["AUROC"].mean(), "AUROC_min": a["AUROC"].min(),
                     "flagged": a["flagged"].mean(), "false alarms %": 100 * (a["false alarms"] / a["normals"]).mean(),
                     "false alarms by wafer": _counts(alarms), "missed faults": _counts(missed)})
    return pd.DataFrame(rows)


def simulated(seeds=range(1, 9)):
    res = {}
    for seed in seeds:
        lots = make_pi_lots(n_lots=6, wafers_per_lot=10, sensors=("v", "u"), faults=SIM_FAULTS, n_clean_lots=4,
                            random_state=seed)
        fault = lots.groupby("wafer", sort=False)["fault"].first()
        det = ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=4, n_jobs=1, random_state=0)
        _quiet(det.fit, lots)
        # the wafer features the detector's wafer model was fitted on, and those of every wafer
        train_wf = _quiet(det._analyser(fitted=False).fit, lots)[2]
        test_wf = _quiet(det.analyse, lots).wafers
        for name, kw in SIM_VARIANTS.items():
            sc = WaferScorer.fit(train_wf, contamination=LIMIT, random_state=0, **{**BASE, **kw})
            s = sc.score(test_wf)
            f = fault.reindex(s.index)
            held = f.isna().to_numpy() & s.index.str.startswith(("L04", "L05"))
            for ft in SIM_FAULTS:
                sub = (f == ft).to_numpy()
                y = np.r_[np.zeros(held.sum()), np.ones(sub.sum())]
                res.setdefault((name, ft), []).append(roc_auc_score(y, np.r_[s[held], s[sub]]))
    return pd.Series({k: float(np.mean(v)) for k, v in res.items()}).unstack(1)


def fresh(caches, fault):
    """The detector's wafer model, the ones before and the baselines on the cached splits ``caches``."""
    from wafer_limit_dev import MPCA_KW, _scorer

    default = ShapeSignatureDetector().get_params()
    # name -> (wafer model keyword arguments, the limit it is judged at)
    methods = {f"shape (default, cv_repeats={default['cv_repeats']})": (dict(
                   level_term=default["level_term"], n_components=default["n_components"],
                   cv_repeats=default["cv_repeats"]), wafer_limit),
               "shape, one fold split, plug-in limit (the round before)": (
                   dict(level_term="residual", n_components=4, cv_repeats=1), plug_in_limit),
               "shape, scaled, 8 components, plug-in limit (two rounds before)": (
                   {**VARIANTS["scaled, 8 components (before)"], "cv_repeats": 1}, plug_in_limit)}
    rows, alarms = [], {}
    for c in caches:
        train_wf, test_wf, _ = c["shape"]
        scores = {}
        for name, (kw, limit) in methods.items():
            sc = WaferScorer.fit(train_wf, contamination=LIMIT, random_state=c["seed"], **{**BASE, **kw})
            scores[name] = (sc.heldout.to_numpy(), sc.score(test_wf), limit)
        m_train, m_test = c["mpca"]
        sc = _scorer(m_train, c["seed"], MPCA_KW)
        scores["multiway PCA"] = (sc.heldout.to_numpy(), sc.score(m_test), wafer_limit)
        scores["max|z|"] = (c["maxz"][0].to_numpy(), c["maxz"][1], wafer_limit)
        for name, (oof, s, limit) in scores.items():
            s = s.reindex(test_wf.features.index)
            lim = limit(oof, LIMIT)
            y = fault.reindex(s.index).notna().to_numpy()
            v = s.to_numpy()
            rows.append({"method": name, **_split_figures(y, v, lim)})
            alarms.setdefault(name, []).extend(s.index[~y][v[~y] > lim])
    r = pd.DataFrame(rows)
    out = r.groupby("method", sort=False).agg(
        AUROC=("AUROC", "mean"), AUROC_min=("AUROC", "min"), flagged=("flagged", "mean"),
        false_alarms=("false alarms", "sum"), normals=("normals", "sum"),
        best_0=("best_0", "mean"), best_1=("best_1", "mean"),
    )
    out["false alarms %"] = 100 * out["false_alarms"] / out["normals"]
    # the goal is a mean over 5 splits: how often 5 consecutive fresh splits meet it
    for name, g in r.groupby("method", sort=False):
        out.loc[name, "blocks of 5 meeting the goal"] = blocks_meeting_goal(g)
        out.loc[name, "false alarms by wafer"] = _counts(alarms[name])
    return out.reset_index()


def cv_repeats(caches, fault, values):
    """The wafer model with each number of pooled fold splits ``values`` (see 6. above)."""
    import time

    rows = []
    for r in values:
        per, seconds = [], 0.0
        for c in caches:
            train_wf, test_wf, _ = c["shape"]
            t0 = time.perf_counter()
            sc = WaferScorer.fit(train_wf, contamination=LIMIT, random_state=c["seed"],
                                 **{**BASE, "level_term": "residual", "n_components": 4, "cv_repeats": r})
            seconds += time.perf_counter() - t0
            s = sc.score(test_wf)
            per.append(_split_figures(fault.reindex(s.index).notna().to_numpy(), s.to_numpy(), sc.threshold))
        a = pd.DataFrame(per)
        rows.append({"cv_repeats": r, "AUROC": a["AUROC"].mean(), "AUROC_min": a["AUROC"].min(),
                     "flagged": a["flagged"].mean(), "false alarms %": 100 * a["false alarms"].sum() / a["normals"].sum(),
                     "best_0": a["best_0"].mean(), "best_1": a["best_1"].mean(),
                     "fit s/split": seconds / len(caches)})
    return pd.DataFrame(rows)


def repeats(caches, fault, r):
    """One wafer model against the average of ``r`` that differ in their fold seed (see 4. above)."""
    kw = {**BASE, "level_term": "residual", "n_components": 4}
    rows = []
    for c in caches:
        train_wf, test_wf, _ = c["shape"]
        fits = [WaferScorer.fit(train_wf, contamination=LIMIT, random_state=c["seed"] + 1000 * b, **kw) for b in range(r)]
        scores = np.array([f.score(test_wf).to_numpy() for f in fits])
        y = fault.reindex(test_wf.features.index).notna().to_numpy()
        lim = wafer_limit(fits[0].heldout.to_numpy(), LIMIT)
        for name, v in (("one wafer model", scores[0]), (f"average of {r}", scores.mean(axis=0))):
            f = _split_figures(y, v, lim)
            f["false alarms %"] = 100 * f.pop("false alarms") / f.pop("normals")
            rows.append({"method": name, **f})
    r = pd.DataFrame(rows).groupby("method", sort=False).mean().reset_index()
    return r[["method", "AUROC", "flagged", "false alarms %", "best_0", "best_1"]]


def demo_lots(seeds=range(6)):
    """The level terms on the simulated lots of ``greyanom demo`` (see 5. above)."""
    from greyanom.cli import DEMO_TRACE_FAULTS

    variants = {"scaled, 8 components (before)": dict(level_term="scaled", n_components=8, cv_repeats=1),
                "residual, subspace weight 0.5, one fold split (before cv_repeats)": dict(cv_repeats=1),
                "residual, subspace weight 0.5 (default)": {},
                "residual, subspace weight 0.7": dict(level_subspace_weight=0.7),
                "residual, subspace weight 1": dict(level_subspace_weight=1.0)}
    rows = []
    for seed in seeds:
        df = make_pi_lots(n_lots=10, wafers_per_lot=10, faults={f: 4 for f in DEMO_TRACE_FAULTS}, n_clean_lots=4,
                          random_state=seed)
        lots = sorted(df["lot"].unique())
        train, held = df[df["lot"].isin(lots[:4])], df[df["lot"].isin(lots[4:])]
        for name, kw in variants.items():
            det = _quiet(ShapeSignatureDetector(lot_key="lot", random_state=seed, **kw).fit, train)
            s = _quiet(det.score_wafers, held)
            f = held.groupby("wafer", sort=False)["fault"].first().reindex(s.index)
            normal, offset = f.isna().to_numpy(), (f == "setpoint_offset").to_numpy()
            v = s.to_numpy()
            rows.append({"variant": name,
                         "setpoint offset AUROC": roc_auc_score(np.r_[np.zeros(normal.sum()), np.ones(offset.sum())],
                                                                np.r_[v[normal], v[offset]]),
                         "normals flagged %": 100 * float((v[normal] > det.wafer_threshold_).mean()),
                         "faults flagged %": 100 * float((v[~normal] > det.wafer_threshold_).mean())})
    return pd.DataFrame(rows).groupby("variant", sort=False).mean().reset_index()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--cache", required=True, help="the folder of wafer_limit_dev.py's per-split cache")
    parser.add_argument("--seeds", default="100-119", help="development split seeds (never 0-4)")
    parser.add_argument("--skip-sim", action="store_true", help="LAM 9600 only")
    parser.add_argument("--fresh", default=None, help="instead: the A/B on split seeds no choice looked at (e.g. 200-299)")
    parser.add_argument("--repeats", type=int, default=0, help="instead: averaged wafer models (development seeds)")
    parser.add_argument("--demo-lots", action="store_true", help="instead: the level terms on greyanom demo's lots")
    parser.add_argument("--cv-repeats", default=None,
                        help="instead: the wafer model with these numbers of pooled fold splits, e.g. 1,3,5,10")
    args = parser.parse_args(argv)
    if args.demo_lots:
        print("5. the simulated lots of greyanom demo, seeds 0-5 (means)")
        print(demo_lots().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return
    seeds = _seeds(args.seeds)
    if set(seeds) & set(range(5)):
        raise SystemExit("seeds 0-4 are the evaluation splits; develop on others (e.g. 100-119)")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 80)
    df = _quiet(load_lam9600, Path(args.data) / "wise_etch_lam9600")
    wafers = df.drop_duplicates("wafer").set_index("wafer")[["experiment", "fault"]]
    if args.fresh:
        fresh_seeds = _seeds(args.fresh)
        if set(fresh_seeds) & (set(range(5)) | set(range(100, 120))):
            raise SystemExit("--fresh seeds must be neither the evaluation (0-4) nor the development (100-119) splits")
        caches = [build_cache(df, wafers, seed, args.cache) for seed in fresh_seeds]
        print(f"3. {len(fresh_seeds)} fresh splits (seeds {args.fresh}), alarms at the 99 % limit; false alarms summed")
        pd.set_option("display.max_colwidth", 120)
        print(fresh(caches, wafers["fault"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return
    caches = [build_cache(df, wafers, seed, args.cache) for seed in seeds]
    if args.cv_repeats:
        values = [int(v) for v in args.cv_repeats.split(",")]
        print(f"6. {len(seeds)} development splits, repeated cross-fitting of the wafer model (cv_repeats)")
        print(cv_repeats(caches, wafers["fault"], values).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return
    if args.repeats:
        print(f"4. {len(seeds)} development splits, one wafer model against the average of {args.repeats}")
        print(repeats(caches, wafers["fault"], args.repeats).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return
    print(f"1. LAM 9600, {len(seeds)} development splits (alarms at the 99 % limit; means over the splits)")
    print(lam(caches, wafers["fault"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if not args.skip_sim:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = simulated()
        print("\n2. simulated PI-loop lots, seeds 1-8: AUROC of each fault type against the held-out normal wafers")
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
