"""Throughput and robustness of ``fit_traces`` beside per-trace scipy loops.

Usage::

    PYTHONPATH=src python benchmarks/shape_fit_report.py [--n-traces 20000] [--n-scipy 400]
        [--large 131200] [--rst docs/guide/_shape_fit_table.rst] [--csv table.csv]

All solvers run in one process on the same simulated PI-loop traces (about 150 irregular
samples each, see ``benchmarks/benchmarks/shape_fit.py``). Rows:

* ``fit_traces`` cold start on 1 thread and on all threads;
* ``fit_traces`` started at the true parameters (the reference success rate);
* scipy ``least_squares`` (trust-region reflective, analytic Jacobian, bounds
  ``omega >= 0``, ``|phi| <= pi/2``) and ``curve_fit`` (Levenberg-Marquardt, analytic
  Jacobian) looped over traces, warm-started from the nominal loop's signature;
* optionally the paper-sized batch (131,200 traces) on all threads.

Columns: traces per second (wall clock), CPU seconds per 1,000 traces (what the solver
costs when the machine is shared), solver success rate, the share of traces whose SSR is
within 1e-6 (relative) of the fit started at the truth ("at optimum"), mean iterations.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "benchmarks"))
from shape_fit import make_lot_traces  # noqa: E402


def _alpha(p, tau):
    g, r, w, y, phi, c = p
    return r * np.exp(-g * tau / 2) * np.cos(w * tau - phi) + c * tau + y


def _jac(p, tau):
    g, r, w, y, phi, c = p
    e = np.exp(-g * tau / 2)
    cc = np.cos(w * tau - phi)
    ss = np.sin(w * tau - phi)
    return np.stack([-0.5 * tau * r * e * cc, e * cc, -tau * r * e * ss, np.ones_like(tau), r * e * ss, tau], axis=1)


def _timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _scipy_loop(traces, start, kind):
    from scipy.optimize import curve_fit, least_squares

    n = len(traces)
    ssr = np.full(n, np.nan)
    ok = np.zeros(n, dtype=bool)
    nfev = np.zeros(n)
    lo = np.array([-np.inf, -np.inf, 0.0, -np.inf, -np.pi / 2, -np.inf])
    hi = np.array([np.inf, np.inf, np.inf, np.inf, np.pi / 2, np.inf])
    for j in range(n):
        t, z = traces[j]
        tau = t - t[0]
        p0 = np.clip(start[j], lo + 1e-12, hi - 1e-12)
        try:
            if kind == "least_squares":
                res = least_squares(lambda p: _alpha(p, tau) - z, p0, jac=lambda p: _jac(p, tau), bounds=(lo, hi))
                p, ok[j], nfev[j] = res.x, res.success, res.nfev
            else:
                p, _, info, _, ier = curve_fit(
                    lambda tt, *q: _alpha(q, tt), tau, z, p0=p0, jac=lambda tt, *q: _jac(q, tt), full_output=True
                )
                ok[j], nfev[j] = ier in (1, 2, 3, 4), info["nfev"]
            ssr[j] = np.sum((z - _alpha(p, tau)) ** 2)
        except (RuntimeError, ValueError):
            ok[j] = False
    return ssr, ok, nfev


def run(n_traces=20000, n_scipy=400, large=131200, seed=0):
    import numba

    from greyanom.traces import fit_traces

    warnings.simplefilter("ignore")
    traces, truth, nominal = make_lot_traces(n_traces, random_state=seed)
    fit_traces(traces[:10], n_jobs=1)  # JIT (or cache load) outside the timers
    threads = numba.config.NUMBA_NUM_THREADS
    rows = []

    ref = fit_traces(traces, init=truth)
    ref_ssr = ref.ssr

    def at_opt(ssr, idx=slice(None)):
        return float(np.mean(ssr <= ref_ssr[idx] * (1 + 1e-6) + 1e-12))

    for n_jobs, label in ((1, "fit_traces, cold start, 1 thread"), (-1, f"fit_traces, cold start, {threads} threads")):
        best = None
        for _ in range(2):
            out = _timed(lambda: fit_traces(traces, n_jobs=n_jobs))
            best = out if best is None or out[1] < best[1] else best
        fit, wall, cpu = best
        rows.append((label, n_traces, n_traces / wall, 1000 * cpu / n_traces, fit.success.mean(), at_opt(fit.ssr), fit.n_iter.mean()))
    fit, wall, cpu = _timed(lambda: fit_traces(traces, init=truth, n_jobs=-1))
    rows.append((f"fit_traces, started at the truth, {threads} threads", n_traces, n_traces / wall, 1000 * cpu / n_traces,
                 fit.success.mean(), at_opt(fit.ssr), fit.n_iter.mean()))
    sub = np.arange(min(n_scipy, n_traces))
    for kind in ("least_squares", "curve_fit"):
        (ssr, ok, nfev), wall, cpu = _timed(lambda: _scipy_loop(traces[sub], nominal[sub], kind))
        rows.append((f"scipy {kind} loop, warm start (nominal)", sub.size, sub.size / wall, 1000 * cpu / sub.size,
                     ok.mean(), at_opt(ssr, sub), nfev.mean()))
    if large:
        big, big_truth, _ = make_lot_traces(large, random_state=seed + 1)
        fit, wall, cpu = _timed(lambda: fit_traces(big, n_jobs=-1))
        rows.append((f"fit_traces, cold start, {threads} threads, paper-size batch", large, large / wall,
                     1000 * cpu / large, fit.success.mean(), float("nan"), fit.n_iter.mean()))
        rows.append((f"  (wall time for {large:,} traces: {wall:.1f} s)", large, float("nan"), float("nan"),
                     float("nan"), float("nan"), float("nan")))
    return rows


HEADER = ("solver", "traces", "traces/s", "CPU s / 1k traces", "success", "at optimum", "iterations (scipy: nfev)")


def _fmt(row):
    out = [row[0], f"{row[1]:,}"]
    for v, f in zip(row[2:], ("{:,.0f}", "{:.2f}", "{:.4f}", "{:.4f}", "{:.1f}")):
        out.append("" if not np.isfinite(v) else f.format(v))
    return out


def to_rst(rows):
    cells = [list(HEADER)] + [_fmt(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(cells[0], widths)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells[1:]]
    lines.append(rule)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-traces", type=int, default=20000)
    parser.add_argument("--n-scipy", type=int, default=400)
    parser.add_argument("--large", type=int, default=131200, help="0 to skip the paper-size batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rst", type=pathlib.Path)
    parser.add_argument("--csv", type=pathlib.Path)
    args = parser.parse_args(argv)
    rows = run(args.n_traces, args.n_scipy, args.large, args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at the end"
    table = to_rst(rows)
    print(table)
    print(machine)
    if args.rst:
        args.rst.write_text(table + "\n")
    if args.csv:
        import csv

        with args.csv.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            writer.writerows(rows)


if __name__ == "__main__":
    main()
