"""asv benchmarks of the shape-signature engine (``greyanom.traces.fit_traces``).

The traces come from a lot of simulated PI loops (first-order process under PI control,
the paper's (1)-(2)) whose process gains, time constants, integral times, set points and
initial states vary from trace to trace around a nominal loop; each trace has about 150
irregular samples and Gaussian measurement noise. The closed-form response of the loop
(the paper's (11) with the map (12), checked against ``solve_ivp`` in the test suite) is
used here so that building 131,200 traces takes a second, not an hour.

``make_lot_traces`` is shared with ``benchmarks/shape_fit_report.py``.
"""

import warnings

import numpy as np

#: The nominal loop: k_bar = 3, gamma = 0.5, k = 0.125, omega = 0.25 (underdamped).
NOMINAL = dict(tau_p=8.0, k_p=1.5, k_c=2.0, tau_I=3.0, q1=0.01, q2=1.0)
SPAN = 60.0
NOISE_SD = 0.01


def _signature_at(x, tau_p, k_p, k_c, tau_I, q1, q2, v0):
    """Paper signature (gamma, R, omega, y, phi, c) at time shift x of a loop started at t = 0."""
    kb = k_p * k_c
    gamma = (1 + kb) / tau_p
    k = kb / (tau_I * tau_p)
    omega = np.sqrt(k - gamma**2 / 4)
    c = q1
    y0 = q2 - q1 * tau_I / kb
    u_plus = k_c * (q2 - v0)  # u(0+) with I(0) = 0 and u0 = 0
    dv0 = (-v0 + k_p * u_plus) / tau_p
    a = v0 - y0
    b = (dv0 - c + gamma / 2 * a) / omega
    r0 = np.hypot(a, b)
    phi0 = np.arctan2(b, a)
    r = r0 * np.exp(-gamma * x / 2)
    phi = phi0 - omega * x
    # canonical phi in [-pi/2, pi/2] with a signed R
    phi = (phi + np.pi) % (2 * np.pi) - np.pi
    flip = np.abs(phi) > np.pi / 2
    phi = np.where(flip, phi - np.sign(phi) * np.pi, phi)
    r = np.where(flip, -r, r)
    return np.stack([gamma, r, omega, y0 + c * x, phi, np.full_like(gamma, c) if np.ndim(c) == 0 else c], axis=1)


def make_lot_traces(n_traces, *, n_points=150, spread=0.1, noise_sd=NOISE_SD, random_state=0):
    """Simulated PI-loop traces, their true signatures and the nominal signatures.

    Returns
    -------
    traces : greyanom.traces.Traces
    truth : ndarray of shape (n_traces, 6)
        True signatures at each trace's ``x = min t``.
    nominal : ndarray of shape (n_traces, 6)
        The nominal loop's signature at each trace's ``x`` (the warm start of the peers).
    """
    from greyanom.traces import Traces

    rng = np.random.default_rng(random_state)
    n = n_traces
    ln = lambda: np.exp(rng.normal(0.0, spread, n))  # noqa: E731
    tau_p = NOMINAL["tau_p"] * ln()
    k_p = NOMINAL["k_p"] * ln()
    k_c = np.full(n, NOMINAL["k_c"])
    tau_I = NOMINAL["tau_I"] * ln()
    q1 = NOMINAL["q1"] * (1 + rng.normal(0.0, spread, n))
    q2 = NOMINAL["q2"] + rng.normal(0.0, spread * 0.2, n)
    v0 = rng.normal(0.0, 0.05, n)
    counts = rng.integers(n_points - 20, n_points + 21, size=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    trace = np.repeat(np.arange(n), counts)
    start = rng.uniform(0.5, 2.0, n)  # the first sample comes a little after the step start
    t = start[trace] + rng.uniform(0.0, SPAN, total)
    order = np.lexsort((t, trace))
    t = t[order]
    x = t[offsets[:-1]]
    truth = _signature_at(x, tau_p, k_p, k_c, tau_I, q1, q2, v0)
    nominal = _signature_at(
        x, *(np.full(n, NOMINAL[k]) for k in ("tau_p", "k_p", "k_c", "tau_I", "q1", "q2")), np.zeros(n)
    )
    g, r, w, y, phi, c = (truth[trace, i] for i in range(6))
    tau = t - x[trace]
    z = r * np.exp(-g * tau / 2) * np.cos(w * tau - phi) + c * tau + y
    z = z + rng.normal(0.0, noise_sd, total)
    return Traces(t, z, offsets), truth, nominal


class FitTraces:
    """Cold-start ``fit_traces`` on 2,000 traces, 1 thread and all threads."""

    params = [1, -1]
    param_names = ["n_jobs"]
    timeout = 300

    def setup(self, n_jobs):
        from greyanom.traces import fit_traces

        self.traces, self.truth, _ = make_lot_traces(2000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_traces(self.traces[:10], n_jobs=n_jobs)  # JIT warm-up outside the timer

    def time_fit_traces(self, n_jobs):
        from greyanom.traces import fit_traces

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_traces(self.traces, n_jobs=n_jobs)

    def peakmem_fit_traces(self, n_jobs):
        from greyanom.traces import fit_traces

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_traces(self.traces, n_jobs=n_jobs)

    def track_success_rate(self, n_jobs):
        from greyanom.traces import fit_traces

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fit_traces(self.traces, n_jobs=n_jobs).success.mean())

    def track_mean_iterations(self, n_jobs):
        from greyanom.traces import fit_traces

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fit_traces(self.traces, n_jobs=n_jobs).n_iter.mean())


class FitTracesWithPrior:
    """Warm-started, prior-penalised ``fit_traces`` (the inner step of the hierarchical fit)."""

    timeout = 300

    def setup(self):
        from greyanom.traces import fit_traces

        self.traces, self.truth, _ = make_lot_traces(2000)
        self.prior = (self.truth.mean(axis=0), self.truth.std(axis=0) + 1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_traces(self.traces[:10], prior=self.prior, noise_sd=NOISE_SD, init=self.truth[:10])

    def time_fit_with_prior(self):
        from greyanom.traces import fit_traces

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_traces(self.traces, prior=self.prior, noise_sd=NOISE_SD, init=self.truth)
