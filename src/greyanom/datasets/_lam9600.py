"""Loader for the LAM 9600 metal etch data (Wise et al. 1999), engineering variables."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["load_lam9600"]

_logger = logging.getLogger(__name__)

#: Wafers dropped on load, with the reason (see the data set's PROVENANCE.md).
DROPPED_WAFERS = {"l3125": "calibration wafer with only 3 samples (dropped by most studies)"}



def load_lam9600(path, *, drop=True):
    """Load ``MACHINE_Data.mat`` (LAM 9600 metal etch, Wise et al. 1999) as a long frame.

    The file holds 108 normal ("calibration") wafers and 21 wafers with induced faults, each a
    multivariate series over recipe steps 4 and 5 sampled about once a second. The data set is
    not distributed with greyanom (it has no explicit license): obtain it from Eigenvector
    Research (``eigenvector.com``, "Metal Etch Data for Fault Detection Evaluation") and cite
    Wise et al. (1999).

    Parameters
    ----------
    path : str or path-like
        The ``MACHINE_Data.mat`` file, or the folder that contains it.
    drop : bool, default=True
        Drop calibration wafer ``l3125``, which has only 3 samples, as most studies do (a
        ``UserWarning`` says so). The 107 normal wafers that remain are those of the literature.

    Returns
    -------
    frame : pandas.DataFrame
        Long format, one row per (wafer, sensor, sample), rows in wafer (time) order, columns

        * ``wafer`` (str, e.g. ``"l2901"``: experiment 29, wafer 01),
        * ``experiment`` (int: 29, 31 or 33; the experiments were run weeks apart and their
          means differ),
        * ``run`` (int: the wafer's number in its experiment, 1-43, its processing order; see
          Notes),
        * ``fault`` (str, e.g. ``"TCP +50"``, or ``None`` for normal wafers),
        * ``step`` (int: 4 or 5),
        * ``sensor`` (str: the 19 variables other than ``Time`` and ``Step Number``),
        * ``t`` (float: the ``Time`` column, seconds),
        * ``value`` (float).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not lead to ``MACHINE_Data.mat``.
    ValueError
        If the file is not a MATLAB file holding the ``LAMDATA`` struct (the message names it).

    Notes
    -----
    Besides ``l3125``, the loader drops every sample whose ``Time`` does not increase. The
    last row of almost every wafer (127 of 129) is a step-4 sample at about 10 s: it repeats
    the first row of the next wafer's file (e.g. the last row of ``l2901`` equals the first
    of ``l2902``), and in five wafers it duplicates a sample time. A ``UserWarning`` gives the
    count. Units are not given in the file. Test wafer ``l3122`` (RF +8) is short (56 samples) but
    kept. The fault labels mean that the named controlled variable was offset; see Wise et al.
    (1999) for how the offsets were applied.

    The file names number the 43 wafers of each experiment 01-43, normal and faulty wafers
    together (e.g. the faults ``l2915``-``l2918`` lie between normal wafers ``l2914`` and
    ``l2919``). The data set does not say that this is the processing order, but the files
    show it: in 115 of the 126 pairs of consecutive numbers the trailing row of wafer ``n``
    (the repeated row above) equals the first row of wafer ``n + 1``. ``run`` is that number
    (``ShapeSignatureDetector(order_key="run")``).

    References
    ----------
    .. [1] B. M. Wise, N. B. Gallagher, S. W. Butler, D. D. White Jr., G. G. Barna, "A comparison
       of principal component analysis, multiway principal component analysis, trilinear
       decomposition and parallel factor analysis for fault detection in a semiconductor etch
       process", J. Chemometrics 13 (1999) 379-396.

    Examples
    --------
    >>> from greyanom.datasets import load_lam9600
    >>> df = load_lam9600("../shared/data/wise_etch_lam9600")  # doctest: +SKIP
    >>> df.groupby("fault", dropna=False)["wafer"].nunique().sum()  # doctest: +SKIP
    128
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = Path(path)
    if path.is_dir():
        path = path / "MACHINE_Data.mat"
    if not path.is_file():
        raise FileNotFoundError(
            f"LAM 9600 data not found at {path}: expected MACHINE_Data.mat (Eigenvector Research, "
            "'Metal Etch Data for Fault Detection Evaluation')."
        )
    try:
        d = loadmat(str(path), struct_as_record=False)["LAMDATA"][0, 0]
    except (MatReadError, ValueError, TypeError, KeyError, IndexError, OSError, NotImplementedError) as exc:
        # scipy raises MatReadError (an Exception) or ValueError on non-MAT bytes; no LAMDATA is a KeyError
        raise ValueError(
            f"{str(path)!r} is not the LAM 9600 MACHINE_Data.mat (a MATLAB file with a LAMDATA struct): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    variables = [str(v).strip() for v in d.variables]
    if variables[:2] != ["Time", "Step Number"]:
        raise ValueError(f"{path}: unexpected variables {variables[:2]}; expected 'Time', 'Step Number' first.")
    sensors = variables[2:]
    sets = [
        (d.calibration, [str(n).strip() for n in d.calib_names], [None] * d.calibration.shape[0]),
        (d.test, [str(n).strip() for n in d.test_names], [str(f).strip() for f in d.fault_names]),
    ]
    frames = []
    dropped = []
    out_of_order = []
    for cells, names, faults in sets:
        for i, (name, fault) in enumerate(zip(names, faults)):
            wafer = name.split(".")[0]
            if drop and wafer in DROPPED_WAFERS:
                dropped.append(wafer)
                continue
            a = np.asarray(cells[i, 0], dtype=np.float64)
            # most wafers end with the first sample of the next wafer's run (Time goes back)
            prev_max = np.maximum.accumulate(np.r_[-np.inf, a[:-1, 0]])
            keep = a[:, 0] > prev_max
            if not keep.all():
                out_of_order.append((wafer, int((~keep).sum())))
                a = a[keep]
            n = a.shape[0]
            frames.append(
                pd.DataFrame(
                    {
                        "wafer": wafer,
                        "experiment": int(wafer[1:3]),
                        "run": int(wafer[3:5]),
                        "fault": fault,
                        "step": np.tile(a[:, 1].astype(np.int64), len(sensors)),
                        "sensor": np.repeat(sensors, n),
                        "t": np.tile(a[:, 0], len(sensors)),
                        "value": a[:, 2:].T.ravel(),
                    }
                )
            )
    if dropped:
        msg = "; ".join(f"{w}: {DROPPED_WAFERS[w]}" for w in dropped)
        warnings.warn(f"load_lam9600 dropped wafer(s) {msg}. Pass drop=False to keep them.", UserWarning, stacklevel=2)
        _logger.info("load_lam9600 dropped %s", dropped)
    if out_of_order:
        warnings.warn(
            f"load_lam9600 dropped {sum(k for _, k in out_of_order)} sample(s) whose Time goes back, "
            f"from {len(out_of_order)} wafer(s) (first: {out_of_order[0][0]}): the last row of most "
            "wafers repeats the first sample of the next wafer's run.",
            UserWarning,
            stacklevel=2,
        )
    df = pd.concat(frames, ignore_index=True)
    df["fault"] = df["fault"].astype(object).where(df["fault"].notna(), None)
    order = {w: k for k, w in enumerate(sorted(df["wafer"].unique()))}
    df = df.iloc[np.argsort(df["wafer"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)
    return df
