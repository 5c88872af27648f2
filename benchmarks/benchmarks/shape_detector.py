"""asv benchmarks of ShapeSignatureDetector (setup outside the timers)."""

import warnings

import numpy as np
from sklearn.metrics import roc_auc_score

from greyanom import ShapeSignatureDetector
from greyanom.datasets import PI_FAULTS, make_pi_lots


def _lots(fault_scale=1.0):
    return make_pi_lots(
        n_lots=8, wafers_per_lot=10, faults={f: 3 for f in PI_FAULTS}, n_clean_lots=3,
        fault_scale=fault_scale, random_state=0,
    )


class ShapeDetectorTime:
    """Fit (normal model by Laplace-EM) and score (lot refits) on simulated PI-loop lots."""

    def setup(self):
        warnings.simplefilter("ignore")
        self.df = _lots()
        self.det = ShapeSignatureDetector(n_initial_lots=3).fit(self.df)  # also warms the JIT

    def time_fit(self):
        ShapeSignatureDetector(n_initial_lots=3).fit(self.df)

    def time_explain(self):
        self.det.explain(self.df)

    def peakmem_explain(self):
        self.det.explain(self.df)


class ShapeDetectorQuality:
    """AUROC of held-out normal vs faulty wafers, and how often explain names the fault's parameter."""

    params = [1.0, 0.25]
    param_names = ["fault_scale"]

    def setup(self, fault_scale):
        warnings.simplefilter("ignore")
        df = _lots(fault_scale)
        det = ShapeSignatureDetector(n_initial_lots=3).fit(df)
        ex = det.explain(df)
        fault = df.groupby("wafer", sort=False)["fault"].first().reindex(ex.index)
        held = ex[fault.isna().to_numpy() & ~ex.index.isin(det.train_scores_.index)]
        bad = ex[fault.notna().to_numpy() & (fault != "truncated").to_numpy()]
        y = np.r_[np.zeros(len(held)), np.ones(len(bad))]
        self.auroc = roc_auc_score(y, np.r_[held["score"], bad["score"]])
        terms = ["fit", "gamma", "R", "omega", "y", "phi", "c"]
        top = bad[terms].idxmax(axis=1)
        targets = fault.reindex(bad.index).map(lambda f: PI_FAULTS[f][1])
        self.named = float(np.mean([t in tg for t, tg in zip(top, targets)]))

    def track_auroc(self, fault_scale):
        return self.auroc

    track_auroc.unit = "AUROC"

    def track_top_term_right(self, fault_scale):
        return self.named

    track_top_term_right.unit = "fraction"


class ShapeWaferTime:
    """score_wafers and analyse beside fit_traces on the same traces (issue 9)."""

    def setup(self):
        from greyanom import MultiwayPCADetector
        from greyanom.traces import Traces, fit_traces

        warnings.simplefilter("ignore")
        self.df = make_pi_lots(n_lots=8, wafers_per_lot=10, sensors=("v", "u"), random_state=0)
        self.det = ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=3, random_state=0).fit(self.df)
        self.traces = Traces.from_frame(self.df, by=("sensor", "wafer"))
        self.fit_traces = fit_traces
        fit_traces(self.traces)  # JIT warm-up
        self.det.score_wafers(self.df)
        self.analysis = self.det.analyse(self.df)
        self.mpca = MultiwayPCADetector(group_keys=("sensor",), random_state=0).fit(self.df)

    def time_fit_traces(self):
        self.fit_traces(self.traces)

    def time_score_wafers(self):
        """On a frame: one normal-model-prior fit per trace (the wafer features need no lot EM)."""
        self.det.score_wafers(self.df)

    def time_analyse(self):
        """The per-trace analysis (lot EM refits) that score, explain and the wafer views share."""
        self.det.analyse(self.df)

    def time_score_wafers_from_analysis(self):
        self.det.score_wafers(self.analysis)

    def time_mpca_score_wafers(self):
        self.mpca.score_wafers(self.df)


class WaferModelFit:
    """The wafer model's fit (nested cross-fitting included) with one fold split or ``cv_repeats`` pooled
    splits, without and with the run order (``order_key``: drifting features centred on run-order
    neighbours), on the training wafer features of simulated PI-loop lots (the trace fits outside the
    timer). LAM 9600 figures: ``benchmarks/wafer_level_term_dev.py --cv-repeats 1,3,5,10``,
    ``benchmarks/wafer_order_dev.py`` and the shape detector guide (1.68 s with 5 against 0.50 s with 1
    for 80 wafers and 760 features; about 1.75 s against 1.1 s with and without the run order)."""

    params = [[1, 5], [False, True]]
    param_names = ["cv_repeats", "run_order"]

    def setup(self, cv_repeats, run_order):
        import dataclasses

        from greyanom.traces._features import LEVEL_FEATURES
        from greyanom.traces._wafer_scorer import WaferScorer

        warnings.simplefilter("ignore")
        self.level_features = LEVEL_FEATURES
        df = make_pi_lots(n_lots=8, wafers_per_lot=10, sensors=("v", "u"), random_state=0)
        det = ShapeSignatureDetector(group_keys=("sensor",), n_initial_lots=8, random_state=0)
        self.train_wafers = det._analyser(fitted=False).fit(df)[2]
        if run_order:  # the wafer number in its lot (wafers are named L<lot>W<number>)
            runs = self.train_wafers.features.index.str.split("W").str[-1].astype(int).to_numpy(dtype=float)
            self.train_wafers = dataclasses.replace(self.train_wafers, order=runs)
        defaults = ShapeSignatureDetector().get_params()
        self.kw = {k: defaults[k] for k in ("n_components", "statistic", "scale_floor", "clip", "new_lots", "cv",
                                            "level_weight", "level_term", "level_subspace_weight", "n_neighbours")}
        self.fit = WaferScorer.fit

    def time_fit(self, cv_repeats, run_order):
        self.fit(self.train_wafers, contamination=0.01, random_state=0, level_features=self.level_features,
                 cv_repeats=cv_repeats, **self.kw)
