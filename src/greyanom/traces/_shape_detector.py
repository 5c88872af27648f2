"""ShapeSignatureDetector: grey-box anomaly scores for process traces (Vargas et al. 2018)."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_random_state

from greyanom._threads import threaded
from greyanom.base import BaseDetector
from greyanom.traces import _wafer_scorer as ws
from greyanom.traces._analyser import TraceAnalyser
from greyanom.traces._features import LEVEL_FEATURES
from greyanom.traces._persist import TracePersistMixin
from greyanom.traces._views import SIGNATURE_COLUMNS, TraceViews
from greyanom.traces._wafer_scorer import WAFER_MODEL_CONSTRAINTS, WaferScorer

__all__ = ["ShapeSignatureDetector"]

#: Parameter constraints (scikit-learn's ``_validate_params``).
_CONSTRAINTS: dict = {
    **BaseDetector._parameter_constraints,
    "time": [str],
    "value": [str],
    "start_time": [str, None],
    "trace_keys": [tuple, list, str],
    "group_keys": [tuple, list, str],
    "lot_key": [str, None],
    "lot_prior": [StrOptions({"em", "mean", "normal"})],
    "n_initial_lots": [Interval(numbers.Integral, 1, None, closed="left"), None],
    "max_em_iter": [Interval(numbers.Integral, 1, None, closed="left")],
    "em_tol": [Interval(numbers.Real, 0, None, closed="neither")],
    "min_points": [Interval(numbers.Integral, 1, None, closed="left")],
    "min_lot_size": [Interval(numbers.Integral, 2, None, closed="left")],
    "n_jobs": [numbers.Integral, None],
    **WAFER_MODEL_CONSTRAINTS,
    "level_weight": [Interval(numbers.Real, 0, None, closed="left")],
    "level_term": [StrOptions({"residual", "scaled"})],
    "level_subspace_weight": [Interval(numbers.Real, 0, 1, closed="both")],
    "cv_repeats": [Interval(numbers.Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
}


class ShapeSignatureDetector(TracePersistMixin, BaseDetector):
    """Grey-box anomaly detector for process traces run by PI control loops.

    Every trace (one (tool, sensor, step) group, one wafer) is summarised by its *shape
    signature* :math:`s = (\\gamma, R, \\omega, y, \\varphi, c)`, the parameters of the damped,
    linearly driven oscillator that the closed-loop ODE of a PI controller implies
    (Vargas et al. 2018, eq. 11). ``fit`` learns a normal model per group, the Gaussian prior
    :math:`(\\sigma^*, \\mu_S^*, \\sigma_S^*)` of the signatures and the noise level, by the
    hierarchical fit of eq. (14) with a Laplace-EM update. ``score`` refits the signatures of
    new traces lot by lot and scores each one by the negative log posterior (19) under the
    normal model, centred so that normal traces score about 0. ``score_wafers`` scores each
    wafer from signature features of a fit under the normal-model prior, so on a frame it
    skips the lot refits.

    Parameters
    ----------
    time : str, default="t"
        Column of the sample times.
    value : str, default="value"
        Column of the sensor values.
    start_time : str or None, default=None
        Column of the start time of each trace's step (the time origin ``x`` of eq. 11, the
        first row of each trace is read). ``None``: the group's nominal start, the median first
        sample time of its training traces (``t_start`` of ``normal_model_``), for every trace
        whose first sample lies within ``t_tol`` of it, when the training traces start
        together (within two sampling intervals). Otherwise (``t_tol`` NaN: a clock offset per
        wafer, a step of variable start) the wafer's clock: groups whose first samples keep a
        fixed offset from another group's on every training wafer form a set (``t_clock``),
        and a trace starts at the lower median over its wafer's traces of that set of
        ``first sample - t_offset``, plus its own ``t_offset``, so one trace missing its first
        samples keeps its origin. Elsewhere (one group per wafer) a trace starts at its first
        sample, and only a ``start_time`` column makes its score robust to missing first samples.
    trace_keys : tuple of str, default=("wafer",)
        Columns that identify a trace within a group (usually the wafer).
    group_keys : tuple of str, default=()
        Columns of the (tool, sensor, step) group; one normal model is fitted per group.
    lot_key : str or None, default="lot"
        Column of the lot. The signatures of the traces of a lot are fitted together with a
        lot prior (eq. 14). ``None`` treats all traces of a group as one lot.
    order_key : str or None, default=None
        Column of each wafer's run order within its lot: its position in the processing
        sequence (a slot or run number) or its start time (numbers or datetimes; the first
        value of the wafer's rows is read; a wafer without one is NaN). With it, the wafer
        model centres each wafer feature that drifts within a lot on the median of the
        ``n_neighbours`` training wafers of the wafer's lot nearest in run order, instead of
        the lot median. Which features drift is learned on the training wafers: those whose
        variance about their run-order neighbours, each wafer left out of its own centre, is
        below 0.8 of their variance about the lot median. A wafer of a lot not seen in
        training, or with fewer than 3 training neighbours in its lot, is centred on the lot
        (or pooled) median as without it. The neighbours may lie on both sides of the wafer:
        this is for dispositioning wafers of lots that were (partly) in training, in
        hindsight. On LAM 9600 (run order: the wafer number, ``load_lam9600``'s ``run``) it
        raised the faults flagged at the 99 % limit from 20.08 to 20.28 / 21 and lowered the
        false alarms from 1.88 to 1.21 % on 61 development splits; on 200 fresh splits, from
        20.06 to 20.37 / 21 at 2.02 and 1.96 % (see the shape detector guide). ``None``: every
        feature is centred on its lot median.
    n_neighbours : int >= 3, default=6
        Training wafers of the lot whose median centres a drifting feature (``order_key``).
    n_initial_lots : int or None, default=None
        With ``k``, only the first ``k`` lots (in order of first appearance, i.e. time order
        when the rows are) form the normal model (the paper's initial fit); ``None`` uses all.
    max_em_iter : int, default=20
        Maximum number of Laplace-EM iterations of each hierarchical fit.
    em_tol : float, default=0.02
        Relative change of the hyperparameters at which EM stops.
    min_points : int, default=7
        Traces with fewer finite samples are not fitted (status ``"too_short"``).
    min_lot_size : int, default=3
        Lots with fewer fitted traces are scored with the normal-model prior instead of a
        lot prior (column ``prior`` of :meth:`signatures`).
    n_jobs : int or None, default=None
        Threads of the signature fits (Numba) and the other pools, with the meaning every
        detector gives it (:doc:`/guide/performance`): ``None`` all usable CPUs (affinity,
        container quota, ``OMP_NUM_THREADS``), except that batches of fewer than 256 traces
        run on one thread (starting the parallel region costs more than such a batch);
        ``k`` uses ``k``; ``-1`` all usable CPUs, ``-2`` all but one.
    n_components : int, default=4
        Principal components of the wafer model (at most a fifth of the wafer features;
        the number used is ``n_components_``). 4 since the residual level term (8 before),
        chosen with it on development splits of LAM 9600 (see the shape detector guide).
    statistic : {"q", "t2", "combined"}, default="q"
        Wafer score: Q (squared prediction error) of the scaled wafer features, T^2, or both.
    level_weight : float >= 0, default=0.5
        Weight of the max-type level term added to the wafer score: the largest squared
        level feature (``raw_mean``, ``log_raw_sd``, ``log_sd`` of every group; its residual
        or its scaled value, ``level_term``), each divided by its out-of-fold mean square on
        the training wafers, so noisy sensors weigh less; normalised to a median of 1 on
        held-out training wafers. It catches a shift of one trace's level or spread that Q
        spreads over many features. The whole term goes to the feature that attains the
        maximum in ``explain_wafers``, so rows still sum exactly to the score. 0: Q (T^2)
        alone. Chosen with ``clip`` on development splits of LAM 9600 (see the shape
        detector guide).
    level_term : {"residual", "scaled"}, default="residual"
        What the level term runs over: each wafer's residual off the wafer model's
        principal subspace (the part of its scaled features that normal wafers' joint
        variation does not explain), or its scaled features themselves (``"scaled"``, the
        level term before this option; model files saved before it load with it). On the
        residual, levels that move together as they do on normal wafers (the RF matching
        and optical signals of a chamber's first wafers, on LAM 9600) count less; on the
        development splits of LAM 9600 this cut the false alarms at the 99 % limit from
        1.9 % to 0.7 % with as many faults flagged, on 200 fresh splits from 2.6 % to 2.2 %
        with 0.05 of 21 fewer (see the shape detector guide).
    level_subspace_weight : float in [0, 1], default=0.5
        With ``level_term="residual"``: a level feature's scaled value, times this weight,
        counts instead of its residual when that is larger, so that a shift along normal
        wafers' joint variation (a setpoint offset that moves its trace's level features
        together, as normal wafers' do) still counts, discounted. 0: the residual alone.
        On small simulated PI-loop lots, 0 lowered the setpoint-offset AUROC from 0.975
        (``"scaled"``) to 0.938 and 0.5 gave 0.956 (on the lots of ``greyanom demo``: 0.957
        before, 0.931 with 0.5, 0.951 with 1); on LAM 9600, 0 and 0.5 flag the same. Higher
        values move the operating point back towards more catches and more false alarms.
    scale_floor : float, default=0.5
        The robust (per-lot MAD) scale of a wafer feature is at least this fraction of its
        standard deviation in the lot.
    clip : float, default=7.0
        Scaled wafer features are clipped to ``[-clip, clip]``; a feature that cannot be
        computed (unfittable trace, missing group) is set to ``clip``. Clipping bounds what one
        noisy feature adds to Q and to the level term (6-7 was best on the
        development splits of LAM 9600, 12-16 clearly worse).
    new_lots : {"pooled", "self"}, default="pooled"
        Lots not seen in training: their wafers are centred on the pooled training median
        (``"pooled"``) or on their own median if they have at least 3 wafers (``"self"``).
    cv : int, default=5
        Wafer folds of the cross-fitting that sets the wafer control limit.
    cv_repeats : int >= 1, default=5
        Fold splits of the wafer model's cross-fitting whose out-of-fold wafers are pooled:
        the normalisers and level weights are learned from all of them (repeated
        cross-fitting), so they no longer depend on one draw of the folds. The model and its
        explanations keep their form; fitting the wafer model costs up to ``cv_repeats``
        times as much (1.68 s with 5 against 0.50 s with 1 for the 80 training wafers of a
        LAM 9600 split). The wafer limit comes from the held-out scores of the first split.
        1: one split, as model files saved before the option were fitted. On 61
        development splits of LAM 9600 5 gave 20.08 / 21 faults flagged at 1.88 % false alarms
        against 19.80 / 21 at 1.82 % for 1 (AUROC 0.9976 against 0.9971); on 200 fresh splits
        a small gain (see the shape detector guide).
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_`` from the training trace scores (see :class:`~greyanom.BaseDetector`)
        and ``wafer_threshold_`` from the cross-fitted training wafer scores (a float: the
        lognormal prediction limit at ``1 - contamination`` from them, see
        :func:`~greyanom.traces._wafer_scorer.wafer_limit`).
    calibration : {"heldout", "in_sample"}, default="heldout"
        Which training trace scores set ``offset_`` (and fill ``heldout_scores_``):
        ``"heldout"``, each of ``cv`` wafer folds scored under normal models that its traces
        did not enter; ``"in_sample"``, the fitted model's own training scores (optimistic:
        the threshold then flags more than ``contamination`` of new normal traces). The fold
        models are not refitted: each is the fitted normal model moved by what leaving the fold
        out changes in a Laplace-EM with E-steps linearised at the traces' fits under it (no
        refit; the step starts and wafer clocks are the fitted model's), so ``"heldout"`` costs
        about one more analysis of the training traces; a fold model that ran away from the
        fitted one (a group whose parameters the traces barely identify) is refitted instead.
        Against normal models refitted per fold (``benchmarks/shape_heldout_approx.py``): on
        simulated lots, per-trace correlation 0.9996, thresholds within 3.5 %, the same false
        alarms; on LAM 9600, correlation 0.990, threshold 0.3 % lower, the same false alarms
        (4.5 %); ``fit`` there took 1.45 times the in-sample fit (2.0 before its held-out pass
        was batched).
        The wafer model is cross-fitted either way (its normalisers are made of held-out
        scores), so ``wafer_threshold_`` does not change.
    random_state : int, RandomState instance or None, default=None
        Seeds the assignment of wafers to the ``cv`` folds of the cross-fitting (the held-out
        scores that set ``wafer_threshold_`` and ``offset_``); the same seed gives the same
        numbers. ``None`` uses a fixed seed (0), so that the limits do not change from fit to
        fit. The trace fits themselves are deterministic and do not use it.

    Attributes
    ----------
    normal_model_ : pandas.DataFrame
        One row per group: ``noise_sd`` (:math:`\\sigma^*`), ``mu_<p>`` and ``sd_<p>`` for each
        parameter, ``t_start`` and ``t_tol`` (the nominal step start and the tolerance on a
        trace's first sample time), ``t_clock``, ``t_offset`` and ``t_offset_tol`` (the
        group's set of groups that start together on each wafer, its offset on the wafer's
        clock and the tolerance; NaN without one; see ``start_time``), ``n_traces``,
        ``em_iter`` and ``converged``. A group with fewer than two
        fittable traces gets no row (a warning names it); it scores as ``"unknown_group"``.
    train_scores_ : pandas.Series
        Centred scores of the normal-model traces, scored like new data (lot by lot).
    offset_ : float
        ``decision_function = score_samples - offset_``.
    threshold_ : float
        Anomaly-score control limit, ``-offset_``.
    n_groups_ : int
        Number of groups with a normal model.
    wafer_model_ : greyanom.traces._wafer_model.WaferModel
        The frozen wafer model (robust per-lot scaler, PCA, level term) on the wafer features.
    wafer_columns_ : pandas.MultiIndex
        The wafer features, ``group_keys + ("feature",)``: the fitted curve at 8 points of
        normalised step time (``curve_0`` ... ``curve_7``), ``log_sd`` (log residual sd),
        ``feat_y`` and ``feat_c`` (level and slope), ``raw_mean`` (mean of the samples),
        ``log_raw_sd`` (log sd of the samples),
        ``res_0`` ... ``res_3`` (mean residual per quarter of step time), ``duration``, ``n_points`` and
        ``unfitted`` (1 for a trace that could not be fitted), per group.
    wafer_heldout_scores_ : pandas.Series
        Cross-fitted wafer scores of the training wafers.
    wafer_threshold_ : float
        Wafer control limit (from ``wafer_heldout_scores_`` at ``contamination``).

    See Also
    --------
    greyanom.traces.fit_traces : the per-trace signature fit.
    greyanom.traces.fit_lot : the hierarchical fit of one lot.

    Notes
    -----
    Score of a trace with :math:`n` points, residual sum of squares SSR and signature
    :math:`s`, with :math:`z_d = (s_d - \\mu^*_d)/\\sigma^*_{S,d}`:

    .. math::

        \\mathrm{score} = \\underbrace{\\frac{\\mathrm{SSR}}{2\\sigma^{*2}} - \\frac{n - p}{2}}_{\\texttt{fit}}
        + \\sum_d \\underbrace{\\tfrac12 (z_d^2 - 1)}_{\\texttt{gamma}, \\dots, \\texttt{c}}

    where :math:`p = \\mathrm{tr}(H^{-1} J^\\top J)/\\sigma^{*2}\\in[0, 6]` is the effective
    number of fitted parameters under the normal-model prior. Each term has expectation about 0
    on normal traces whatever their length and units (paper notes T11); ``score_raw`` is the
    uncentred eq. (19). The prior is the corrected Gaussian over D = 6 parameters; the start
    time ``x`` is data, not a parameter (notes T1, T3).

    References
    ----------
    .. [1] A. Vargas, M. R. Al Iqbal, J. S. Erickson, K. P. Bennett, "Grey-box process control
       mining for anomaly monitoring and deconstruction", ODD v5.0, KDD 2018, arXiv:1808.03709.

    Examples
    --------
    >>> from greyanom import ShapeSignatureDetector
    >>> from greyanom.datasets import make_pi_lots
    >>> df = make_pi_lots(n_lots=3, wafers_per_lot=6, random_state=0)
    >>> det = ShapeSignatureDetector(n_initial_lots=2).fit(df)
    >>> det.score(df).shape
    (18,)
    """

    _saved_attrs = (
        "normal_model_", "n_groups_", "train_scores_", "train_status_", "wafer_columns_", "n_components_",
        "wafer_model_", "wafer_heldout_scores_", "wafer_threshold_", "decision_scores_", "heldout_scores_",
        "threshold_", "offset_",
    )

    _parameter_constraints: dict = _CONSTRAINTS

    def __init__(
        self,
        *,
        time="t",
        value="value",
        start_time=None,
        trace_keys=("wafer",),
        group_keys=(),
        lot_key="lot",
        order_key=None,
        n_neighbours=6,
        lot_prior="em",
        n_initial_lots=None,
        max_em_iter=20,
        em_tol=0.02,
        min_points=7,
        min_lot_size=3,
        n_jobs=None,
        n_components=4,
        statistic="q",
        level_weight=0.5,
        level_term="residual",
        level_subspace_weight=0.5,
        scale_floor=0.5,
        clip=7.0,
        new_lots="pooled",
        cv=5,
        cv_repeats=5,
        contamination="auto",
        calibration="heldout",
        random_state=None,
    ):
        self.time = time
        self.value = value
        self.start_time = start_time
        self.trace_keys = trace_keys
        self.group_keys = group_keys
        self.lot_key = lot_key
        self.order_key = order_key
        self.n_neighbours = n_neighbours
        self.lot_prior = lot_prior
        self.n_initial_lots = n_initial_lots
        self.max_em_iter = max_em_iter
        self.em_tol = em_tol
        self.min_points = min_points
        self.min_lot_size = min_lot_size
        self.n_jobs = n_jobs
        self.n_components = n_components
        self.statistic = statistic
        self.level_weight = level_weight
        self.level_term = level_term
        self.level_subspace_weight = level_subspace_weight
        self.scale_floor = scale_floor
        self.clip = clip
        self.new_lots = new_lots
        self.cv = cv
        self.cv_repeats = cv_repeats
        self.contamination = contamination
        self.calibration = calibration
        self.random_state = random_state

    @threaded
    def analyse(self, X):
        return self._analyser().analysis(X)

    @classmethod
    def _params_from_json(cls, params):
        # a file saved before the level term holds a Q-only wafer model, one saved before the
        # residual level term a level term on the scaled features: say so in its params (and a
        # file saved before repeated cross-fitting was fitted on one fold split)
        return super()._params_from_json({"level_weight": 0.0, "level_term": "scaled", "cv_repeats": 1, **params})

    def _restore_unpickled(self):
        # a pickle made before the level term (and before the package move) has no level_weight:
        # its wafer model is Q-only, as for a file (above); nor, from before the residual level
        # term, a level_term
        if "level_weight" not in vars(self):
            self.level_weight = 0.0
        if "level_term" not in vars(self):
            self.level_term = "scaled"
            self.level_subspace_weight = 0.5  # not used with "scaled"
        if "cv_repeats" not in vars(self):
            self.cv_repeats = 1
        if "order_key" not in vars(self):
            self.order_key = None  # fitted before run-order centring: every feature on its lot median
            self.n_neighbours = 6

    # -- the parts it owns: a trace analyser, trace views and a wafer scorer -------------------
    def _analyser(self, fitted=True):
        if fitted:
            check_is_fitted(self, "normal_model_")
        return TraceAnalyser.of(self)

    def _wafer_scorer(self):
        check_is_fitted(self, "wafer_model_")
        return WaferScorer.of(self)

    def _keys(self):
        return TraceAnalyser.of(self).keys

    def _fit(self, X):
        check_random_state(self.random_state)
        analyser, train, train_wafers, train_frame, prior_fits = self._analyser(fitted=False).fit(X)
        if isinstance(train_frame, pd.DataFrame):
            # the prepared frame and its traces' fits under the normal model, taken (and
            # dropped) by _heldout_scores
            self._heldout_state = (train_frame, prior_fits)
        self.normal_model_, self.n_groups_ = analyser.normal_model, len(analyser.normal_model)
        self.train_scores_ = train["score"][train["score"].notna()]
        self.train_status_ = train["status"]
        scorer = WaferScorer.fit(
            train_wafers, n_components=self.n_components, statistic=self.statistic,
            scale_floor=self.scale_floor, clip=self.clip, new_lots=self.new_lots, cv=self.cv,
            contamination=self.contamination, random_state=self.random_state,
            level_features=LEVEL_FEATURES, level_weight=self.level_weight, level_term=self.level_term,
            level_subspace_weight=self.level_subspace_weight, cv_repeats=self.cv_repeats,
            n_neighbours=self.n_neighbours,
        )
        for name, value in scorer.attributes().items():
            setattr(self, name, value)
        return self.train_scores_.to_numpy()

    def _heldout_scores(self, X, train_scores):
        frame, prior_fits = self.__dict__.pop("_heldout_state", (None, None))
        return self._analyser().heldout_scores(
            X, self.cv, self.random_state, train_frame=frame, prior_fits=prior_fits
        ).to_numpy(dtype=np.float64)

    # -- the contract, with pandas results ---------------------------------------------------
    @threaded
    def score(self, X, y=None):
        """Centred anomaly score of each trace: higher means more anomalous.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces with the columns named by ``time``, ``value``, ``trace_keys``,
            ``group_keys`` and ``lot_key``.
        y : None
            Ignored.

        Returns
        -------
        scores : pandas.Series
            Indexed by ``group_keys + trace_keys``. About 0 for normal traces. NaN only for
            traces that could not be scored, with a warning that gives their status.
        """
        return self._analyser().traces(X)["score"].rename("score")

    def _score(self, X):
        return self.score(X).to_numpy()

    def predict(self, X):
        """Inliers (+1) and outliers (-1); traces without a score are outliers.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.

        Returns
        -------
        labels : pandas.Series of int
        """
        d = self.decision_function(X)
        return pd.Series(np.where(d.to_numpy() >= 0, 1, -1), index=d.index, name="label")

    # -- per-trace views (TraceViews) and wafer answers (WaferScorer) ------------------------
    @threaded
    def score_raw(self, X):
        return TraceViews(self._analyser()).score_raw(X)

    @threaded
    def explain(self, X):
        return TraceViews(self._analyser()).explain(X)

    @threaded
    def signatures(self, X):
        return TraceViews(self._analyser()).signatures(X)

    @threaded
    def signature_table(self, X, *, columns=SIGNATURE_COLUMNS):
        return TraceViews(self._analyser()).signature_table(X, columns=columns)

    @threaded
    def explain_change(self, X, before, after):
        return TraceViews(self._analyser()).explain_change(X, before, after)

    @threaded
    def score_wafers(self, X):
        return self._wafer_scorer().score(self._analyser().wafer_features(X))

    @threaded
    def predict_wafers(self, X):
        return self._wafer_scorer().predict(self._analyser().wafer_features(X))

    @threaded
    def explain_wafers(self, X):
        return self._wafer_scorer().explain(self._analyser().wafer_features(X))

    @threaded
    def wafer_status(self, X):
        return self._wafer_scorer().status(self._analyser().wafer_features(X))

    @threaded
    def explain_wafer_features(self, X):
        return self._wafer_scorer().explain_features(self._analyser().wafer_features(X))

    score_raw.__doc__ = TraceViews.score_raw.__doc__
    explain.__doc__ = TraceViews.explain.__doc__
    signatures.__doc__ = TraceViews.signatures.__doc__
    signature_table.__doc__ = TraceViews.signature_table.__doc__
    explain_change.__doc__ = TraceViews.explain_change.__doc__
    analyse.__doc__ = TraceAnalyser.analysis.__doc__
    score_wafers.__doc__ = ws.SCORE_WAFERS_DOC
    predict_wafers.__doc__ = ws.PREDICT_WAFERS_DOC
    explain_wafers.__doc__ = ws.EXPLAIN_WAFERS_DOC
    wafer_status.__doc__ = ws.WAFER_STATUS_DOC
    explain_wafer_features.__doc__ = ws.EXPLAIN_WAFER_FEATURES_DOC
