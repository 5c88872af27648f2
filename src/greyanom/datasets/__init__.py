"""Data sets: real data loaders, simulators and simulated traces."""

from greyanom.datasets._lam9600 import load_lam9600
from greyanom.datasets._pi_loop import simulate_pi_loop
from greyanom.datasets._pi_lots import PI_FAULTS, make_pi_lots

__all__ = ["PI_FAULTS", "load_lam9600", "make_pi_lots", "simulate_pi_loop"]
