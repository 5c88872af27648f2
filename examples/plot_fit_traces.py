"""
Fitting shape signatures to PI-loop traces
==========================================

Simulate a lot of wafers whose temperature is held by a PI controller (the process (1) and
controller (2) of the grey-box paper, integrated by :func:`scipy.integrate.solve_ivp`), fit
the damped, linearly driven oscillator to every trace with
:func:`greyanom.traces.fit_traces`, and read the loop back from the signatures.
"""

# %%
# A lot of simulated loops
# ------------------------
# Each wafer's loop differs a little in process gain and time constant; samples are taken
# at irregular times, a little after the recipe step starts. Two wafers are special: one
# has a much longer integral time (an overdamped loop, which the paper's (11) cannot
# describe) and one a sticky heater (lower process gain).
import matplotlib.pyplot as plt
import numpy as np

from greyanom.datasets import simulate_pi_loop
from greyanom.traces import Traces, control, fit_traces

rng = np.random.default_rng(0)
nominal = dict(tau_p=8.0, k_p=1.5, k_c=2.0, tau_I=3.0, q1=0.01, q2=1.0)
loops, times, values = [], [], []
for wafer in range(24):
    loop = dict(nominal, tau_p=nominal["tau_p"] * rng.lognormal(0, 0.05), k_p=nominal["k_p"] * rng.lognormal(0, 0.05))
    if wafer == 7:
        loop["tau_I"] = 9.0  # overdamped
    if wafer == 15:
        loop["k_p"] = 0.6  # weak heater
    t = np.sort(rng.uniform(1.0, 60.0, rng.integers(130, 170)))
    loops.append(loop)
    times.append(t)
    values.append(simulate_pi_loop(t, **loop, noise_sd=0.005, random_state=wafer))

traces = Traces.from_arrays(times, values, keys=[f"wafer{w:02d}" for w in range(24)])
traces

# %%
# Fit every trace
# ---------------
# A cold start (variable projection on a grid of decay rates and frequencies) followed by
# Levenberg-Marquardt; each trace gets its regime, its status and, for underdamped loops,
# the paper's signature ``(gamma, R, omega, y, phi, c)``.
fit = fit_traces(traces)
print(fit)
print(fit.to_frame().round(4).iloc[[0, 7, 15]])

# %%
# The fitted curves
# -----------------
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
grid = np.linspace(1.0, 60.0, 400)
curves = fit.predict(grid)
for ax, j in zip(axes, (0, 7, 15)):
    t, z = traces[j]
    ax.plot(t, z, ".", ms=3, color="0.5", label="samples")
    ax.plot(grid, curves[j], color="C3", label="fit")
    ax.set_title(f"{traces.keys[j]}: {fit.regime[j]}")
    ax.set_xlabel("time (s)")
axes[0].set_ylabel("temperature")
axes[0].legend()
fig.tight_layout()

# %%
# From signatures back to the loop
# --------------------------------
# The slope is the set-point slope (``c = q1``) whatever the loop, and with the controller
# known (``k_c``, ``tau_I``) the process time constant and gain follow uniquely. The weak
# heater stands out at once.
under = fit.regime == "underdamped"
p = fit.params[under]
y0 = p.y - p.c * fit.x[under]  # y at the start of the step
pi = control.pi_from_oscillator(p.gamma, p.omega, p.c, y0, k_c=nominal["k_c"], tau_I=nominal["tau_I"])
true_kp = np.array([loop["k_p"] for loop in loops])[under]

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.scatter(fit.params.gamma, fit.params.omega, c=np.where(under, "C0", "C1"))
ax1.set_xlabel(r"$\gamma$")
ax1.set_ylabel(r"$\omega$ (NaN, not drawn, where overdamped)")
ax1.set_title("signatures")
ax2.plot(true_kp, pi.k_p, "o")
ax2.axline((1, 1), slope=1, color="0.6", lw=1)
ax2.set_xlabel("true process gain $k_p$")
ax2.set_ylabel("recovered $k_p$")
ax2.set_title("process gain from the signature")
fig.tight_layout()
print("slope c vs set-point slope q1:", float(np.median(fit.params.c)), nominal["q1"])
