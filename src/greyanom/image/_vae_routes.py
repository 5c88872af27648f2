"""The routes of :class:`~greyanom.image.ConvVAEDetector`: what the VAE reconstructs, and registration.

A route is a small object built from the detector's parameters; it checks the image size,
turns images into network inputs at fit time (learning how: the feature standardisation),
builds the route's network and its scoring front end. The detector owns one route and, with
``register=True``, one :class:`Registration`, and calls them by name; the trainer
(:func:`greyanom.image._torch._train.fit_network`) and the scorer
(:class:`greyanom.image._torch._infer.VAEScorer`) are shared by every route. Learned state
(``feature_mean_``, ``reference_``, ...) stays on the detector, which saves it; the routes hold
only parameters. torch is imported inside the methods.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PixelRoute", "FeatureRoute", "Registration", "route_of"]

#: Average-pooling neighbourhood of the backbone features (as the patch detectors' default).
FEATURE_PATCH_SIZE = 3


class PixelRoute:
    """``input_space="pixels"``: the case study's ``ConvVAE`` reconstructs the images (Bernoulli)."""

    name = "pixels"
    #: Fixed blur of the heatmap before the score blur (none: the map is per pixel already).
    map_sigma = 0.0
    #: Whether the per-element residual variance is a pixel map (smoothed by one pixel).
    pixel_maps = True

    def __init__(self, *, channels, latent_dim, bottleneck_channels):
        self.channels = channels
        self.latent_dim = latent_dim
        self.bottleneck_channels = bottleneck_channels

    def check(self, image_shape, augmentation):
        """Raise ``ValueError`` for images the network cannot take."""
        h, w = image_shape
        stride = 2 ** len(self.channels)
        if h % stride or w % stride:
            raise ValueError(
                f"X has images of size {(h, w)}; with {len(self.channels)} stride-2 blocks "
                f"(channels={self.channels}) both sides must be divisible by {stride}."
            )
        if "rot90" in augmentation and h != w:
            raise ValueError(f"augmentation 'rot90' needs square images, got size {(h, w)}.")

    def fit_inputs(self, images, train_idx, device, front_batch):
        """Network inputs of the (registered) training images and the learned state (none here)."""
        return images, {"feature_shape_": None}

    def inputs(self, images, device, det, front_batch, inference_dtype):
        """Network inputs of (registered) images: the images."""
        return images

    def new_module(self, image_shape, feature_shape=None):
        from greyanom.image._torch._vae_module import ConvVAE

        return ConvVAE(tuple(image_shape), self.channels, self.latent_dim, self.bottleneck_channels)

    def front(self, device, det):
        """Images → network inputs on ``device``: the identity."""
        from torch import nn

        return nn.Identity()

    def front_batch(self, device, batch_size):
        return batch_size


class FeatureRoute:
    """``input_space="features"``: a ``FeatureVAE`` reconstructs frozen EfficientNet-Lite0 patch features."""

    name = "features"
    pixel_maps = False

    def __init__(self, *, stages, stride, channels, latent_dim, bottleneck_channels):
        self.stages = stages
        self.stride = stride
        self.channels = channels
        self.latent_dim = latent_dim
        self.bottleneck_channels = bottleneck_channels

    @property
    def map_sigma(self):
        """The per-cell map is upsampled to the image and blurred by half a cell."""
        return self.stride / 2.0

    def check(self, image_shape, augmentation):
        h, w = image_shape
        if augmentation:
            raise ValueError(
                f"augmentation={augmentation!r} is not supported with input_space='features' "
                "(the features are extracted once, before training); use augmentation=None."
            )
        stride = self.stride * 2 ** (len(self.channels) - 1)
        if h % stride or w % stride or min(h, w) < 32:
            raise ValueError(
                f"X has images of size {(h, w)}; input_space='features' with feature_stride={self.stride} "
                f"and {len(self.channels) - 1} stride-2 blocks needs both sides divisible by {stride} "
                "(and at least 32)."
            )

    def _backbone(self, device, image_shape, mean=None, std=None):
        from greyanom.image import _backbone
        from greyanom.image._torch._feature_vae import BackboneFeatures

        rgb_mean, rgb_std = _backbone.NORMALIZATIONS["imagenet"]
        return BackboneFeatures(
            _backbone.load_backbone(device), self.stages, _backbone.feature_grid(image_shape, self.stride),
            FEATURE_PATCH_SIZE, rgb_mean, rgb_std, mean, std,
        )

    def fit_inputs(self, images, train_idx, device, front_batch):
        """Standardised features of every image; the standardisation comes from the training rows."""
        from greyanom.image._torch._infer import front_inputs

        raw = front_inputs(self._backbone(device, images.shape[1:]), images, device, front_batch)
        train_raw = raw[train_idx].astype(np.float64)
        mean = train_raw.mean(axis=(0, 2, 3)).astype(np.float32)
        std = train_raw.std(axis=(0, 2, 3))
        std = np.maximum(std, 1e-6 * max(float(std.max()), 1e-12)).astype(np.float32)
        inputs = ((raw - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
        state = {"feature_mean_": mean, "feature_std_": std, "feature_shape_": tuple(int(v) for v in inputs.shape[1:])}
        return inputs, state

    def new_module(self, image_shape, feature_shape):
        from greyanom.image._torch._feature_vae import FeatureVAE

        return FeatureVAE(tuple(feature_shape), self.channels, self.latent_dim, self.bottleneck_channels)

    def inputs(self, images, device, det, front_batch, inference_dtype):
        """Standardised features of (registered) images, the backbone in ``inference_dtype``."""
        from greyanom.image._torch._infer import front_inputs

        return front_inputs(self.front(device, det), images, device, front_batch, inference_dtype)

    def front(self, device, det):
        """Images → standardised features on ``device`` (the detector's ``feature_mean_``, ``feature_std_``)."""
        return self._backbone(device, det.image_shape_, det.feature_mean_, det.feature_std_)

    def front_batch(self, device, batch_size):
        # on the CPU the backbone runs one image at a time: the activations of one 256x256
        # image stay in cache, and batches of 4 to 32 measured 2 to 4 times slower per image
        return 1 if str(device).startswith("cpu") else batch_size


class Registration:
    """``register=True``: translation registration to a reference (windowed FFT phase correlation).

    The shifts are estimated on the host (:func:`greyanom.image._align.estimate_shifts`,
    scikit-image); moving the images and their heatmaps happens on the detector's device
    (:func:`greyanom.image._torch._infer.shift_images`).
    """

    def fit(self, images, train_idx, val_idx):
        """Return the reference (from the training rows), every image registered onto it, and the
        validation rows' shifts ``(len(val_idx), 2)`` (for their held-out scores)."""
        from greyanom.image._align import apply_shifts, estimate_shifts, fit_reference

        reference, aligned_train = fit_reference(images[train_idx])
        aligned = np.empty_like(images)
        aligned[train_idx] = aligned_train
        val_shifts = estimate_shifts(images[val_idx], reference)
        aligned[val_idx] = apply_shifts(images[val_idx], val_shifts)
        return reference, aligned, val_shifts

    def shifts(self, images, reference):
        """Shifts ``(n, 2)`` that move each image onto ``reference``."""
        from greyanom.image._align import estimate_shifts

        return estimate_shifts(images, reference)


def route_of(det):
    """The route object of a :class:`ConvVAEDetector`'s (checked) parameters."""
    common = dict(
        latent_dim=int(det.latent_dim),
        bottleneck_channels=None if det.bottleneck_channels is None else int(det.bottleneck_channels),
    )
    if det.input_space == "pixels":
        return PixelRoute(channels=_positive_ints(det.channels, "channels"), **common)
    from greyanom.image import _backbone

    return FeatureRoute(
        stages=_backbone.check_stages(det.feature_stages),
        stride=int(det.feature_stride),
        channels=_positive_ints(det.feature_channels, "feature_channels"),
        **common,
    )


def _positive_ints(values, name):
    if len(values) == 0 or not all(
        isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 1 for c in values
    ):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {values!r}.")
    return tuple(int(c) for c in values)
