"""Loader for a plain folder of inspection images: one subfolder per class, optional masks."""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch, check_random_state

from greyanom.datasets._mvtec import _read_gray

__all__ = ["load_image_folder"]

_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _files(folder, mask_suffix, mask_ext):
    """Image files under ``folder`` (recursively) and their masks beside them, by image."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _EXTENSIONS)
    names = {p for p in files}
    masks = {}
    if mask_suffix is not None:
        for p in files:
            m = p.with_name(p.stem + mask_suffix + mask_ext)
            if m != p and m in names:
                masks[p] = m
    mask_files = set(masks.values())
    return [p for p in files if p not in mask_files], masks


def load_image_folder(
    path,
    *,
    normal="good",
    image_size=256,
    train_size=0.5,
    mask_suffix="_mask",
    mask_ext=".png",
    random_state=None,
):
    """Load a folder of grayscale inspection images with one subfolder per class.

    The layout is ``path/<class>/**/<image>``: the subfolder named ``normal`` holds the
    defect-free images, every other subfolder one defect class (its name becomes the
    defect type). Images may sit in nested folders. A defect image ``NAME.ext`` has a
    mask when a file ``NAME{mask_suffix}{mask_ext}`` lies beside it (MVTec-like
    ``_mask.png`` by default; ``mask_suffix=""`` for the magnetic-tile layout, where
    ``NAME.png`` is the mask of ``NAME.jpg``). Mask files are not read as images.

    Parameters
    ----------
    path : str or path-like
        The root folder.
    normal : str, default="good"
        Name of the subfolder of normal images.
    image_size : int, default=256
        Images are converted to grayscale (ITU-R 601-2 luma) and resized to
        ``image_size x image_size`` with Pillow (bilinear; masks nearest-neighbour and
        binarised at 128). The aspect ratio is not kept.
    train_size : float in (0, 1) or int, default=0.5
        Normal images used for training: a fraction or a count. The others go to the test
        set with every defect image.
    mask_suffix : str or None, default="_mask"
        Suffix of the mask files; ``None`` reads no masks.
    mask_ext : str, default=".png"
        Extension of the mask files.
    random_state : int, RandomState instance or None, default=None
        Seed of the train/test split of the normal images.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``X_train`` (n_train, S, S) float32 in [0, 1]; ``X_test``; ``y_test`` (1 =
        defective); ``masks_test`` (n_test, S, S) bool, all False for normal images, or
        ``None`` when no defect image has a mask; ``defect_types_test`` (the subfolder
        names, ``"good"`` for normal images); ``train_files``, ``test_files`` (paths
        relative to ``path``); ``DESCR``.

    Raises
    ------
    FileNotFoundError
        If ``path`` or its ``normal`` subfolder is missing, or some defect images have
        masks and others do not.
    ValueError
        If a folder holds no images, ``train_size`` leaves no normal test image, or a file
        cannot be read (the message names the file).

    See Also
    --------
    load_mvtec : The MVTec AD layout (train/test/ground_truth).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from PIL import Image
    >>> from greyanom.datasets import load_image_folder
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for cls, n in (("good", 4), ("scratch", 2)):
    ...     (root / cls).mkdir()
    ...     for i in range(n):
    ...         Image.fromarray(np.full((40, 50), 100, np.uint8)).save(root / cls / f"{i}.png")
    >>> data = load_image_folder(root, image_size=32, random_state=0)
    >>> data.X_train.shape, data.defect_types_test.tolist()
    ((2, 32, 32), ['good', 'good', 'scratch', 'scratch'])
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"path {str(root)!r} is not a folder.")
    if not isinstance(image_size, numbers.Integral) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
    normal_dir = root / normal
    if not normal_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(f"no subfolder {normal!r} of normal images in {str(root)!r}; found {found}.")
    normal_files, _ = _files(normal_dir, mask_suffix, mask_ext)
    if not normal_files:
        raise ValueError(f"the normal folder {str(normal_dir)!r} holds no images.")
    n_normal = len(normal_files)
    if isinstance(train_size, numbers.Integral) and not isinstance(train_size, bool):
        n_train = int(train_size)
    elif isinstance(train_size, numbers.Real) and 0 < train_size < 1:
        n_train = int(round(train_size * n_normal))
    else:
        raise ValueError(f"train_size must be a float in (0, 1) or an integer, got {train_size!r}.")
    if not 1 <= n_train < n_normal:
        raise ValueError(
            f"train_size={train_size!r} gives {n_train} training images of {n_normal} normal ones; "
            "at least one must be trained on and one left for the test set."
        )
    order = check_random_state(random_state).permutation(n_normal)
    train_files = [normal_files[i] for i in sorted(order[:n_train])]
    test_files = [normal_files[i] for i in sorted(order[n_train:])]
    kinds = ["good"] * len(test_files)
    mask_files = [None] * len(test_files)
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and p.name != normal):
        files, masks = _files(cls, mask_suffix, mask_ext)
        if not files:
            raise ValueError(f"the defect folder {str(cls)!r} holds no images.")
        test_files += files
        kinds += [cls.name] * len(files)
        mask_files += [masks.get(p) for p in files]
    size = int(image_size)

    def stack(paths):
        return np.stack([_read_gray(p, size, Image.BILINEAR) for p in paths]).astype(np.float32) / np.float32(255)

    X_train, X_test = stack(train_files), stack(test_files)
    kinds = np.array(kinds)
    defect = kinds != "good"
    with_mask = np.array([m is not None for m in mask_files])
    if with_mask[defect].any():
        missing = [str(f.relative_to(root)) for f, d, m in zip(test_files, defect, with_mask) if d and not m]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} defect image(s) have no mask file (expected NAME{mask_suffix}{mask_ext} "
                f"beside each), e.g. {missing[0]!r}."
            )
        masks_test = np.zeros(X_test.shape, bool)
        for i, m in enumerate(mask_files):
            if m is not None and defect[i]:
                masks_test[i] = _read_gray(m, size, Image.NEAREST) >= 128
    else:
        masks_test = None
    classes = sorted(set(kinds[defect]))
    return Bunch(
        X_train=X_train,
        X_test=X_test,
        y_test=defect.astype(np.int64),
        masks_test=masks_test,
        defect_types_test=kinds,
        train_files=np.array([str(p.relative_to(root)) for p in train_files]),
        test_files=np.array([str(p.relative_to(root)) for p in test_files]),
        DESCR=(
            f"Image folder {str(root)!r}: {len(train_files)} normal training images, {len(test_files)} test "
            f"images ({int(defect.sum())} defective: {', '.join(classes) or 'none'}); "
            f"grayscale, resized to {size} x {size}."
        ),
    )
