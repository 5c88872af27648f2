"""Per-trace views of the shape detector: explanations, signatures, the paper's table, changes.

:class:`TraceViews` reads the per-trace analysis of its :class:`~greyanom.traces._analyser.TraceAnalyser`
(a :class:`~greyanom.traces.TraceAnalysis`, or ``X`` analysed by it) and lays it out; it fits
nothing itself except in :meth:`TraceViews.explain_change`, which needs the two traces' data.
The detector's methods of the same names call it and share its docstrings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from greyanom.traces._frames import _is_dask
from greyanom.traces._keys import key_tuple
from greyanom.traces._hierarchy import PARAMS
from greyanom.traces._ragged import Traces
from greyanom.traces._scoring import change_split

__all__ = ["TraceViews", "SIGNATURE_COLUMNS"]

#: Default per-trace quantities of ``signature_table``.
SIGNATURE_COLUMNS = (*PARAMS, "ssr", "score")


class TraceViews:
    """``score_raw``, ``explain``, ``signatures``, ``signature_table`` and ``explain_change`` of an analyser."""

    def __init__(self, analyser):
        self.analyser = analyser

    def score_raw(self, X):
        """The paper's uncentred anomaly score (19), with the corrected D = 6 Gaussian prior.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.

        Returns
        -------
        scores : pandas.Series
            ``n/2 ln sigma*^2 + SSR/(2 sigma*^2) + sum_d [ln sigma*_S,d + z_d^2/2]``; its
            baseline depends on the trace length and the sensor's units (notes T11).
        """
        return self.analyser.traces(X)["score_raw"].rename("score_raw")

    def explain(self, X):
        """Additive decomposition of the centred score, and its gradient.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.

        Returns
        -------
        explanation : pandas.DataFrame
            One row per trace (index ``group_keys + trace_keys``) with columns

            * ``fit``, ``gamma``, ``R``, ``omega``, ``y``, ``phi``, ``c``: they sum exactly to
              ``score``. ``fit = SSR/(2 sigma*^2) - (n - p)/2``; the parameter terms are
              ``(z_d^2 - 1)/2`` with ``z_d = (s_d - mu*_d)/sigma*_S,d``. All unit-free.
            * ``score``: the centred score.
            * ``d_gamma`` ... ``d_c``: gradient of the anomaly score (19) with respect to the
              signature, in the units of 1/parameter (the paper's section 5 gradient).
            * ``dz_gamma`` ... ``dz_c``: the unit-free gradient, ``d_<p> * sigma*_S,<p>``.
            * ``status``.
        """
        res = self.analyser.traces(X)
        out = res[["fit"]].copy()
        for p in PARAMS:
            out[p] = res[f"P_{p}"]
        out["score"] = res["score"]
        sd = self._sd_table(res.index)
        for p in PARAMS:
            out[f"d_{p}"] = res[f"d_{p}"]
        for p in PARAMS:
            out[f"dz_{p}"] = res[f"d_{p}"].to_numpy() * sd[p].to_numpy()
        out["status"] = res["status"]
        return out

    def _sd_table(self, index):
        tk, gk = self.analyser.keys
        nm = self.analyser.normal_model[[f"sd_{p}" for p in PARAMS]]
        nm.columns = list(PARAMS)
        if gk:
            keys = index.droplevel(list(tk)) if len(index.names) > len(gk) else index
            return nm.reindex(keys)
        return pd.DataFrame(np.repeat(nm.to_numpy(), len(index), axis=0), columns=list(PARAMS))

    def signatures(self, X):
        """Fitted shape signatures, one row per trace.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.

        Returns
        -------
        signatures : pandas.DataFrame
            Index ``group_keys + trace_keys``; columns ``gamma, R, omega, y, phi, c``, ``ssr``,
            ``n_points``, ``lot``, ``prior`` (``"lot"`` or ``"normal"``: the prior the signature
            was fitted with), ``score`` and ``status``.
        """
        res = self.analyser.traces(X)
        return res[[*PARAMS, "ssr", "n_points", "lot", "prior", "score", "status"]]

    def signature_table(self, X, *, columns=SIGNATURE_COLUMNS):
        """The paper's layout: one row per wafer in time order, one column per (group, parameter).

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces.
        columns : sequence of str, default=(gamma, R, omega, y, phi, c, "ssr", "score")
            Per-trace quantities to spread into columns.

        Returns
        -------
        table : pandas.DataFrame
            Index ``trace_keys`` (order of first appearance in ``X``); columns a MultiIndex
            ``group_keys + ("parameter",)``.
        """
        tk, gk = self.analyser.keys
        if isinstance(columns, str):
            columns = (columns,)
        sig = self.signatures(X)
        unknown = [c for c in columns if c not in sig.columns]
        if unknown or not len(columns):
            raise ValueError(
                f"columns must name per-trace quantities of signatures(); unknown {unknown}, "
                f"expected some of {list(sig.columns)}."
            )
        sig = sig[list(columns)]
        if not gk:
            return sig
        long = sig.stack().rename("v").reset_index()
        long = long.rename(columns={long.columns[len(gk) + len(tk)]: "parameter"})
        order = pd.unique(sig.index.droplevel(list(gk)))
        table = long.pivot_table(index=list(tk), columns=[*gk, "parameter"], values="v", sort=False)
        return table.reindex(order)

    def explain_change(self, X, before, after):
        """Attribute the score change between two traces (or wafers) to the parameters.

        The paper's change-point gradient (section 5) is the midpoint Taylor expansion
        ``g_mid = grad anom(s_bef) + Hess anom(s_bef) (s_aft - s_bef) / 2``; ``taylor`` is
        ``g_mid * delta``. It is exact for the quadratic prior part, so ``contribution`` gives
        the exact split: ``(s_mid - mu*)/sigma*_S^2 * delta`` per parameter (plus the change of
        the term's centring constant, which depends on each trace's posterior variance), and
        the change of the ``fit`` term; the contributions are the differences of the columns of
        :meth:`explain` and sum exactly to ``score(after) - score(before)``.

        Parameters
        ----------
        X : pandas.DataFrame, dask.dataframe.DataFrame or Traces
            Long-format traces that contain both.
        before, after : scalar or tuple
            ``trace_keys`` values (e.g. two wafer ids). Every group in which both appear is
            compared.

        Returns
        -------
        change : pandas.DataFrame
            Index ``group_keys + ("parameter",)`` with parameters ``gamma ... c`` and ``fit``;
            columns ``before``, ``after``, ``delta``, ``gradient`` (midpoint), ``taylor``,
            ``prior_midpoint`` (``(s_mid - mu*)/sigma*_S^2 * delta``, exactly the change of
            ``z^2/2``) and ``contribution``. For the ``fit`` row ``before``/``after`` are the fit terms and
            ``gradient``/``taylor`` are 0 (the data part is inside the parameter gradients).
        """
        tk, gk = self.analyser.keys
        if _is_dask(X):
            X = X.compute()
        df = self.analyser.prepare(X)
        bkey, akey = key_tuple(before, len(tk)), key_tuple(after, len(tk))
        keyidx = pd.MultiIndex.from_frame(df[list(tk)])
        sel = df[keyidx.isin([bkey, akey])]
        for k, nm in ((bkey, "before"), (akey, "after")):
            if not keyidx.isin([k]).any():
                raise ValueError(f"{nm}={k!r} is not a {list(tk)} value of X.")
        res = self.analyser.analyse(X)
        models = self.analyser.models()
        rows = []
        groups = res.index.droplevel(list(tk)).unique() if gk else [()]
        for g in groups:
            g = key_tuple(g, len(gk))
            kb, ka = (*g, *bkey), (*g, *akey)
            if kb not in res.index or ka not in res.index:
                continue
            rb, ra = res.loc[kb], res.loc[ka]
            if rb["status"] not in ("ok", "not_converged") or ra["status"] not in ("ok", "not_converged"):
                continue
            sb = rb[list(PARAMS)].to_numpy(dtype=np.float64)
            sa = ra[list(PARAMS)].to_numpy(dtype=np.float64)
            m = np.ones(len(sel), dtype=bool)
            for c, v in zip([*gk, *tk], kb):
                m &= (sel[c] == v).to_numpy()
            time, value = self.analyser.cfg.time, self.analyser.cfg.value
            tr = sel[m].sort_values(time)
            traces = Traces.from_arrays(
                [tr[time].to_numpy(np.float64)], [tr[value].to_numpy(np.float64)]
            )
            P = [f"P_{p}" for p in PARAMS]
            split = change_split(
                traces, sb, sa, rb[P].to_numpy(np.float64), ra[P].to_numpy(np.float64), models[g], rb["origin"]
            )
            for j, p in enumerate(PARAMS):
                rows.append((*g, p, sb[j], sa[j], *split[j]))
            dfit = ra["fit"] - rb["fit"]
            rows.append((*g, "fit", rb["fit"], ra["fit"], dfit, 0.0, 0.0, 0.0, dfit))
        if not rows:
            raise ValueError(f"before={before!r} and after={after!r} share no scored group in X.")
        cols = [*gk, "parameter", "before", "after", "delta", "gradient", "taylor", "prior_midpoint", "contribution"]
        return pd.DataFrame(rows, columns=cols).set_index([*gk, "parameter"])
