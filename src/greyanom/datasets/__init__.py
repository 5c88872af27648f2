"""Data sets: synthetic wafer images, simulated PI-loop traces and loaders for real data.

Real data (MVTec AD, the LAM 9600 etch set) is read from a path the user gives; greyanom never
ships or downloads it.
"""

from greyanom.datasets._dies import make_die_images
from greyanom.datasets._folder import load_image_folder
from greyanom.datasets._images import make_wafer_images
from greyanom.datasets._lam9600 import load_lam9600
from greyanom.datasets._mvtec import load_mvtec
from greyanom.datasets._pi_loop import simulate_pi_loop
from greyanom.datasets._pi_lots import PI_FAULTS, make_pi_lots

__all__ = [
    "PI_FAULTS",
    "load_image_folder",
    "load_lam9600",
    "load_mvtec",
    "make_die_images",
    "make_pi_lots",
    "make_wafer_images",
    "simulate_pi_loop",
]
