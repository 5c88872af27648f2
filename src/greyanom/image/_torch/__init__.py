"""Pure-torch parts of the image detectors (modules, training loops, inference, export).

Everything here imports ``torch`` at module level; the estimator wrappers import these
modules only inside their methods, after :func:`greyanom._optional.import_torch`.
"""
