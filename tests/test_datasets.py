import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from greyanom.datasets import load_mvtec, make_wafer_images
from greyanom.datasets._images import WAFER_DEFECT_TYPES


@pytest.fixture(scope="module")
def wafer():
    return make_wafer_images(n_train=6, n_test=20, anomaly_fraction=0.5, image_size=128, random_state=3)


class TestMakeWaferImages:
    def test_schema(self, wafer):
        assert wafer.X_train.shape == (6, 128, 128) and wafer.X_test.shape == (20, 128, 128)
        assert wafer.X_train.dtype == np.float32 and wafer.X_test.dtype == np.float32
        assert 0.0 <= wafer.X_test.min() and wafer.X_test.max() <= 1.0
        assert wafer.masks_test.dtype == bool and wafer.masks_test.shape == (20, 128, 128)
        assert wafer.y_test.sum() == 10
        np.testing.assert_array_equal(wafer.y_test, wafer.defect_types_test != "good")
        assert set(wafer.defect_types_test) == {"good", *WAFER_DEFECT_TYPES}
        assert "wafer" in wafer.DESCR

    def test_masks_only_on_defective_images(self, wafer):
        areas = wafer.masks_test.sum(axis=(1, 2))
        assert (areas[wafer.y_test == 0] == 0).all()
        assert (areas[wafer.y_test == 1] > 0).all()

    def test_default_size_is_256(self):
        data = make_wafer_images(n_train=1, n_test=2, random_state=0)
        assert data.X_train.shape == (1, 256, 256)

    def test_seeded(self):
        a = make_wafer_images(n_train=2, n_test=4, image_size=64, random_state=7)
        b = make_wafer_images(n_train=2, n_test=4, image_size=64, random_state=7)
        c = make_wafer_images(n_train=2, n_test=4, image_size=64, random_state=8)
        np.testing.assert_array_equal(a.X_test, b.X_test)
        np.testing.assert_array_equal(a.masks_test, b.masks_test)
        assert not np.array_equal(a.X_train, c.X_train)

    @pytest.mark.parametrize("defect", WAFER_DEFECT_TYPES)
    def test_masks_cover_the_defect(self, defect):
        # with noise, jitter and blur off, a defect image differs from the same image
        # without the defect inside its mask; outside the mask (grown by its anti-aliased
        # one-pixel rim) by at most half the largest change (the mask is the >= half rule)
        from scipy.ndimage import binary_dilation

        from greyanom.datasets._images import _render

        kwargs = dict(jitter=0.0, noise=0.0, blur=0.0)
        X, masks = _render(1, 128, np.random.RandomState(1), defects=np.array([defect]), **kwargs)
        X0, _ = _render(1, 128, np.random.RandomState(1), defects=np.array(["good"]), **kwargs)
        change = np.abs(X - X0)[0]
        mask = masks[0]
        assert change[mask].max() > 0.02
        outside = ~binary_dilation(mask)
        assert change[outside].max() <= 0.5 * change.max() + 1e-6

    def test_mean_intensity_is_not_enough(self):
        from greyanom.metrics import image_auroc

        data = make_wafer_images(n_train=0, n_test=60, anomaly_fraction=0.5, image_size=64, random_state=0)
        auc = image_auroc(data.y_test, data.X_test.mean(axis=(1, 2)))
        assert 0.25 < auc < 0.75

    def test_defect_type_subset(self):
        data = make_wafer_images(
            n_train=1, n_test=6, anomaly_fraction=1.0, image_size=64, defect_types=["scratch"], random_state=0
        )
        assert set(data.defect_types_test) == {"scratch"}

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"n_train": -1}, "n_train"),
            ({"image_size": 16}, "image_size"),
            ({"anomaly_fraction": 1.5}, "anomaly_fraction"),
            ({"noise": -0.1}, "noise"),
            ({"defect_types": ["crack"]}, "defect_types"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            make_wafer_images(**kwargs)


def _write_mvtec(root, size=40):
    rng = np.random.default_rng(0)

    def save(path, array):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    for i in range(3):
        save(root / "train" / "good" / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    for i in range(2):
        save(root / "test" / "good" / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    for t in ("crack", "hole"):
        img = np.full((size, size), 100, np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[10:20, 5:15] = 255
        save(root / "test" / t / "000.png", img)
        save(root / "ground_truth" / t / "000_mask.png", mask)
    return root


class TestLoadMVTec:
    def test_tiny_folder(self, tmp_path):
        root = _write_mvtec(tmp_path / "cat")
        data = load_mvtec(root, image_size=20)
        assert data.X_train.shape == (3, 20, 20) and data.X_train.dtype == np.float32
        assert data.X_test.shape == (4, 20, 20)
        assert list(data.defect_types_test) == ["good", "good", "crack", "hole"]
        np.testing.assert_array_equal(data.y_test, [0, 0, 1, 1])
        assert data.masks_test.dtype == bool
        assert not data.masks_test[:2].any()
        # mask rows 10:20, cols 5:15 at 40 px; nearest samples pixel 2j+1 -> rows 5:10, cols 2:7
        expected = np.zeros((20, 20), bool)
        expected[5:10, 2:7] = True
        np.testing.assert_array_equal(data.masks_test[2], expected)
        np.testing.assert_allclose(data.X_test[2], 100 / 255, atol=1e-6)
        # grayscale: the ITU-R 601 luma of the RGB training image
        rgb = np.asarray(Image.open(root / "train" / "good" / "000.png"))
        full = load_mvtec(root, image_size=40).X_train[0]
        luma = Image.fromarray(rgb).convert("L")
        np.testing.assert_allclose(full, np.asarray(luma) / 255, atol=1e-6)
        assert data.test_files[2] == "test/crack/000.png"

    def test_missing_mask(self, tmp_path):
        root = _write_mvtec(tmp_path / "cat")
        (root / "ground_truth" / "hole" / "000_mask.png").unlink()
        with pytest.raises(FileNotFoundError, match="no mask"):
            load_mvtec(root)

    def test_wrong_layout(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="not a folder"):
            load_mvtec(tmp_path / "nope")
        (tmp_path / "cat" / "test").mkdir(parents=True)
        with pytest.raises(FileNotFoundError, match="train"):
            load_mvtec(tmp_path / "cat")
        with pytest.raises(ValueError, match="image_size"):
            load_mvtec(tmp_path / "cat", image_size=0)

    @pytest.mark.data
    def test_real_transistor(self):
        data = load_mvtec(shared_data("mvtec_ad_transistor_256gray"))
        assert data.X_train.shape == (213, 256, 256)
        assert data.X_test.shape == (100, 256, 256)
        assert data.y_test.sum() == 40
        assert 0.0 <= data.X_train.min() and data.X_train.max() <= 1.0
        areas = data.masks_test.sum(axis=(1, 2))
        assert (areas[data.y_test == 1] > 0).all() and (areas[data.y_test == 0] == 0).all()
        assert set(data.defect_types_test) == {"good", "bent_lead", "cut_lead", "damaged_case", "misplaced"}
