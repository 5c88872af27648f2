"""Progress of long stages: a tqdm bar where someone watches, one timed log line always.

The one helper for training loops, feature extraction and long scoring, so that every
stage reports the same way: with ``verbose=True`` a tqdm bar on standard error; with
``verbose=None`` a bar only when standard error is a terminal; and in every case one
``INFO`` log line when the stage ends, with its item count and time (what a log file or a
CI run keeps when bars are off).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

__all__ = ["progress_stage"]

_logger = logging.getLogger("greyanom")


def _bars_wanted(verbose):
    if verbose is None:
        stream = sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(verbose)


@contextlib.contextmanager
def progress_stage(desc, *, total=None, unit="it", verbose=None, logger=None):
    """Context manager for one stage of work; yields a tqdm bar (disabled when not wanted).

    Parameters
    ----------
    desc : str
        Name of the stage, e.g. ``"PaDiMDetector features"``.
    total : int, optional
        Number of items, if known.
    unit : str, default="it"
        Name of one item (``"img"``, ``"epoch"``).
    verbose : bool or None, default=None
        True: show the bar; False: no bar; None: a bar only if standard error is a terminal.
    logger : logging.Logger, optional
        Where the closing line goes (default the ``greyanom`` logger).

    Yields
    ------
    bar : tqdm.tqdm
        Call ``bar.update(n)`` after ``n`` items (also when the bar is disabled: the count
        goes into the log line).

    Examples
    --------
    >>> from greyanom._progress import progress_stage
    >>> with progress_stage("demo stage", total=3, unit="img", verbose=False) as bar:
    ...     for _ in range(3):
    ...         bar.update(1)
    >>> bar.n
    3
    """
    from tqdm.auto import tqdm

    logger = logger or _logger
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not _bars_wanted(verbose), leave=False)
    # a disabled tqdm does not count; keep the count for the log line
    count = [0]
    update = bar.update

    def counting_update(n=1):
        count[0] += n
        return update(n)

    bar.update = counting_update
    try:
        yield bar
    finally:
        bar.close()
        bar.n = count[0]
        elapsed = time.perf_counter() - start
        done = f"{count[0]} {unit}" + (f" of {total}" if total is not None and total != count[0] else "")
        logger.info("%s: %s in %.1f s", desc, done, elapsed)
