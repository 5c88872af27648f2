"""Simulated lots of PI-controlled process traces, with injected faults."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from sklearn.utils import check_random_state

from greyanom.datasets._pi_loop import simulate_pi_loop

__all__ = ["make_pi_lots", "PI_FAULTS", "NOMINAL_LOOP"]

#: Nominal loop: process gain/time constant, controller gain/integral time, set point
#: r(t) = q1 t + q2, start value v0. Underdamped: tau_I < 4 kbar tau_p / (1 + kbar)^2.
NOMINAL_LOOP = {"kp": 2.0, "tau_p": 5.0, "kc": 1.5, "tau_I": 1.5, "q1": 0.01, "q2": 1.0, "v0": 0.0}

#: Fault types at ``fault_scale=1``: what they change, and the signature terms they act on. Loop-gain and time-constant
#: faults change the transient (gamma, omega, and through the state at the step start R and phi),
#: set-point faults the steady state (y, c); noise faults only the fit; a truncated step none.
PI_FAULTS = {
    "controller_gain": ("kc x 1.6", ("gamma", "R", "omega", "phi")),
    "process_gain": ("kp x 0.6", ("gamma", "R", "omega", "phi")),
    "time_constant": ("tau_p x 1.6", ("gamma", "R", "omega", "phi")),
    "setpoint_offset": ("q2 + 0.08", ("y",)),
    "setpoint_slope": ("q1 + 0.01", ("c",)),
    "noise_burst": ("noise x 6 over 20% of the step", ("fit",)),
    "outliers": ("3 spikes of 12 noise sd", ("fit",)),
    "truncated": ("step cut at 45% of its duration", ()),
}


def _simulate(times, p, sensors):
    """Noise-free closed-loop response of each sensor (``simulate_pi_loop``, i.e. solve_ivp)."""
    kw = {"tau_p": p["tau_p"], "k_p": p["kp"], "k_c": p["kc"], "tau_I": p["tau_I"],
          "q1": p["q1"], "q2": p["q2"], "v0": p["v0"], "rtol": 1e-8, "atol": 1e-10}
    return {s: simulate_pi_loop(times, sensor=s, **kw) for s in sensors}


def make_pi_lots(
    *,
    n_lots=4,
    wafers_per_lot=8,
    n_points=(60, 100),
    duration=20.0,
    sensors=("v",),
    loop=None,
    spread=0.03,
    noise_sd=0.01,
    faults=(),
    n_clean_lots=2,
    fault_scale=1.0,
    random_state=None,
):
    """Simulate lots of wafers through a PI control loop, optionally with injected faults.

    Each wafer runs one recipe step: process (1) under a PI controller (2) with a set point
    ``r(t) = q1 t + q2`` is integrated by :func:`~greyanom.datasets.simulate_pi_loop`
    (:func:`scipy.integrate.solve_ivp`) and sampled at irregular times, then Gaussian noise is
    added. Wafers differ by a small random spread of
    the process parameters, the set point and the start value; the controller is fixed.

    Parameters
    ----------
    n_lots : int, default=4
        Number of lots.
    wafers_per_lot : int, default=8
        Wafers per lot.
    n_points : int or (int, int), default=(60, 100)
        Samples per trace (at least 3), or a range drawn uniformly per wafer.
    duration : float, default=20.0
        Length of the step (time units); sample times are irregular and start at a random
        offset of up to 1 (the step start ``x`` is data, not a parameter).
    sensors : tuple of {"v", "u"}, default=("v",)
        ``"v"``: the controlled variable; ``"u"``: the controller output.
    loop : dict or None, default=None
        Overrides of :data:`NOMINAL_LOOP` (``kp, tau_p, kc, tau_I, q1, q2, v0``).
    spread : float, default=0.03
        Relative wafer-to-wafer standard deviation of ``kp`` and ``tau_p``; ``q2`` and ``v0``
        vary with standard deviation ``spread / 3`` (absolute).
    noise_sd : float, default=0.01
        Measurement noise standard deviation (for ``u``, scaled by ``kc``).
    faults : sequence of str or dict, default=()
        Fault types (keys of :data:`PI_FAULTS`) to inject, each into one wafer chosen at random
        among the lots after the first ``n_clean_lots``; a dict ``{fault: count}`` injects
        ``count`` wafers of each.
    n_clean_lots : int, default=2
        Leading lots kept free of faults (for the detector's initial fit).
    fault_scale : float in [0, 1.8], default=1.0
        Size of every fault relative to :data:`PI_FAULTS` (e.g. ``0.25``: ``kc x 1.15``,
        ``q2 + 0.02``, a step cut at 86 % of its duration; above 1.8 a truncated step would
        have no length).
    random_state : int, RandomState instance or None, default=None
        Seed.

    Returns
    -------
    frame : pandas.DataFrame
        Long format with columns ``lot``, ``wafer``, ``sensor``, ``t``, ``value`` and ``fault``
        (``None`` for normal wafers), rows in time order.

    Examples
    --------
    >>> from greyanom.datasets import make_pi_lots
    >>> df = make_pi_lots(n_lots=2, wafers_per_lot=3, faults=["setpoint_offset"], n_clean_lots=1,
    ...                   random_state=0)
    >>> sorted(df.columns)
    ['fault', 'lot', 'sensor', 't', 'value', 'wafer']
    >>> int(df.groupby("wafer")["fault"].first().notna().sum())
    1
    """
    rng = check_random_state(random_state)
    for name, v in (("n_lots", n_lots), ("wafers_per_lot", wafers_per_lot)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    if isinstance(sensors, str) or not isinstance(sensors, (tuple, list)):
        raise TypeError(f"sensors must be a tuple of 'v' and 'u', got {sensors!r}.")
    bad = [s for s in sensors if s not in ("v", "u")]
    if bad or not sensors or len(set(sensors)) != len(sensors):
        raise ValueError(f"sensors must be a non-empty tuple of distinct 'v' and 'u', got {sensors!r}.")
    pts = (n_points, n_points) if isinstance(n_points, numbers.Integral) else n_points
    try:
        lo_pts, hi_pts = pts
    except (TypeError, ValueError):
        raise TypeError(f"n_points must be an int or a pair (low, high) of ints, got {n_points!r}.") from None
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in (lo_pts, hi_pts)):
        raise TypeError(f"n_points must be an int or a pair (low, high) of ints, got {n_points!r}.")
    if not 3 <= lo_pts <= hi_pts:
        raise ValueError(f"n_points must be at least 3 (and low <= high for a range), got {n_points!r}.")
    if isinstance(n_clean_lots, bool) or not isinstance(n_clean_lots, numbers.Integral) or not 0 <= n_clean_lots <= n_lots:
        raise ValueError(f"n_clean_lots must be an integer in [0, n_lots={n_lots}], got {n_clean_lots!r}.")
    for name, v, lo_v, hi_v in (("duration", duration, 0.0, None), ("spread", spread, 0.0, 1.0),
                                ("noise_sd", noise_sd, 0.0, None), ("fault_scale", fault_scale, 0.0, 1.8)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v < lo_v \
                or (name == "duration" and v == 0) or (hi_v is not None and v > hi_v):
            what = "> 0" if name == "duration" else (f"in [{lo_v:g}, {hi_v:g}]" if hi_v is not None else ">= 0")
            raise ValueError(f"{name} must be a finite number {what}, got {v!r}.")
    if isinstance(faults, str) or not isinstance(faults, (dict, list, tuple, set, frozenset)) or not all(
        isinstance(f, str) for f in faults
    ):
        raise TypeError(f"faults must be a sequence of fault names or a dict {{fault: count}}, got {faults!r}.")
    if isinstance(faults, dict) and any(
        isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0 for c in faults.values()
    ):
        raise ValueError(f"faults counts must be integers >= 0, got {faults!r}.")
    if loop is not None and not isinstance(loop, dict):
        raise TypeError(f"loop must be a dict of overrides of NOMINAL_LOOP or None, got {loop!r}.")
    p0 = dict(NOMINAL_LOOP)
    if loop:
        unknown = set(loop) - set(p0)
        if unknown:
            raise ValueError(f"loop has unknown key(s) {sorted(unknown)}; expected keys of {sorted(p0)}.")
        p0.update(loop)
    counts = dict(faults) if isinstance(faults, dict) else {f: 1 for f in faults}
    unknown = set(counts) - set(PI_FAULTS)
    if unknown:
        raise ValueError(f"unknown fault type(s) {sorted(unknown)}; expected keys of PI_FAULTS: {sorted(PI_FAULTS)}.")
    lo, hi = (n_points, n_points) if isinstance(n_points, numbers.Integral) else n_points
    candidates = [(lot, w) for lot in range(n_clean_lots, n_lots) for w in range(wafers_per_lot)]
    n_faulty = sum(counts.values())
    if n_faulty > len(candidates):
        raise ValueError(
            f"{n_faulty} faulty wafers requested but only {len(candidates)} wafers lie after the "
            f"first n_clean_lots={n_clean_lots} lots."
        )
    chosen = rng.choice(len(candidates), size=n_faulty, replace=False) if n_faulty else []
    assignment = {}
    k = 0
    for f in sorted(counts):
        for _ in range(counts[f]):
            assignment[candidates[chosen[k]]] = f
            k += 1
    frames = []
    for lot in range(n_lots):
        for w in range(wafers_per_lot):
            fault = assignment.get((lot, w))
            p = dict(p0)
            p["kp"] *= 1.0 + spread * rng.standard_normal()
            p["tau_p"] *= 1.0 + spread * rng.standard_normal()
            p["q2"] += spread / 3.0 * rng.standard_normal()
            p["v0"] += spread / 3.0 * rng.standard_normal()
            if fault == "controller_gain":
                p["kc"] *= 1.0 + 0.6 * fault_scale
            elif fault == "process_gain":
                p["kp"] *= 1.0 - 0.4 * fault_scale
            elif fault == "time_constant":
                p["tau_p"] *= 1.0 + 0.6 * fault_scale
            elif fault == "setpoint_offset":
                p["q2"] += 0.08 * fault_scale
            elif fault == "setpoint_slope":
                p["q1"] += 0.01 * fault_scale
            n = int(rng.randint(lo, hi + 1))
            span = duration * (1.0 - 0.55 * fault_scale if fault == "truncated" else 1.0)
            times = np.sort(rng.uniform(0.0, span, n))
            times[0] = 0.0
            times = np.unique(times)
            clean = _simulate(times, p, sensors)
            start = rng.uniform(0.0, 1.0)
            for s in sensors:
                sd = noise_sd * (p["kc"] if s == "u" else 1.0)
                noise = sd * rng.standard_normal(times.size)
                if fault == "noise_burst":
                    a = rng.uniform(0.1, 0.7) * times[-1]
                    noise[(times >= a) & (times < a + 0.2 * times[-1])] *= 1.0 + 5.0 * fault_scale
                elif fault == "outliers":
                    idx = rng.choice(times.size, size=3, replace=False)
                    noise[idx] += 12.0 * fault_scale * sd * rng.choice([-1.0, 1.0], size=3)
                frames.append(
                    pd.DataFrame(
                        {
                            "lot": f"L{lot:02d}",
                            "wafer": f"L{lot:02d}W{w:02d}",
                            "sensor": s,
                            "t": times + start,
                            "value": clean[s] + noise,
                            "fault": fault,
                        }
                    )
                )
    df = pd.concat(frames, ignore_index=True)
    df["fault"] = df["fault"].astype(object).where(df["fault"].notna(), None)
    return df
