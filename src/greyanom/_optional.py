"""Optional dependencies: import them on use, with an error that names the extra to install."""

from __future__ import annotations

import contextlib
import importlib
import numbers
import os
import warnings

__all__ = [
    "device_or_cpu",
    "import_optional",
    "import_torch",
    "n_threads_from_n_jobs",
    "resolve_device",
    "torch_threads",
]


def import_optional(module, extra, purpose):
    """Import ``module`` or raise an ImportError naming the greyanom extra that provides it.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"matplotlib.pyplot"``.
    extra : str
        The greyanom extra that installs it, e.g. ``"plot"``.
    purpose : str
        What needs it, for the message (e.g. ``"ConvVAEDetector"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise ImportError(
            f"{purpose} needs {top!r}, which is not installed. "
            f'Install it with: pip install "greyanom[{extra}]"'
        ) from exc


def import_torch(purpose, extra="torch"):
    """Import and return ``torch``, or raise an ImportError naming the extra."""
    return import_optional("torch", extra, purpose)


def resolve_device(device, purpose="this detector"):
    """Resolve a ``device`` parameter into a ``torch.device``.

    ``"auto"`` gives CUDA when it is available, else the CPU. An explicit ``"cuda"`` (or
    ``"cuda:N"``) without CUDA is an error, never a silent fall-back.
    """
    torch = import_torch(purpose)
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist."
            )
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    return dev


def device_or_cpu(device, purpose="this detector"):
    """Resolve a saved or pickled ``device``; a CUDA device that is missing here maps to the CPU.

    The one fall-back for every image detector (loading a file, unpickling): a model
    fitted on a GPU opens on a machine without one, with a ``UserWarning``. Everything
    else :func:`resolve_device` rejects is still an error.
    """
    try:
        return resolve_device(device, purpose)
    except ValueError:
        if not str(device).startswith("cuda"):
            raise
        warnings.warn(
            f"{purpose} was fitted on {str(device)!r} but CUDA is not available here (or not that device); using the CPU.",
            UserWarning,
            stacklevel=3,
        )
        return resolve_device("cpu", purpose)


def n_threads_from_n_jobs(n_jobs, n_cpus=None):
    """Translate an ``n_jobs`` value into a thread count (scikit-learn's convention).

    ``None`` gives ``None`` (leave the library's setting alone); a positive ``k`` gives
    ``k``; ``-1`` all CPUs available to this process, ``-2`` all but one, and so on (at
    least 1). ``0``, booleans and non-integers are a ``ValueError``.
    """
    if n_jobs is None:
        return None
    if not isinstance(n_jobs, numbers.Integral) or isinstance(n_jobs, bool) or n_jobs == 0:
        raise ValueError(f"n_jobs must be None, a positive integer or a negative integer, got {n_jobs!r}.")
    if n_jobs > 0:
        return int(n_jobs)
    if n_cpus is None:
        try:
            n_cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            n_cpus = os.cpu_count() or 1
    return max(1, int(n_cpus) + 1 + int(n_jobs))


@contextlib.contextmanager
def torch_threads(n_jobs, purpose="this detector"):
    """Run the block with torch using ``n_jobs`` CPU threads, restoring the old value after.

    ``n_jobs`` has one meaning for every image detector (see :func:`n_threads_from_n_jobs`):
    ``None`` leaves torch's setting unchanged, ``k > 0`` uses ``k`` threads, ``-1`` all
    CPUs, ``-2`` all but one. torch's global setting is never left changed.
    """
    n_threads = n_threads_from_n_jobs(n_jobs)
    if n_threads is None:
        yield
        return
    torch = import_torch(purpose)
    old = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
