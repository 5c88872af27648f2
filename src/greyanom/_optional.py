"""Optional dependencies: import them on use, with an error that names the extra to install."""

from __future__ import annotations

import contextlib
import importlib
import warnings

from greyanom._threads import n_threads_from_n_jobs  # its home is _threads; imported here as before

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


@contextlib.contextmanager
def torch_threads(n_jobs, purpose="this detector"):
    """Run the block with torch on the threads ``n_jobs`` gives, BLAS on one; restore both after.

    ``n_jobs`` has one meaning for every detector (:func:`greyanom._threads.n_threads_from_n_jobs`):
    ``None`` all usable CPUs, ``k > 0`` ``k`` (at most the usable CPUs), ``-1`` all, ``-2`` all
    but one. Inside a detector's :func:`~greyanom._threads.thread_pools` section (its ``fit``,
    ``score`` or ``explain``) torch gets that section's threads. NumPy's BLAS runs on one thread
    meanwhile, so that no pool starts threads inside torch's. torch's global setting is never
    left changed. With ``GREYANOM_THREADS=legacy`` only an explicit ``n_jobs`` sets torch's
    threads, as before.
    """
    from greyanom import _threads

    if _threads.legacy_mode():
        if n_jobs is None:
            yield
            return
        n_threads = int(n_jobs) if n_jobs > 0 else _threads.n_threads_from_n_jobs(n_jobs)
    torch = import_torch(purpose)
    with contextlib.ExitStack() as stack:
        if not _threads.legacy_mode():
            n_threads = stack.enter_context(_threads.thread_pools(n_jobs))
            stack.enter_context(_threads.serial_pools(blas=True))
        old = torch.get_num_threads()
        torch.set_num_threads(n_threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)
