"""The one n_jobs rule and the thread-pool section (greyanom._threads)."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
# both OpenBLAS copies loaded before any section: a library loaded inside one keeps its own count
import scipy.linalg  # noqa: F401
from threadpoolctl import threadpool_info, threadpool_limits

from greyanom import _threads
from greyanom._threads import n_threads_from_n_jobs, serial_pools, thread_pools, usable_cpus


def _blas_threads():
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """Eight CPUs in the affinity mask, no thread variables, cgroup files under ``tmp_path``."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GREYANOM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_threads, "CGROUP_ROOT", str(tmp_path / "cgroup"))
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/\n")
    monkeypatch.setattr(_threads, "PROC_CGROUP", str(proc))
    (tmp_path / "cgroup").mkdir()
    return tmp_path / "cgroup"


# -- the rule ------------------------------------------------------------------------------------
def test_affinity_alone(fake_system):
    assert _threads.cgroup_cpu_quota() is None
    assert usable_cpus() == 8


@pytest.mark.parametrize(
    ("cpu_max", "expected"), [("150000 100000", 2), ("50000 100000", 1), ("300000 100000", 3), ("max 100000", 8)]
)
def test_cgroup_v2_quota_rounds_up(fake_system, cpu_max, expected):
    (fake_system / "cpu.max").write_text(cpu_max + "\n")
    assert usable_cpus() == expected


def test_cgroup_v2_quota_of_the_process_own_cgroup(fake_system, tmp_path):
    (fake_system / "job" / "step").mkdir(parents=True)
    (fake_system / "job" / "step" / "cpu.max").write_text("200000 100000\n")
    (tmp_path / "proc_cgroup").write_text("0::/job/step\n")
    assert usable_cpus() == 2


@pytest.mark.parametrize(("quota", "expected"), [("250000", 3), ("-1", 8)])
def test_cgroup_v1_quota(fake_system, tmp_path, quota, expected):
    cpu = fake_system / "cpu,cpuacct"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text(quota + "\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "proc_cgroup").write_text("4:cpu,cpuacct:/\n")
    assert usable_cpus() == expected


def test_omp_num_threads_and_quota_take_the_fewest(fake_system, monkeypatch):
    (fake_system / "cpu.max").write_text("400000 100000\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert usable_cpus() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "6,2")  # a nested list: the outer level counts
    assert usable_cpus() == 4


@pytest.mark.parametrize("bad", ["0", "abc", "-2"])
def test_bad_omp_num_threads_is_a_value_error(fake_system, monkeypatch, bad):
    monkeypatch.setenv("OMP_NUM_THREADS", bad)
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        usable_cpus()


@pytest.mark.parametrize(
    ("n_jobs", "expected"), [(None, 3), (1, 1), (2, 2), (3, 3), (8, 3), (-1, 3), (-2, 2), (-3, 1), (-20, 1)]
)
def test_n_jobs_counts_usable_cpus(fake_system, n_jobs, expected):
    (fake_system / "cpu.max").write_text("300000 100000\n")
    assert n_threads_from_n_jobs(n_jobs) == expected


@pytest.mark.parametrize("bad", [0, 1.5, True, "2", np.float64(2.0)])
def test_bad_n_jobs_names_the_argument(bad):
    with pytest.raises(ValueError, match="n_jobs"):
        n_threads_from_n_jobs(bad)


def test_the_old_import_still_works():
    from greyanom._optional import n_threads_from_n_jobs as old

    assert old is n_threads_from_n_jobs


# -- the section ---------------------------------------------------------------------------------
@pytest.fixture
def four_cpus(monkeypatch):
    """Four usable CPUs whatever the machine (the pools can be set above its CPU count)."""
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GREYANOM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_threads, "usable_cpus", lambda: 4)


def test_fit_and_score_size_blas_and_restore_it(four_cpus, monkeypatch):
    from greyanom import PCADetector

    seen = []
    real = PCADetector._fit

    def spy(self, X):
        seen.append(set(_blas_threads().values()))
        return real(self, X)

    monkeypatch.setattr(PCADetector, "_fit", spy)
    X = np.random.default_rng(0).random((10, 8, 8))
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        det = PCADetector(n_components=2).fit(X)
        assert seen[0] == {1}  # n_jobs=None: BLAS on DEFAULT_BLAS_THREADS (1), for the whole fit
        assert _blas_threads() == before
        det.score(X)
        det.explain(X)
        assert _blas_threads() == before
    with thread_pools(3):  # an explicit n_jobs sizes BLAS too
        assert set(_blas_threads().values()) == {3}


def test_torch_gets_the_section_size_and_blas_one_thread(four_cpus):
    torch = pytest.importorskip("torch")
    from greyanom._optional import torch_threads

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            before = _blas_threads()
            with thread_pools(-2) as n:
                assert n == 3 and torch.get_num_threads() == 3 and set(_blas_threads().values()) == {3}
                with torch_threads(None):  # inner: the section's size, BLAS serial
                    assert torch.get_num_threads() == 3 and set(_blas_threads().values()) == {1}
                assert set(_blas_threads().values()) == {3}
            assert torch.get_num_threads() == 1 and _blas_threads() == before
    finally:
        torch.set_num_threads(old)


def test_numba_loops_run_with_blas_and_torch_serial(four_cpus):
    torch = pytest.importorskip("torch")
    from greyanom.traces._fit import numba_threads

    old = torch.get_num_threads()
    try:
        with thread_pools(4):
            assert torch.get_num_threads() == 4
            with numba_threads(None, 10_000):
                assert torch.get_num_threads() == 1 and set(_blas_threads().values()) == {1}
            assert torch.get_num_threads() == 4 and set(_blas_threads().values()) == {4}
    finally:
        torch.set_num_threads(old)


def test_a_section_inside_a_section_keeps_the_outer_size(four_cpus):
    with thread_pools(2) as outer:
        with thread_pools(None) as inner:  # keeps the outer size, BLAS included
            assert outer == inner == 2 and set(_blas_threads().values()) == {2}
        assert set(_blas_threads().values()) == {2}


def test_concurrent_sections_share_the_cpus(four_cpus):
    torch = pytest.importorskip("torch")
    first_open, second_done = threading.Event(), threading.Event()
    seen = {}

    def first():
        with thread_pools(None) as n:
            seen["first"] = n
            first_open.set()
            second_done.wait(timeout=30)

    def second():
        first_open.wait(timeout=30)
        before = torch.get_num_threads()
        with thread_pools(None) as n:  # opened while the first is open: half the CPUs
            seen["second"] = (n, torch.get_num_threads())
        seen["second after"] = torch.get_num_threads() == before
        second_done.set()

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert seen == {"first": 4, "second": (2, 2), "second after": True}
    with thread_pools(None) as n:  # both closed: a new section has every CPU again
        assert n == 4


def test_serial_pools_restore_on_error(four_cpus):
    with thread_pools(4):
        with pytest.raises(RuntimeError):
            with serial_pools(blas=True):
                raise RuntimeError("boom")
        assert set(_blas_threads().values()) == {4}


def test_legacy_mode_leaves_the_pools_alone(four_cpus, monkeypatch):
    monkeypatch.setenv("GREYANOM_THREADS", "legacy")
    with threadpool_limits(limits=1, user_api="blas"):
        with thread_pools(None) as n:
            assert n is None and set(_blas_threads().values()) == {1}


# -- polite waiting ------------------------------------------------------------------------------
def _env_after_import(env):
    code = "import os, greyanom; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "GREYANOM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_import_sets_polite_waiting_defaults():
    assert _env_after_import({}) == ["PASSIVE", "4"]


def test_a_value_the_user_set_is_kept():
    assert _env_after_import({"OMP_WAIT_POLICY": "ACTIVE"}) == ["ACTIVE", "4"]


def test_legacy_mode_sets_no_defaults():
    assert _env_after_import({"GREYANOM_THREADS": "legacy"}) == ["None", "None"]
