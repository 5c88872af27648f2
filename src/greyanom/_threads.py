"""One ``n_jobs`` rule and one context that sizes every thread pool (BLAS, OpenMP, torch, Numba).

The rule (:func:`usable_cpus`, :func:`n_threads_from_n_jobs`)
    The usable CPUs are the fewest of: the CPUs this process may run on (its affinity mask),
    the container's CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``,
    rounded up) and ``OMP_NUM_THREADS`` when it is set. ``n_jobs=None`` uses them all (but
    BLAS one, :data:`DEFAULT_BLAS_THREADS`); ``k > 0``
    uses ``k``, capped at the usable CPUs (more threads than CPUs only queue and spin); ``-1`` all
    usable CPUs, ``-2`` all but one, and so on (at least 1), as in scikit-learn.

The section (:func:`thread_pools`)
    For the duration of a detector's ``fit``, ``score`` or ``explain``, every pool that is loaded
    gets that many threads: OpenBLAS and OpenMP through threadpoolctl, torch through
    ``torch.set_num_threads``, Numba through ``numba.set_num_threads``; all restored in ``finally``.
    Sections nest: an inner one (a detector inside a detector, a fold's clone) keeps the outer
    size. Sections that run at the same time in several threads share the CPUs: one opened
    while ``k - 1`` others are open gets ``n // k`` threads. Inside torch code BLAS
    runs on one thread and inside Numba's parallel loops BLAS and torch do
    (:func:`serial_pools`): no pool starts threads inside another's.

Polite waiting (:data:`POLITE_ENV`)
    OpenMP (libgomp, which torch, scikit-learn and Numba's ``omp`` layer load) and OpenBLAS keep
    idle threads spinning for a while after each parallel region. On a busy machine the spinning
    threads take the CPU from the threads with work: PaDiM's fit ran 12x slower beside two
    busy loops. ``import greyanom`` sets ``OMP_WAIT_POLICY=PASSIVE`` and
    ``OPENBLAS_THREAD_TIMEOUT=4`` (idle OpenBLAS threads sleep after 2**4 cycles instead of
    2**28) with ``os.environ.setdefault``: a value the user set is kept, and the runtimes read
    them when they load, so they take effect only when greyanom is imported before NumPy, SciPy,
    scikit-learn and torch (``greyanom demo`` does), or when set in the shell.

``GREYANOM_THREADS=legacy`` (read at import and at each section) restores the old behaviour, for
comparison: no environment defaults, no limits, torch's threads set only for an explicit ``n_jobs``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import sys
import threading

__all__ = [
    "DEFAULT_BLAS_THREADS",
    "POLITE_ENV",
    "cgroup_cpu_quota",
    "legacy_mode",
    "n_threads_from_n_jobs",
    "serial_pools",
    "set_polite_waiting",
    "thread_pools",
    "threaded",
    "usable_cpus",
]

#: Environment defaults that make idle threads sleep instead of spin (see the module docstring).
POLITE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
#: BLAS threads of a section with ``n_jobs=None``. greyanom's BLAS calls are small (registration
#: DFTs, per-image planes, an SVD of a few hundred rows), and on a shared 2-core machine one thread
#: was faster than two: PCADetector fit 2.2 s against 6.4 s, RegisteredPixelDetector 8.0 s
#: against 13.0 s (load average 8 from other jobs; docs/guide/performance.rst). An explicit
#: ``n_jobs`` gives BLAS that many threads too.
DEFAULT_BLAS_THREADS = 1
#: Where the cgroup file systems are mounted (a module constant so that tests can point it elsewhere).
CGROUP_ROOT = "/sys/fs/cgroup"
#: Where this process's cgroup paths are listed.
PROC_CGROUP = "/proc/self/cgroup"


def legacy_mode():
    """True when ``GREYANOM_THREADS=legacy``: pools are left as they were before this module."""
    return os.environ.get("GREYANOM_THREADS", "").strip().lower() == "legacy"


def set_polite_waiting():
    """Set :data:`POLITE_ENV` as environment defaults; return the names that were set here.

    A variable already set (by the user, the shell or a job scheduler) is kept. Called once at
    ``import greyanom``; it does nothing in legacy mode. The runtimes read these variables when
    they load, so a runtime already loaded keeps its spinning waits.
    """
    if legacy_mode():
        return []
    return [key for key, value in POLITE_ENV.items() if os.environ.setdefault(key, value) is value]


# -- the rule --------------------------------------------------------------------------------
def _read(path):
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_dirs(controller):
    """Candidate folders of this process's cgroup for ``controller`` ("" = v2), its own first."""
    own = []
    for line in (_read(PROC_CGROUP) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (controller in parts[1].split(",") if controller else parts[1] == ""):
            own.append(parts[2].lstrip("/"))
    if controller:
        roots = [os.path.join(CGROUP_ROOT, name) for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
    else:
        roots = [CGROUP_ROOT]
    return [os.path.join(root, rel) for root in roots for rel in (*own, "") if os.path.isdir(root)]


def cgroup_cpu_quota():
    """CPUs allowed by the container's CPU quota (rounded up, at least 1), or None without a quota.

    Reads cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``), else cgroup v1
    ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (quota ``-1``: none), in this process's own
    cgroup and at the root of the mount (a container sees its own cgroup there).
    """
    for folder in _cgroup_dirs(""):
        text = _read(os.path.join(folder, "cpu.max"))
        if text:
            fields = text.split()
            if fields[0] == "max":
                return None
            try:
                quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
            except ValueError:
                continue
            if quota > 0 and period > 0:
                return max(1, math.ceil(quota / period))
    for folder in _cgroup_dirs("cpu"):
        quota, period = _read(os.path.join(folder, "cpu.cfs_quota_us")), _read(os.path.join(folder, "cpu.cfs_period_us"))
        if quota is None or period is None:
            continue
        try:
            quota, period = int(quota), int(period)
        except ValueError:
            continue
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
        return None
    return None


def _env_threads(name):
    """A positive thread count from environment variable ``name`` (first of a nested list), or None."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    first = value.split(",")[0].strip()
    try:
        n = int(first)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"the environment variable {name} must be a positive integer, got {value!r}.")
    return n


def usable_cpus():
    """Number of CPUs this process may use: affinity mask, cgroup quota and ``OMP_NUM_THREADS``.

    Returns
    -------
    n : int
        The fewest of the CPUs in the affinity mask (``os.sched_getaffinity``; ``os.cpu_count``
        where that does not exist), the container's CPU quota (:func:`cgroup_cpu_quota`) and
        ``OMP_NUM_THREADS`` when set; at least 1.

    Raises
    ------
    ValueError
        If ``OMP_NUM_THREADS`` is set to something other than a positive integer.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    for limit in (cgroup_cpu_quota(), _env_threads("OMP_NUM_THREADS")):
        if limit is not None:
            n = min(n, limit)
    return max(1, n)


def n_threads_from_n_jobs(n_jobs, n_cpus=None):
    """Translate ``n_jobs`` into a thread count: the one rule of every greyanom detector.

    Parameters
    ----------
    n_jobs : int or None
        ``None``: all usable CPUs; ``k > 0``: ``k``, capped at the usable CPUs; ``-1``: all
        usable CPUs, ``-2`` all but one, and so on (at least 1), as in scikit-learn.
    n_cpus : int, optional
        The usable CPUs; by default :func:`usable_cpus`.

    Returns
    -------
    n_threads : int

    Raises
    ------
    ValueError
        If ``n_jobs`` is 0, a boolean or not an integer.

    Examples
    --------
    >>> from greyanom._threads import n_threads_from_n_jobs
    >>> n_threads_from_n_jobs(-2, n_cpus=8), n_threads_from_n_jobs(16, n_cpus=8), n_threads_from_n_jobs(None, n_cpus=8)
    (7, 8, 8)
    """
    if n_jobs is not None and (not isinstance(n_jobs, numbers.Integral) or isinstance(n_jobs, bool) or n_jobs == 0):
        raise ValueError(f"n_jobs must be None, a positive integer or a negative integer, got {n_jobs!r}.")
    n_cpus = usable_cpus() if n_cpus is None else int(n_cpus)
    if n_jobs is None:
        return n_cpus
    if n_jobs > 0:
        return min(int(n_jobs), n_cpus)
    return max(1, n_cpus + 1 + int(n_jobs))


# -- the pools -------------------------------------------------------------------------------
_controller_cache = {}


def _controller():
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries, rebuilt when modules were imported."""
    from threadpoolctl import ThreadpoolController

    key = len(sys.modules)
    if key not in _controller_cache:
        _controller_cache.clear()
        _controller_cache[key] = ThreadpoolController()
    return _controller_cache[key]


def _blas_cap():
    """``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` cap the BLAS pool when set."""
    caps = [n for n in (_env_threads("OPENBLAS_NUM_THREADS"), _env_threads("MKL_NUM_THREADS")) if n is not None]
    return min(caps) if caps else None


class _OpenSections:
    """How many threads hold a section now: sections open at once share the usable CPUs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0

    def enter(self, n):
        with self.lock:
            self.count += 1
            return max(1, n // self.count)

    def exit(self):
        with self.lock:
            self.count -= 1


@contextlib.contextmanager
def _sized(n, blas):
    """OpenMP (threadpoolctl) and torch on ``n`` threads, BLAS on ``blas``, for the block; restored after.

    OpenMP's thread count is a per-thread setting (each calling thread has its own), so a
    section sizes the pools its own thread starts; OpenBLAS's is process-wide.
    """
    ctl = _controller()
    cap = _blas_cap()
    limiters = [ctl.select(user_api="openmp").limit(limits=n),
                ctl.select(user_api="blas").limit(limits=blas if cap is None else min(blas, cap))]
    torch = sys.modules.get("torch")
    old = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch is not None:
            torch.set_num_threads(old)
        for limiter in reversed(limiters):
            limiter.restore_original_limits()


_OPEN = _OpenSections()
_local = threading.local()


@contextlib.contextmanager
def thread_pools(n_jobs=None):
    """Size every thread pool for the block from ``n_jobs`` (see :func:`n_threads_from_n_jobs`).

    The outermost section of a thread sets OpenMP (threadpoolctl), torch (when it is imported)
    and Numba (when it is imported) to that many threads, and BLAS too when ``n_jobs`` is given
    (with ``n_jobs=None`` BLAS gets :data:`DEFAULT_BLAS_THREADS`, one), and restores them all in
    ``finally``. A section inside a section keeps the outer size. A section opened while
    ``k - 1`` others are open in other threads gets ``n // k`` threads (at least 1). In legacy
    mode (``GREYANOM_THREADS=legacy``) nothing is changed.

    Parameters
    ----------
    n_jobs : int or None, default=None
        The detector's ``n_jobs``.

    Yields
    ------
    n_threads : int or None
        The threads of this section (None in legacy mode).
    """
    if legacy_mode():
        yield None
        return
    depth = getattr(_local, "depth", 0)
    if depth:
        _local.depth = depth + 1
        try:
            yield _local.n
        finally:
            _local.depth -= 1
        return
    n = n_threads_from_n_jobs(n_jobs)
    shared = _OPEN.enter(n)
    try:
        numba = sys.modules.get("numba")
        old_numba = None
        if numba is not None:  # first: with the omp layer it shares torch's libgomp and sets its threads too
            old_numba = numba.get_num_threads()
            numba.set_num_threads(min(shared, numba.config.NUMBA_NUM_THREADS))
        try:
            with _sized(shared, DEFAULT_BLAS_THREADS if n_jobs is None else shared):
                _local.depth, _local.n = 1, shared
                try:
                    yield shared
                finally:
                    _local.depth = 0
        finally:
            if old_numba is not None:
                numba.set_num_threads(old_numba)
    finally:
        _OPEN.exit()


@contextlib.contextmanager
def serial_pools(*, blas=True, torch=False):
    """Run the block with BLAS (and optionally torch) on one thread: no pool inside another pool.

    Used around torch code (BLAS on one thread) and Numba's parallel loops (BLAS and torch on
    one thread); restored in ``finally``. Does nothing in legacy mode.
    """
    if legacy_mode():
        yield
        return
    limiter = _controller().select(user_api="blas").limit(limits=1) if blas else None
    mod = sys.modules.get("torch") if torch else None
    old = mod.get_num_threads() if mod is not None else None
    if mod is not None:
        mod.set_num_threads(1)
    try:
        yield
    finally:
        if mod is not None:
            mod.set_num_threads(old)
        if limiter is not None:
            limiter.restore_original_limits()


def threaded(method):
    """Decorate a detector method so that it runs in :func:`thread_pools` of ``self.n_jobs``.

    A detector whose ``n_jobs`` has a deprecated alias resolves it in ``_effective_n_jobs()``.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        resolve = getattr(self, "_effective_n_jobs", None)
        with thread_pools(resolve() if resolve is not None else getattr(self, "n_jobs", None)):
            return method(self, *args, **kwargs)

    return wrapper
