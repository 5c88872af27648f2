"""Data sets: real data loaders and simulated traces."""

from greyanom.datasets._lam9600 import load_lam9600

__all__ = ["load_lam9600"]
