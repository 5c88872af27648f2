import pytest

from greyanom._optional import import_optional, resolve_device, torch_threads


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
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError):
        with torch_threads(target):
            assert torch.get_num_threads() == target
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
