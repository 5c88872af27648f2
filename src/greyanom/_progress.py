"""Progress of long stages: a tqdm bar where someone watches, timed log lines always.

The one helper for fitting, training loops, feature extraction and long scoring, so that
every stage reports the same way:

* with ``verbose=True`` a tqdm bar on standard error; with ``verbose=None`` a bar only when
  standard error is a terminal;
* one log line when the stage ends, timing the whole stage (from entering to leaving the
  ``with`` block), with its item count and, if the stage named its phases, each phase's time;
  a stage run inside another (feature extraction inside a fit, the folds of a held-out
  calibration) logs at ``DEBUG`` with the outer stage's name in front, the outermost at ``INFO``;
* where no bar is shown and standard error is not a terminal (a log file, a CI run), a heartbeat line every
  :data:`HEARTBEAT_S` seconds while the outermost stage runs: its elapsed time, its phase and
  the innermost stage's done/total, rate and ETA, so that a log file never falls silent.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time

__all__ = ["progress_stage", "HEARTBEAT_S"]

_logger = logging.getLogger("greyanom")

#: seconds between heartbeat lines of a running stage when no bar is shown
HEARTBEAT_S = 30.0

# the stages open in this thread (outermost first); other threads start their own
_open_stages = contextvars.ContextVar("greyanom_open_stages", default=())


def _clock():
    return time.perf_counter()


def _bars_wanted(verbose):
    if verbose is None:
        stream = sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(verbose)


def _seconds(s):
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


class Stage:
    """One open stage: counts items, names phases, describes its progress.

    Yielded by :func:`progress_stage`; ``update(n)`` after ``n`` items, ``phase(name)`` when a
    new part of the stage begins (its time goes into the closing line).
    """

    def __init__(self, desc, total, unit, bar, path, clock):
        self.desc = desc
        self.total = total
        self.unit = unit
        self.bar = bar
        self.path = path  # names of the enclosing stages, outermost first
        self.n = 0
        self._clock = clock
        self.start = clock()
        self._phases = []  # [name, start]
        self._stack = [self]  # on the outermost stage: the open stages, for its heartbeat

    def update(self, n=1):
        """Count ``n`` more items done."""
        self.n += n
        self.bar.update(n)

    def set_postfix(self, **kwargs):
        """Figures shown after the bar (e.g. losses); only where a bar is shown."""
        self.bar.set_postfix(**kwargs)

    def phase(self, name):
        """Start the phase ``name`` (ends the previous one)."""
        self._phases.append([name, self._clock()])

    @property
    def current_phase(self):
        return self._phases[-1][0] if self._phases else None

    def phase_times(self, now):
        """``[(name, seconds)]`` of the phases so far."""
        ends = [start for _, start in self._phases[1:]] + [now]
        return [(name, end - start) for (name, start), end in zip(self._phases, ends)]

    def progress_text(self, now):
        """``"done/total unit, rate unit/s, ETA t"`` (what is known of it)."""
        elapsed = now - self.start
        text = f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"
        if self.n > 0 and elapsed > 0:
            rate = self.n / elapsed
            text += f", {rate:.3g} {self.unit}/s"
            if self.total is not None and self.total >= self.n:
                text += f", ETA {_seconds((self.total - self.n) / rate)}"
        return text

    def closing_line(self, now):
        elapsed = now - self.start
        if self.unit is None:
            line = f"{self.desc} in {elapsed:.1f} s"
        else:
            done = f"{self.n} {self.unit}"
            if self.total is not None and self.total != self.n:
                done += f" of {self.total}"
            line = f"{self.desc}: {done} in {elapsed:.1f} s"
        if self._phases:
            line += " (" + ", ".join(f"{name} {t:.1f} s" for name, t in self.phase_times(now)) + ")"
        return line


def heartbeat_line(stages, now):
    """The heartbeat of the open ``stages`` (outermost first) at time ``now``.

    The outermost stage's elapsed time and phase, then the innermost stage that counts items
    (done/total, rate, ETA).
    """
    root = stages[0]
    line = f"{root.desc}: running for {_seconds(now - root.start)}"
    if root.current_phase is not None:
        line += f", {root.current_phase}"
    counting = [s for s in stages if s.total is not None or s.n > 0]
    if counting:
        inner = counting[-1]
        if inner is not root:
            line += f"; {inner.desc}"
        line += f": {inner.progress_text(now)}"
    return line


def _beat(stop_wait, stages, logger, interval, clock):
    """Heartbeat loop: every ``interval`` s until ``stop_wait(interval)`` returns True."""
    while not stop_wait(interval):
        current = list(stages)
        if current:
            logger.info("%s", heartbeat_line(current, clock()))


@contextlib.contextmanager
def progress_stage(desc, *, total=None, unit="it", verbose=None, logger=None):
    """Context manager for one stage of work; yields a :class:`Stage`.

    Parameters
    ----------
    desc : str
        Name of the stage, e.g. ``"PaDiMDetector features"``.
    total : int, optional
        Number of items, if known.
    unit : str or None, default="it"
        Name of one item (``"img"``, ``"epoch"``); None for a stage that counts nothing (its
        closing line gives only the time).
    verbose : bool or None, default=None
        True: show the bar; False: no bar; None: a bar only if standard error is a terminal.
    logger : logging.Logger, optional
        Where the closing line goes (default the ``greyanom`` logger).

    Yields
    ------
    stage : Stage
        Call ``stage.update(n)`` after ``n`` items (also when the bar is disabled: the count
        goes into the log line), ``stage.phase(name)`` when a named part of the stage begins.

    Notes
    -----
    The closing line times the whole ``with`` block. A stage opened inside another one (in
    the same thread) is nested: its closing line goes out at ``DEBUG`` with the outer names in
    front (``"PaDiMDetector fit > PaDiMDetector features: 160 img in 4.2 s"``). The outermost
    stage logs at ``INFO`` and, when no bar is shown and standard error is not a terminal
    (a log file, a CI run), starts a heartbeat thread that logs
    :func:`heartbeat_line` every :data:`HEARTBEAT_S` seconds until the stage ends.

    Examples
    --------
    >>> from greyanom._progress import progress_stage
    >>> with progress_stage("demo stage", total=3, unit="img", verbose=False) as stage:
    ...     for _ in range(3):
    ...         stage.update(1)
    >>> stage.n
    3
    """
    from tqdm.auto import tqdm

    logger = logger or _logger
    outer = _open_stages.get()
    bars = _bars_wanted(verbose)
    bar = tqdm(total=total, desc=desc, unit=unit or "it", disable=not bars, leave=False)
    stage = Stage(desc, total, unit, bar, [s.desc for s in outer], _clock)
    if outer:
        outer[0]._stack.append(stage)
    token = _open_stages.set(outer + (stage,))
    stop = thread = None
    if not outer and not bars and not _bars_wanted(None):
        stop = threading.Event()
        thread = threading.Thread(
            target=_beat, args=(stop.wait, stage._stack, logger, HEARTBEAT_S, _clock),
            name=f"greyanom heartbeat: {desc}", daemon=True,
        )
        thread.start()
    try:
        yield stage
    finally:
        if stop is not None:
            stop.set()
            thread.join()
        _open_stages.reset(token)
        if outer:
            outer[0]._stack.remove(stage)
        bar.close()
        line = stage.closing_line(_clock())
        if outer:
            logger.debug("%s > %s", " > ".join(stage.path), line)
        else:
            logger.info("%s", line)
