import pytest

from greyanom._optional import import_optional, resolve_device, torch_threads
from greyanom._threads import usable_cpus


def test_missing_module_names_the_extra():
    with pytest.raises(ImportError, match=r'pip install "greyanom\[plot\]"'):
        import_optional("greyanom_no_such_module", "plot", "plotting")


def test_resolve_device():
    torch = pytest.importorskip("torch")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    with pytest.raises(TypeError, match="device"):
        resolve_device(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_torch_threads_restores_the_setting_even_on_error():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # a setting the block changes (1 thread) and must give back
    try:
        with pytest.raises(RuntimeError):
            with torch_threads(1):
                assert torch.get_num_threads() == 1
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 3
        with torch_threads(None):  # all usable CPUs (greyanom._threads.usable_cpus)
            assert torch.get_num_threads() == usable_cpus()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
