"""Data sets: synthetic wafer images and loaders for real inspection data."""

from greyanom.datasets._images import make_wafer_images
from greyanom.datasets._mvtec import load_mvtec

__all__ = ["load_mvtec", "make_wafer_images"]
