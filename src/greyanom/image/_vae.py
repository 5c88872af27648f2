"""ConvVAEDetector: the convolutional β-VAE of the case study behind the detector contract.

The class holds the parameters, the sklearn contract and the learned state; it calls by name
the objects that do the work: a route per ``input_space`` and a registration
(:mod:`greyanom.image._vae_routes`), one trainer (``_torch/_train.fit_network``), one scoring
module for ``score``, ``explain`` and the TorchScript export (``_torch/_infer.VAEScorer``,
on ``device_``), the export (:mod:`greyanom.image._vae_export`) and the file codec
(:mod:`greyanom.image._vae_state`).

``torch`` is an optional extra: this module imports it only inside methods, so that
``from greyanom import ConvVAEDetector`` works without it and ``fit`` raises an
ImportError that names the extra to install.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import warnings

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_random_state

from greyanom._optional import import_optional, import_torch, resolve_device
from greyanom._threads import threaded
from greyanom._validation import check_finite
from greyanom.base import ImageExplanation
from greyanom.image import _vae_state
from greyanom.image._base import TORCH_CONSTRAINTS, BaseImageDetector
from greyanom.image._reduce import check_sigma

__all__ = ["ConvVAEDetector", "VAEExplanation"]

logger = logging.getLogger("greyanom.vae")

_AUGMENTATIONS = ("hflip", "vflip", "rot90", "rotate", "noise")
_CLASS = "ConvVAEDetector"
#: Quantile of held-out normal pixel errors that ``normalize_heatmap`` maps to 1.
_HEATMAP_QUANTILE = 99.5
#: What :meth:`ConvVAEDetector.explain` returns.
_EXPLANATION_FIELDS = ("score", "heatmap", "reconstruction", "latent_mean", "latent_logvar", "shift")


@dataclasses.dataclass(frozen=True)
class VAEExplanation(ImageExplanation):
    """Explanation of :class:`ConvVAEDetector` scores.

    Attributes
    ----------
    heatmap : ndarray of shape (n, H, W)
        Squared reconstruction error per pixel, :math:`h(x) = (x - \\hat x)^2`, or with
        ``residual_normalization="std"`` its z-score form
        :math:`((x - \\hat x - m) / s)^2` (see :class:`ConvVAEDetector`).
    score : ndarray of shape (n,)
        Anomaly scores, equal to ``detector.score(X)``.
    reconstruction : ndarray of shape (n, H, W) or None
        The decoder's output for ``z = mu``; ``None`` for ``input_space="features"``.
    latent_mean : ndarray of shape (n, latent_dim)
        Mean :math:`\\mu(x)` of the encoder's Gaussian.
    latent_logvar : ndarray of shape (n, latent_dim)
        Log-variance :math:`\\log \\sigma^2(x)` of the encoder's Gaussian.
    shift : ndarray of shape (n, 2) or None
        With ``register=True``, the ``(dy, dx)`` translation in pixels that moved each
        image onto the training reference; ``None`` otherwise.
    """

    latent_mean: np.ndarray | None = None
    latent_logvar: np.ndarray | None = None
    shift: np.ndarray | None = None


_CONSTRAINTS = {
    **BaseImageDetector._parameter_constraints,
    "channels": [tuple, list],
    "latent_dim": [Interval(numbers.Integral, 1, None, closed="left")],
    "bottleneck_channels": [Interval(numbers.Integral, 1, None, closed="left"), None],
    "beta": [Interval(numbers.Real, 0, None, closed="left")],
    "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
    "min_learning_rate": [Interval(numbers.Real, 0, None, closed="left")],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    "kl_warmup_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
    "grad_clip_norm": [Interval(numbers.Real, 0, None, closed="neither"), None],
    "early_stopping_patience": [Interval(numbers.Integral, 1, None, closed="left"), None],
    "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
    "augmentation": [tuple, list, None],
    "rotation_degrees": [Interval(numbers.Real, 0, 180, closed="both")],
    "noise_std": [Interval(numbers.Real, 0, None, closed="left")],
    "input_space": [StrOptions({"pixels", "features"})],
    "feature_stages": [tuple, list],
    "feature_stride": [Interval(numbers.Integral, 1, None, closed="left")],
    "feature_channels": [tuple, list],
    "residual_normalization": [StrOptions({"none", "std"})],
    "register": ["boolean"],
    "inference_dtype": TORCH_CONSTRAINTS["inference_dtype"],
    "device": "no_validation",
    "n_jobs": [Interval(numbers.Integral, None, -1, closed="right"), Interval(numbers.Integral, 1, None, closed="left"), None],
    "n_threads": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"deprecated"}), None],
    "verbose": ["verbose"],
    "random_state": ["random_state"],
}


class ConvVAEDetector(BaseImageDetector):
    """Convolutional β-VAE anomaly detector for grayscale inspection images.

    The model of the case study (sections 3.4-3.5): four ``Conv 3x3 stride 2 → BatchNorm →
    LeakyReLU`` blocks (32, 64, 128, 256 channels), linear heads for the latent mean
    :math:`\\mu` and log-variance :math:`\\log \\sigma^2` (latent size 128), a mirrored
    ``ConvTranspose`` decoder and a sigmoid output, trained on normal images with the
    β-VAE ELBO (Bernoulli/BCE reconstruction, closed-form KL, reparameterisation). The
    case study's own layout has 26.0M parameters at 256x256, over its 15M budget (the
    two heads read a 65,536-wide feature map); a 1x1 convolution to
    ``bottleneck_channels`` before the heads (mirrored in the decoder) brings it to
    3.95M. That pixel VAE is ``input_space="pixels"``. By default (``"features"``) the
    same β-VAE recipe reconstructs frozen EfficientNet-Lite0 patch features instead (a
    1.4M-parameter convolutional VAE), which measured far better on real images, and
    by default every heatmap is the residual's z-score against held-out normal images
    (``residual_normalization="std"``). Scoring is deterministic: eval mode and
    ``z = mu``.

    Parameters
    ----------
    channels : tuple of int, default=(32, 64, 128, 256)
        Output channels of the stride-2 encoder blocks; the depth is ``len(channels)``
        and image sides must be divisible by ``2 ** len(channels)``.
    latent_dim : int, default=128
        Size of the latent code.
    bottleneck_channels : int or None, default=32
        Channels of the 1x1 reduction before the heads (and of the mirrored 1x1
        expansion). ``None`` gives the case study's exact layout (26.0M parameters at
        256x256).
    beta : float, default=1.0
        Weight of the KL term after annealing. ``beta < 1`` favours sharper
        reconstructions (pixel-level sensitivity), ``beta > 1`` a smoother latent space.
    max_epochs : int, default=50
        Maximum number of training epochs.
    batch_size : int, default=32
        Images per optimisation step, and per inference batch.
    learning_rate : float, default=1e-3
        Initial AdamW learning rate.
    min_learning_rate : float, default=1e-5
        Final learning rate of the cosine schedule over ``max_epochs``.
    weight_decay : float, default=1e-5
        AdamW weight decay.
    kl_warmup_epochs : int, default=10
        Epochs over which β rises linearly from 0 to ``beta`` (KL annealing, against
        posterior collapse); 0 disables annealing.
    grad_clip_norm : float or None, default=1.0
        Maximum gradient norm; ``None`` disables clipping.
    early_stopping_patience : int or None, default=10
        Stop after this many epochs without improvement of the validation
        reconstruction loss (counted from the first epoch at full β); the best weights
        are restored. ``None`` trains for ``max_epochs``.
    validation_fraction : float in (0, 1), default=0.2
        Fraction of the (normal) training images held out of training for early
        stopping, the residual statistics, the heatmap display scale and ``offset_``; at
        least one image (at least 10 for a steady threshold).
    augmentation : None or tuple of str, default=None
        Training augmentations, any of ``"hflip"``, ``"vflip"``, ``"rot90"`` (square
        images), ``"rotate"`` (uniform in ±``rotation_degrees``) and ``"noise"``
        (Gaussian, ``noise_std``). Use only transformations under which a normal image
        stays normal: flips and 90° rotations suit periodic wafer and die patterns, but
        not oriented parts (a flipped transistor is the "misplaced" defect). See the
        user guide.
    rotation_degrees : float, default=5.0
        Range of the ``"rotate"`` augmentation.
    noise_std : float, default=0.01
        Standard deviation of the ``"noise"`` augmentation (pixel values in [0, 1]).
    input_space : {"pixels", "features"}, default="features"
        What the VAE reconstructs. ``"pixels"``: the images (the case study's model).
        ``"features"``: frozen EfficientNet-Lite0 patch features (the taps the patch
        detectors use, ``feature_stages`` on a grid of ``feature_stride`` pixels, 3x3
        locally averaged, standardised per channel), reconstructed by a small
        convolutional VAE (``FeatureVAE`` in ``greyanom.image._torch``,
        Gaussian likelihood, ``feature_channels``) within the 15M parameter budget; the
        per-cell map is upsampled to the image and blurred by ``feature_stride / 2``
        pixels. Needs the ``features`` extra. The default because it measured far
        better on MVTec transistor (image AUROC 0.993 against 0.892 for the best pixel
        VAE, full recipe, same run; user guide); ``"pixels"`` keeps the case study's model.
    feature_stages : tuple of int, default=(3, 5)
        EfficientNet-Lite0 stages tapped for ``input_space="features"``.
    feature_stride : int, default=8
        Pixels per feature cell for ``input_space="features"``.
    feature_channels : tuple of int, default=(128, 128, 128)
        Channels of the feature VAE's 1x1 input projection and of each of its stride-2
        blocks; the grid side must be divisible by ``2 ** (len(feature_channels) - 1)``.
    residual_normalization : {"none", "std"}, default="std"
        ``"none"``: the heatmap is the squared residual :math:`(x - \\hat x)^2` (the case
        study's). ``"std"``: the squared residual z-score
        :math:`((x - \\hat x - m) / s)^2` per pixel (per feature for
        ``input_space="features"``, averaged over channels), with the mean :math:`m` and
        standard deviation :math:`s` of the residual on the held-out validation images
        (``residual_mean_``, ``residual_std_``): what the network misses on every normal
        image and how much each pixel varies no longer count as anomalies. Acts at
        scoring time only (it can be changed with ``set_params`` after ``fit``).
    register : bool, default=False
        Register every image to a reference by FFT phase correlation (sub-pixel
        translation, :func:`skimage.registration.phase_cross_correlation`) before the
        network; the reference is the mean of the registered training images. Heatmaps
        are returned in each test image's own frame. For images aligned by construction
        up to a small shift (wafers, dies); not for parts that move (MVTec objects).
        Needs scikit-image.
    score_reduction : {"mean", "max", "topk"}, default="topk"
        How the heatmap becomes one score (see :func:`greyanom.image.reduce_error_maps`):
        by default the mean of the top ``topk_fraction`` of pixels. ``"mean"`` is the
        case study's a(x), the mean squared error, which dilutes small defects; for the
        pixel VAE ``"topk"`` of 1% after a 2-pixel blur measured best (user guide).
    smoothing_sigma : float, default=0.0
        Gaussian blur (pixels) of the heatmap before reducing; 0 = none (the feature
        VAE's heatmap is already blurred by ``feature_stride / 2`` pixels).
    topk_fraction : float, default=0.05
        Fraction of pixels averaged by ``score_reduction="topk"``.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_``; see :class:`~greyanom.base.BaseDetector`.
    calibration : {"heldout", "in_sample"}, default="heldout"
        Which training scores set ``offset_`` (and fill ``heldout_scores_``):
        ``"heldout"``, the scores of the validation images, which the weights never
        trained on; with ``residual_normalization="std"`` each one is z-scored by the
        residual statistics of the *other* validation images (leave-one-out), since
        they set those statistics too (one more network pass over the validation
        images); ``"in_sample"``, the scores of all training images (optimistic: the
        threshold then flags more than ``contamination`` of new normal data).
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        ``"auto"`` resolves in ``fit`` to CUDA when available, else the CPU; an explicit
        ``"cuda"`` without CUDA is an error. Training uses mixed precision on CUDA.
    inference_dtype : {"float32", "bfloat16"}, default="float32"
        Dtype the VAE (and, for ``input_space="features"``, the backbone) runs in when
        scoring (autocast); the residual, its z-score, the upsampling, blurs and reduction
        stay in float32. Training is unaffected (mixed precision on CUDA as always). The
        fitted detector records the dtype its ``offset_``, ``residual_std_`` and
        ``heatmap_scale_`` were calibrated with (``calibration_dtype_``) and refuses to
        score in another one: refit after changing it. The TorchScript export is float32.
    n_jobs : int or None, default=None
        CPU threads torch (and the other pools) use inside ``fit``, ``score`` and
        ``explain`` (restored afterwards), with the meaning every detector gives it
        (:doc:`/guide/performance`): ``None`` all usable CPUs (affinity, container quota
        and ``OMP_NUM_THREADS``), ``k`` uses ``k`` (at most the usable CPUs), ``-1`` all,
        ``-2`` all but one.
        On a CPU shared with other jobs, ``n_jobs=1`` avoids thread oversubscription: on
        the 2-core benchmark machine under load it cut the batch-1 latency from 321 ms
        to 17 ms per image (user guide).
    n_threads : int or None, default="deprecated"
        Deprecated alias of ``n_jobs`` (a ``FutureWarning`` in ``fit``); used when
        ``n_jobs`` is None.
    verbose : bool, default=False
        Show a tqdm progress bar over epochs.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation, the validation split, shuffling, augmentation
        and reparameterisation noise (a private ``torch.Generator``; the global RNGs are
        never seeded). Training on the CPU with the same seed gives the same model. With
        ``None`` the draws come from NumPy's global random state and vary from fit to fit.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network (``ConvVAE``), in eval mode on ``device_``.
    device_ : torch.device
        The device used.
    n_params_ : int
        Number of trainable parameters.
    history_ : dict of list
        Per epoch: ``epoch``, ``beta``, ``lr``, and ``train_recon``, ``train_kl``,
        ``train_loss``, ``val_recon``, ``val_kl``, ``val_loss`` (per image: BCE summed
        over pixels, KL summed over latent units, ``recon + beta * kl``).
    best_epoch_ : int
        The epoch whose weights were kept.
    n_epochs_ : int
        Epochs trained (fewer than ``max_epochs`` after early stopping).
    residual_mean_, residual_std_ : ndarray of shape (1, H, W), or (C, h, w) for features
        Mean and (smoothed, floored) standard deviation of the residual
        :math:`x - \\hat x` on the held-out validation images.
    validation_indices_ : ndarray of int
        Rows of the training ``X`` held out for early stopping, the residual statistics and
        ``offset_`` (the network did not train on them). Since the same images estimate the
        residual statistics, the scores that set ``offset_`` z-score each of them by the
        statistics of the others (see ``calibration``): scored with statistics they set
        themselves, they scored lower than new normal images.
    reference_ : ndarray of shape (H, W) or None
        The registration reference (``register=True``).
    feature_shape_ : tuple of int or None
        ``(C, h, w)`` of the backbone features (``input_space="features"``).
    feature_mean_, feature_std_ : ndarray of shape (C,)
        Per-channel standardisation of the backbone features (``input_space="features"``).
    heatmap_scale_ : float
        The 99.5th percentile of held-out normal pixel errors, used by
        :meth:`normalize_heatmap` to display heatmaps on one scale for all images.
    image_shape_ : tuple of int
        ``(H, W)`` of the training images.
    calibration_dtype_ : str
        The ``inference_dtype`` that ``offset_`` was calibrated with.
    offset_, threshold_ : float
        See :class:`~greyanom.base.BaseDetector`; set on the held-out scores of the
        validation images (``heldout_scores_``: held out from training and, leave-one-out,
        from the residual statistics), so ``predict`` flags about ``contamination`` of new
        normals.
    decision_scores_ : ndarray
        In-sample scores of all training images.

    See Also
    --------
    PCADetector : The linear reconstruction baseline.
    greyanom.image.reduce_error_maps : The shared score reductions.

    Notes
    -----
    The training loss per image is
    :math:`-\\sum_i [x_i \\log \\hat x_i + (1 - x_i) \\log (1 - \\hat x_i)] +
    \\beta\\, D_{KL}(\\mathcal N(\\mu, \\sigma^2) \\,\\|\\, \\mathcal N(0, I))`, averaged over
    the batch, with :math:`z = \\mu + \\sigma \\odot \\epsilon`. The heatmap is
    :math:`h(x) = (x - \\hat x)^2` with :math:`\\hat x` decoded from :math:`z = \\mu`.

    References
    ----------
    .. [1] D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    .. [2] I. Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a
       Constrained Variational Framework", ICLR 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from greyanom import ConvVAEDetector
    >>> rng = np.random.default_rng(0)
    >>> X = np.clip(0.5 + 0.05 * rng.normal(size=(40, 32, 32)), 0, 1).astype(np.float32)
    >>> det = ConvVAEDetector(input_space="pixels", channels=(8, 16), latent_dim=8,
    ...                       bottleneck_channels=4, max_epochs=2, random_state=0).fit(X)
    >>> det.score(X[:3]).shape
    (3,)
    """

    _parameter_constraints: dict = _CONSTRAINTS
    _explanation_class = VAEExplanation
    _fitted_attrs = ("device_", "module_", "validation_indices_", "reference_", "feature_shape_", "residual_mean_",
                     "residual_std_", "heatmap_scale_", "n_params_", "best_epoch_", "n_epochs_", "history_")

    def _required_attrs(self):
        names = super()._required_attrs()
        return (*names, "feature_mean_", "feature_std_") if getattr(self, "input_space", None) == "features" else names

    def __init__(
        self,
        *,
        channels=(32, 64, 128, 256),
        latent_dim=128,
        bottleneck_channels=32,
        beta=1.0,
        max_epochs=50,
        batch_size=32,
        learning_rate=1e-3,
        min_learning_rate=1e-5,
        weight_decay=1e-5,
        kl_warmup_epochs=10,
        grad_clip_norm=1.0,
        early_stopping_patience=10,
        validation_fraction=0.2,
        augmentation=None,
        rotation_degrees=5.0,
        noise_std=0.01,
        input_space="features",
        feature_stages=(3, 5),
        feature_stride=8,
        feature_channels=(128, 128, 128),
        residual_normalization="std",
        register=False,
        score_reduction="topk",
        smoothing_sigma=0.0,
        topk_fraction=0.05,
        contamination="auto",
        calibration="heldout",
        device="auto",
        inference_dtype="float32",
        n_jobs=None,
        n_threads="deprecated",
        verbose=False,
        random_state=None,
    ):
        self.channels = channels
        self.latent_dim = latent_dim
        self.bottleneck_channels = bottleneck_channels
        self.beta = beta
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.min_learning_rate = min_learning_rate
        self.weight_decay = weight_decay
        self.kl_warmup_epochs = kl_warmup_epochs
        self.grad_clip_norm = grad_clip_norm
        self.early_stopping_patience = early_stopping_patience
        self.validation_fraction = validation_fraction
        self.augmentation = augmentation
        self.rotation_degrees = rotation_degrees
        self.noise_std = noise_std
        self.input_space = input_space
        self.feature_stages = feature_stages
        self.feature_stride = feature_stride
        self.feature_channels = feature_channels
        self.residual_normalization = residual_normalization
        self.register = register
        self.score_reduction = score_reduction
        self.smoothing_sigma = smoothing_sigma
        self.topk_fraction = topk_fraction
        self.contamination = contamination
        self.calibration = calibration
        self.device = device
        self.inference_dtype = inference_dtype
        self.n_jobs = n_jobs
        self.n_threads = n_threads
        self.verbose = verbose
        self.random_state = random_state


    # -- the parts the detector is made of ----------------------------------------------------
    def _route(self):
        """The route object (:mod:`greyanom.image._vae_routes`) of the current parameters."""
        from greyanom.image._vae_routes import route_of

        return route_of(self)

    def _checked_augmentation(self):
        if self.augmentation is None:
            return ()
        aug = tuple(self.augmentation)
        bad = [a for a in aug if a not in _AUGMENTATIONS]
        if bad:
            raise ValueError(f"augmentation must hold names from {_AUGMENTATIONS}, got {bad!r}.")
        return aug

    def _train_config(self, augmentation):
        from greyanom.image._torch._train import TrainConfig

        return TrainConfig(
            max_epochs=int(self.max_epochs), batch_size=int(self.batch_size), learning_rate=float(self.learning_rate),
            min_learning_rate=float(self.min_learning_rate), weight_decay=float(self.weight_decay),
            beta=float(self.beta), kl_warmup_epochs=int(self.kl_warmup_epochs),
            grad_clip_norm=None if self.grad_clip_norm is None else float(self.grad_clip_norm),
            early_stopping_patience=None if self.early_stopping_patience is None else int(self.early_stopping_patience),
            augmentation=augmentation, rotation_degrees=float(self.rotation_degrees), noise_std=float(self.noise_std),
        )

    def _effective_n_jobs(self, warn=False):
        n_threads = getattr(self, "n_threads", "deprecated")
        if n_threads != "deprecated":
            if warn:
                warnings.warn(
                    "n_threads is deprecated and will be removed in a future release; use n_jobs "
                    "(the same meaning as for every image detector: None, -1 or a thread count).",
                    FutureWarning,
                    stacklevel=5,
                )
            if getattr(self, "n_jobs", None) is None:
                return n_threads
        return getattr(self, "n_jobs", None)

    def _threads(self, warn=False):
        from greyanom._optional import torch_threads

        return torch_threads(self._effective_n_jobs(warn), _CLASS)

    # -- fitting ----------------------------------------------------------------------
    def _fit_images(self, images):
        check_sigma(self.smoothing_sigma, images.shape[1:])
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"min_learning_rate={self.min_learning_rate!r} is above learning_rate={self.learning_rate!r}: "
                "the cosine schedule decays from learning_rate down to min_learning_rate."
            )
        route = self._route()
        augmentation = self._checked_augmentation()
        route.check(self.image_shape_, augmentation)
        n = len(images)
        n_val = max(1, int(round(self.validation_fraction * n)))
        if n - n_val < 1:
            raise ValueError(f"X has {n} image(s); at least 2 are needed (validation_fraction={self.validation_fraction}).")
        import_torch(_CLASS)
        self.device_ = resolve_device(self.device, _CLASS)
        with self._threads(warn=True):
            self._fit_torch(route, images, n_val, augmentation)

    def _fit_torch(self, route, images, n_val, augmentation):
        from greyanom.image._torch._infer import (
            leave_one_out_scores, moments_of, n_parameters, residual_sums, score_images,
        )
        from greyanom.image._torch._train import fit_network
        from greyanom.image._vae_routes import Registration

        rs = check_random_state(self.random_state)
        perm = rs.permutation(len(images))
        train_idx, val_idx = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        self.validation_indices_ = val_idx
        seed = int(rs.randint(0, 2**31 - 1))
        self.reference_ = None
        val_shifts = None
        if self.register:
            self.reference_, images, val_shifts = Registration().fit(images, train_idx, val_idx)
        batch = int(self.batch_size)
        inputs, state = route.fit_inputs(images, train_idx, self.device_, route.front_batch(self.device_, batch))
        for key, value in state.items():
            setattr(self, key, value)
        from greyanom._progress import progress_stage

        # a bar with verbose=True; otherwise the epochs feed the fit's heartbeat and a DEBUG line
        with progress_stage(f"{_CLASS} training", total=int(self.max_epochs), unit="epoch",
                            verbose=bool(self.verbose)) as progress:
            self.module_, self.history_, self.best_epoch_ = fit_network(
                lambda: route.new_module(self.image_shape_, self.feature_shape_), inputs, train_idx, val_idx,
                self._train_config(augmentation), seed=seed, device=self.device_, progress=progress,
            )
        self.n_epochs_ = len(self.history_["epoch"])
        self.n_params_ = n_parameters(self.module_)
        # per-element residual mean and standard deviation on the held-out normal images
        # (the validation split): the mean takes out what the network gets wrong on every
        # normal image (blur of a fixed pattern), the std what varies from image to image
        dtype = str(self.inference_dtype)
        val_inputs = inputs[val_idx]
        if dtype != "float32":  # calibrate on inputs as scoring computes them (the backbone in dtype)
            val_inputs = route.inputs(images[val_idx], self.device_, self, route.front_batch(self.device_, batch), dtype)
        sums = residual_sums(self.module_, val_inputs, batch, self.device_, inference_dtype=dtype)
        mean, var = moments_of(sums)
        self.residual_mean_ = np.asarray(mean, dtype=np.float32)
        self.residual_std_ = _floored_std(var, pixels=route.pixel_maps).astype(np.float32)
        scorer = self._scorer()
        val_heat = score_images(scorer, None, batch, self.device_, inputs=val_inputs, fields=("heatmap",),
                                inference_dtype=dtype)
        self.heatmap_scale_ = float(max(np.percentile(val_heat["heatmap"], _HEATMAP_QUANTILE), np.finfo(np.float32).tiny))
        if self.calibration == "heldout" and self.residual_normalization == "std" and len(val_idx) >= 2:
            # the validation images set the residual statistics too: each one's held-out score is
            # z-scored by the statistics of the others (taken, and dropped, by _heldout_scores)
            self._heldout_state = leave_one_out_scores(
                scorer, val_inputs, sums, batch, self.device_,
                std_of=lambda v: _floored_std(v, pixels=route.pixel_maps), shifts=val_shifts, inference_dtype=dtype,
            )
        logger.info("trained %d epochs (best %d), %d parameters", self.n_epochs_, self.best_epoch_, self.n_params_)

    def _heldout_scores(self, X, train_scores):
        """Scores of the validation images (``validation_indices_``), which the weights never trained on.

        With ``residual_normalization="std"`` the validation images also set the residual
        statistics (``residual_mean_``, ``residual_std_``); scored with them, they score lower
        than new normal images (their own residuals widen the standard deviation: with 3
        epochs on 100 wafer images the threshold flagged 16 % of new normals at
        ``contamination=0.05``). Their held-out scores are therefore z-scored by the
        statistics of the other validation images (exact leave-one-out, computed in ``fit``
        for one more network pass over the validation images): the scores a detector whose
        normalisation never saw them gives them. With ``"none"`` (or a single validation
        image) they are the validation images' own scores. The validation split also chose
        the early-stopping epoch, so the scores are held out from the gradient steps and
        the normalisation but not from model selection (a slight optimism, far smaller than
        in-sample scores). With fewer than 10 validation images the threshold is noisy (a
        warning says so); raise ``validation_fraction`` or use
        :func:`greyanom.decision.calibrate`.
        """
        held = self.__dict__.pop("_heldout_state", None)
        if held is None:
            held = np.asarray(train_scores, dtype=np.float64)[self.validation_indices_]
        if held.size < 10:
            warnings.warn(
                f"ConvVAEDetector: the threshold is set on {held.size} validation image(s); it is noisy "
                "(raise validation_fraction, or calibrate on more held-out normals).",
                UserWarning,
                stacklevel=4,
            )
        return held

    # -- scoring (on device_: only what is asked for comes back) ------------------------------
    def _scorer(self, device=None, module=None):
        """The scoring module of the current parameters on ``device`` (default ``device_``)."""
        from greyanom.image._torch._infer import VAEScorer

        device = self.device_ if device is None else device
        check_sigma(self.smoothing_sigma, self.image_shape_)
        route = self._route()
        std = self.residual_normalization == "std"
        return VAEScorer(
            route.front(device, self), self.module_ if module is None else module, self.image_shape_,
            residual_mean=self.residual_mean_ if std else None,
            inv_var=1.0 / np.square(self.residual_std_, dtype=np.float32) if std else None,
            map_sigma=route.map_sigma, reduction=self.score_reduction,
            smoothing_sigma=float(self.smoothing_sigma), topk_fraction=float(self.topk_fraction),
        )

    def _explain_images(self, images, fields=_EXPLANATION_FIELDS):
        """``fields`` of :class:`VAEExplanation` for validated images, computed on ``device_``."""
        from greyanom.image._torch._infer import score_images
        from greyanom.image._vae_routes import Registration

        with self._threads():
            shifts = None if self.reference_ is None else Registration().shifts(images, self.reference_)
            batch = int(self.batch_size)
            out = score_images(self._scorer(), images, batch, self.device_, shifts=shifts, fields=fields,
                               front_batch=self._route().front_batch(self.device_, batch),
                               inference_dtype=str(getattr(self, "inference_dtype", "float32")))
        if "shift" in fields:
            out["shift"] = shifts
        return out

    def estimate_shifts(self, X):
        """Shifts that register images onto ``reference_`` (``register=True``), for the TorchScript export.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images in [0, 1] (or uint8) of the training size.

        Returns
        -------
        shifts : ndarray of shape (n, 2)
            The ``(dy, dx)`` translation (pixels) that moves each image onto the reference:
            ``explain(X).shift``, by windowed FFT phase correlation on the host.
        """
        check_is_fitted(self)
        if self.reference_ is None:
            raise ValueError("estimate_shifts needs a detector fitted with register=True.")
        from greyanom.image._vae_routes import Registration

        return Registration().shifts(self._validated(X), self.reference_)

    def _score_images(self, images):
        return self._explain_images(images, ("score",))["score"]

    @threaded
    def explain(self, X):
        """Reconstruction, heatmap, latent mean and log-variance, and score of images.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images in [0, 1] (or uint8) of the training size.

        Returns
        -------
        explanation : VAEExplanation
            ``reconstruction`` and ``heatmap`` (n, H, W), ``latent_mean`` and
            ``latent_logvar`` (n, latent_dim), ``score`` (n,) equal to ``score(X)``.
        """
        return super().explain(X)

    def embed(self, X):
        """Latent means of images, for drift monitoring (:class:`~greyanom.drift.FeatureDriftMonitor`).

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images in [0, 1] (or uint8).

        Returns
        -------
        latent_mean : ndarray of shape (n, latent_dim)
            The encoder's ``mu`` (eval mode), the same as ``explain(X).latent_mean``; one
            decoder pass per image is spent as well.
        """
        check_is_fitted(self)
        return self._explain_images(self._validated(X), ("latent_mean",))["latent_mean"]


    def normalize_heatmap(self, heatmap):
        """Put heatmaps on the training set's scale for display.

        Parameters
        ----------
        heatmap : array-like
            Heatmaps from :meth:`explain`.

        Returns
        -------
        normalized : ndarray
            ``heatmap / heatmap_scale_``: 1 is the 99.5th percentile of the pixel errors
            of held-out normal training images, so the same colour means the same error
            on every image. Per-image normalisation would instead stretch the noise of
            every normal image to full scale.
        """
        check_is_fitted(self)
        heatmap = np.asarray(heatmap)
        if heatmap.dtype.kind not in "biuf":
            raise TypeError(f"heatmap must be a numeric array, got dtype {heatmap.dtype}.")
        heatmap = heatmap.astype(np.float32, copy=False)
        check_finite(heatmap, "heatmap")
        return heatmap / np.float32(self.heatmap_scale_)

    # -- history ----------------------------------------------------------------------
    def plot_history(self, ax=None):
        """Plot training and validation reconstruction, KL and total loss per epoch.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Axes to draw on; a new figure is created if None.

        Returns
        -------
        ax : matplotlib Axes
        """
        check_is_fitted(self)
        plt = import_optional("matplotlib.pyplot", "plot", "ConvVAEDetector.plot_history")
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4))
        epochs = self.history_["epoch"]
        for term, color in (("recon", "C0"), ("kl", "C1"), ("loss", "C2")):
            ax.plot(epochs, self.history_[f"train_{term}"], color=color, label=f"train {term}")
            ax.plot(epochs, self.history_[f"val_{term}"], color=color, linestyle="--", label=f"val {term}")
        ax.axvline(self.best_epoch_, color="0.5", linewidth=0.8, linestyle=":", label="kept epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss per image")
        ax.set_yscale("symlog")
        ax.legend(fontsize="small", ncol=2)
        return ax

    # -- export -------------------------------------------------------------------------------
    def export_torchscript(self, path, *, check_images=None, rtol=None, atol=None):
        """Write a TorchScript module for serving and check it against this estimator.

        Every route exports. The module maps a float32 batch ``(n, 1, H, W)`` in [0, 1] to
        ``(reconstruction, score, heatmap)`` with shapes ``(n, 1, H, W)``, ``(n,)`` and
        ``(n, 1, H, W)``, computed as :meth:`explain` does (eval mode, z = mu, the residual
        normalisation and score reduction set now). For ``input_space="features"`` it holds
        the frozen EfficientNet-Lite0 front end (traced for ``image_shape_``) and returns an
        empty reconstruction ``(n, 0, H, W)``: that VAE reconstructs features, not pixels.
        With ``register=True`` it is called as ``module(x, shifts)`` with the shifts of
        :meth:`estimate_shifts`: it moves the images onto the reference, and the
        reconstruction and heatmap back into each image's frame, as :meth:`explain` does,
        so its score is the detector's. The shift estimation (FFT phase correlation with
        scikit-image, on the host) is not part of the export; ``module(x)`` alone takes the
        images as registered already (no shift).

        Parameters
        ----------
        path : str or path-like
            Output file (``.pt``).
        check_images : array-like of shape (n, H, W), optional
            Images used to verify the export; by default four seeded random images.
        rtol, atol : float, optional
            Tolerances of the check, which runs on ``device_`` with TF32 off. By default
            ``rtol=1e-4, atol=1e-6`` on the CPU and ``rtol=1e-3, atol=1e-5`` on CUDA (the
            scripted and the eager module may pick different kernels there).

        Returns
        -------
        path : pathlib.Path

        Raises
        ------
        RuntimeError
            If the exported module's outputs differ from the estimator's.
        """
        check_is_fitted(self)
        from greyanom.image._vae_export import export_torchscript

        return export_torchscript(self, path, check_images, rtol, atol)

    # -- persistence hooks (save, load and pickling are BaseImageDetector's; the codec is _vae_state) ---
    def _state_arrays(self):
        return _vae_state.state_arrays(self)

    def _set_state_arrays(self, arrays):
        _vae_state.set_state_arrays(self, arrays)

    def _json_state(self):
        return _vae_state.json_state(self)

    def _set_json_state(self, state):
        _vae_state.set_json_state(self, state)

    @classmethod
    def _params_from_json(cls, params):
        return super()._params_from_json(_vae_state.upgraded_params(params))

    def _pickle_torch_state(self, state):
        _vae_state.pickle_module(state)

    def _restore_torch_state(self, state):
        _vae_state.restore_module(self)

def _smoothed(values, *, pixels):
    """A per-pixel map lightly blurred (one pixel) against the noise of few validation images."""
    from scipy.ndimage import gaussian_filter

    values = np.asarray(values, dtype=np.float64)
    return gaussian_filter(values, sigma=(0.0, 1.0, 1.0), mode="reflect") if pixels else values


def _floored_std(var, *, pixels):
    """Per-element residual standard deviation, lightly smoothed (pixels) and floored.

    With a few dozen validation images the per-pixel variance is noisy; a Gaussian blur of
    one pixel steadies it, and a floor of a tenth of the median standard deviation keeps
    pixels that the network reconstructs almost perfectly from dominating the z-scores.
    """
    std = np.sqrt(np.maximum(_smoothed(var, pixels=pixels), 0.0))
    floor = max(0.1 * float(np.median(std)), 1e-6)
    return np.maximum(std, floor)
