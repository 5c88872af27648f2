"""Loader for one category of the MVTec AD data set (or any folder in its layout)."""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = ["load_mvtec"]

_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _images_in(folder):
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _EXTENSIONS)


def _read_gray(path, size, resample):
    """One file as a grayscale ``size x size`` array; a file Pillow cannot read is a ValueError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if im.size != (size, size):
                im = im.resize((size, size), resample)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # Pillow raises OSError for truncated files and SyntaxError for some broken headers
        raise ValueError(f"cannot read the image file {str(path)!r} (damaged or not an image): {exc}") from exc


def _load_image(path, size):
    from PIL import Image

    return _read_gray(path, size, Image.BILINEAR).astype(np.float32) / np.float32(255)


def _load_mask(path, size):
    from PIL import Image

    return _read_gray(path, size, Image.NEAREST) >= 128


def load_mvtec(path, *, image_size=256):
    """Load one MVTec AD category (or a folder in its layout) as grayscale arrays.

    Parameters
    ----------
    path : str or path-like
        The category folder, holding ``train/good/*.png``, ``test/<type>/*.png`` (with
        ``test/good`` for the normal test images) and
        ``ground_truth/<type>/<name>_mask.png`` for every defective test image.
    image_size : int, default=256
        Images are converted to grayscale (ITU-R 601-2 luma) and resized to
        ``image_size x image_size`` with Pillow: bilinear for images, nearest neighbour
        for masks, which are then binarised at 128.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``X_train`` (n_train, S, S) float32 in [0, 1]; ``X_test`` (n_test, S, S);
        ``y_test`` (n_test,) int, 1 = defective; ``masks_test`` (n_test, S, S) bool (all
        False for normal images); ``defect_types_test`` (n_test,) str, ``"good"`` for
        normal images; ``test_files`` (n_test,) str, paths relative to ``path``;
        ``DESCR``. Test images are ordered by type (``"good"`` first, then
        alphabetically) and by file name.

    Raises
    ------
    FileNotFoundError
        If ``path`` or one of ``train/good``, ``test`` is missing, or a defective
        test image has no mask.
    ValueError
        If a folder holds no images, or an image or mask file cannot be read (the message
        names the file).

    See Also
    --------
    make_wafer_images : Synthetic data in the same format.

    Notes
    -----
    MVTec AD is licensed CC BY-NC-SA 4.0 (non-commercial). greyanom ships none of it:
    download a category from MVTec and pass its folder.

    References
    ----------
    .. [1] P. Bergmann, M. Fauser, D. Sattlegger, C. Steger, "MVTec AD - A Comprehensive
       Real-World Dataset for Unsupervised Anomaly Detection", CVPR 2019.

    Examples
    --------
    >>> from greyanom.datasets import load_mvtec
    >>> data = load_mvtec("mvtec_ad/transistor")  # doctest: +SKIP
    >>> data.X_train.shape, data.y_test.mean()  # doctest: +SKIP
    ((213, 256, 256), 0.4)
    """
    if not isinstance(image_size, numbers.Integral) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
    size = int(image_size)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"path {str(root)!r} is not a folder (expected an MVTec AD category folder).")
    expected = "an MVTec AD category folder with train/good, test/<type> and ground_truth/<type>"
    train_dir, test_dir, gt_dir = root / "train" / "good", root / "test", root / "ground_truth"
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{str(folder)!r} does not exist; path must be {expected}.")
    train_files = _images_in(train_dir)
    if not train_files:
        raise ValueError(f"{str(train_dir)!r} holds no images; path must be {expected}.")
    types = sorted((p.name for p in test_dir.iterdir() if p.is_dir()), key=lambda t: (t != "good", t))
    if not types:
        raise ValueError(f"{str(test_dir)!r} has no sub-folders; path must be {expected}.")

    X_train = np.stack([_load_image(p, size) for p in train_files])
    X_test, masks, labels, files = [], [], [], []
    for t in types:
        images = _images_in(test_dir / t)
        for p in images:
            X_test.append(_load_image(p, size))
            labels.append(t)
            files.append(str(p.relative_to(root)))
            if t == "good":
                masks.append(np.zeros((size, size), bool))
                continue
            mask_path = gt_dir / t / f"{p.stem}_mask.png"
            if not mask_path.is_file():
                raise FileNotFoundError(
                    f"no mask for the defective test image {str(p)!r}: expected {str(mask_path)!r}."
                )
            masks.append(_load_mask(mask_path, size))
    if not X_test:
        raise ValueError(f"{str(test_dir)!r} holds no images; path must be {expected}.")
    labels = np.array(labels, dtype=str)
    return Bunch(
        X_train=X_train,
        X_test=np.stack(X_test),
        y_test=(labels != "good").astype(np.int64),
        masks_test=np.stack(masks),
        defect_types_test=labels,
        test_files=np.array(files, dtype=str),
        DESCR=(
            f"MVTec AD-style category loaded from {root.name!r}: {len(X_train)} training and "
            f"{len(labels)} test images ({int((labels != 'good').sum())} defective; types "
            f"{', '.join(t for t in types if t != 'good')}), grayscale, {size}x{size}, in [0, 1]."
        ),
    )
