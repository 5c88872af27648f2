"""Data sets and simulators."""

from greyanom.datasets._pi_loop import simulate_pi_loop

__all__ = ["simulate_pi_loop"]
