"""ConvVAEDetector: the convolutional β-VAE of the case study behind the detector contract.

``torch`` is an optional extra: this module imports it only inside methods, so that
``from greyanom import ConvVAEDetector`` works without it and ``fit`` raises an
ImportError that names the extra to install.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import warnings
from pathlib import Path

import numpy as np
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, check_random_state

from greyanom._optional import import_optional, import_torch, resolve_device
from greyanom.base import ImageExplanation
from greyanom.image._base import BaseImageDetector

__all__ = ["ConvVAEDetector", "VAEExplanation"]

logger = logging.getLogger("greyanom.vae")

_AUGMENTATIONS = ("hflip", "vflip", "rot90", "rotate", "noise")
_CLASS = "ConvVAEDetector"
#: Quantile of held-out normal pixel errors that ``normalize_heatmap`` maps to 1.
_HEATMAP_QUANTILE = 99.5


@dataclasses.dataclass(frozen=True)
class VAEExplanation(ImageExplanation):
    """Explanation of :class:`ConvVAEDetector` scores.

    Attributes
    ----------
    heatmap : ndarray of shape (n, H, W)
        Squared reconstruction error per pixel, :math:`h(x) = (x - \\hat x)^2`.
    score : ndarray of shape (n,)
        Anomaly scores, equal to ``detector.score(X)``.
    reconstruction : ndarray of shape (n, H, W)
        The decoder's output for ``z = mu``.
    latent_mean : ndarray of shape (n, latent_dim)
        Mean :math:`\\mu(x)` of the encoder's Gaussian.
    latent_logvar : ndarray of shape (n, latent_dim)
        Log-variance :math:`\\log \\sigma^2(x)` of the encoder's Gaussian.
    """

    latent_mean: np.ndarray | None = None
    latent_logvar: np.ndarray | None = None


class ConvVAEDetector(BaseImageDetector):
    """Convolutional β-VAE anomaly detector for grayscale inspection images.

    The model of the case study (sections 3.4-3.5): four ``Conv 3x3 stride 2 → BatchNorm →
    LeakyReLU`` blocks (32, 64, 128, 256 channels), linear heads for the latent mean
    :math:`\\mu` and log-variance :math:`\\log \\sigma^2` (latent size 128), a mirrored
    ``ConvTranspose`` decoder and a sigmoid output, trained on normal images with the
    β-VAE ELBO (Bernoulli/BCE reconstruction, closed-form KL, reparameterisation). The
    case study's own layout has 26.0M parameters at 256x256, over its 15M budget (the
    two heads read a 65,536-wide feature map); a 1x1 convolution to
    ``bottleneck_channels`` before the heads (mirrored in the decoder) brings the
    default to 3.95M. Scoring is deterministic: eval mode and ``z = mu``.

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
        Fraction of the (normal) training images held out for early stopping and for
        the heatmap display statistics; at least one image.
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
    score_reduction : {"mean", "max", "topk"}, default="mean"
        How the heatmap becomes one score; ``"mean"`` is the case study's a(x), the mean
        squared error. See :func:`greyanom.image.reduce_error_maps`.
    smoothing_sigma : float, default=0.0
        Gaussian blur (pixels) of the heatmap before reducing; 0 = none.
    topk_fraction : float, default=0.01
        Fraction of pixels averaged by ``score_reduction="topk"``.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_``; see :class:`~greyanom.base.BaseDetector`.
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        ``"auto"`` resolves in ``fit`` to CUDA when available, else the CPU; an explicit
        ``"cuda"`` without CUDA is an error. Training uses mixed precision on CUDA.
    n_threads : int or None, default=None
        CPU threads torch uses inside ``fit``, ``score`` and ``explain`` (restored
        afterwards); None keeps torch's setting. On a CPU shared with other jobs,
        ``n_threads=1`` avoids thread oversubscription: on the 2-core benchmark machine
        under load it cut the batch-1 latency from 321 ms to 17 ms per image (user guide).
    verbose : bool, default=False
        Show a tqdm progress bar over epochs.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation, the validation split, shuffling, augmentation
        and reparameterisation noise (a private ``torch.Generator``; the global RNGs are
        never seeded). Training on the CPU with the same seed gives the same model.

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
    heatmap_scale_ : float
        The 99.5th percentile of held-out normal pixel errors, used by
        :meth:`normalize_heatmap` to display heatmaps on one scale for all images.
    image_shape_ : tuple of int
        ``(H, W)`` of the training images.
    validation_indices_ : ndarray of int
        Training images held out for early stopping; their scores set ``offset_``.
    offset_, threshold_ : float
        See :class:`~greyanom.base.BaseDetector`; set on the scores of the validation images
        (held out from training), so ``predict`` flags about ``contamination`` of new normals.
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
    >>> det = ConvVAEDetector(channels=(8, 16), latent_dim=8, bottleneck_channels=4,
    ...                       max_epochs=2, random_state=0).fit(X)
    >>> det.score(X[:3]).shape
    (3,)
    """

    _parameter_constraints: dict = {
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
        "device": "no_validation",
        "n_threads": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }
    _explanation_class = VAEExplanation

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
        score_reduction="mean",
        smoothing_sigma=0.0,
        topk_fraction=0.01,
        contamination="auto",
        device="auto",
        n_threads=None,
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
        self.score_reduction = score_reduction
        self.smoothing_sigma = smoothing_sigma
        self.topk_fraction = topk_fraction
        self.contamination = contamination
        self.device = device
        self.n_threads = n_threads
        self.verbose = verbose
        self.random_state = random_state

    # -- checks -----------------------------------------------------------------------
    def _checked_channels(self):
        ch = self.channels
        if len(ch) == 0 or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 1 for c in ch):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {ch!r}.")
        return tuple(int(c) for c in ch)

    def _checked_augmentation(self):
        if self.augmentation is None:
            return ()
        aug = tuple(self.augmentation)
        bad = [a for a in aug if a not in _AUGMENTATIONS]
        if bad:
            raise ValueError(f"augmentation must hold names from {_AUGMENTATIONS}, got {bad!r}.")
        return aug

    def _arch(self):
        return {
            "image_shape": tuple(self.image_shape_),
            "channels": self._checked_channels(),
            "latent_dim": int(self.latent_dim),
            "bottleneck_channels": None if self.bottleneck_channels is None else int(self.bottleneck_channels),
        }

    def _threads(self):
        from greyanom._optional import torch_threads

        return torch_threads(getattr(self, "n_threads", None))

    # -- fitting ----------------------------------------------------------------------
    def _fit_images(self, images):
        import_torch(_CLASS)
        with self._threads():
            self._fit_torch(images)

    def _fit_torch(self, images):
        torch = import_torch(_CLASS)
        from greyanom.image._torch._infer import infer_batches, n_parameters
        from greyanom.image._torch._train import TrainConfig, train_vae
        from greyanom.image._torch._vae_module import ConvVAE

        channels = self._checked_channels()
        augmentation = self._checked_augmentation()
        stride = 2 ** len(channels)
        h, w = self.image_shape_
        if h % stride or w % stride:
            raise ValueError(
                f"X has images of size {(h, w)}; with {len(channels)} stride-2 blocks (channels={channels}) "
                f"both sides must be divisible by {stride}."
            )
        if "rot90" in augmentation and h != w:
            raise ValueError(f"augmentation 'rot90' needs square images, got size {(h, w)}.")
        n = len(images)
        n_val = max(1, int(round(self.validation_fraction * n)))
        if n - n_val < 1:
            raise ValueError(f"X has {n} image(s); at least 2 are needed (validation_fraction={self.validation_fraction}).")
        self.device_ = resolve_device(self.device, _CLASS)
        rs = check_random_state(self.random_state)
        perm = rs.permutation(n)
        train_idx, val_idx = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        self.validation_indices_ = val_idx
        seed = int(rs.randint(0, 2**31 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # weight initialisation only, inside a forked RNG
            module = ConvVAE(**self._arch())
        module.to(self.device_)
        generator = torch.Generator(device=self.device_)
        generator.manual_seed(seed)
        config = TrainConfig(
            max_epochs=int(self.max_epochs),
            batch_size=int(self.batch_size),
            learning_rate=float(self.learning_rate),
            min_learning_rate=float(self.min_learning_rate),
            weight_decay=float(self.weight_decay),
            beta=float(self.beta),
            kl_warmup_epochs=int(self.kl_warmup_epochs),
            grad_clip_norm=None if self.grad_clip_norm is None else float(self.grad_clip_norm),
            early_stopping_patience=None if self.early_stopping_patience is None else int(self.early_stopping_patience),
            augmentation=augmentation,
            rotation_degrees=float(self.rotation_degrees),
            noise_std=float(self.noise_std),
        )
        x_all = torch.from_numpy(np.ascontiguousarray(images))[:, None]
        progress = None
        if self.verbose:
            from tqdm.auto import tqdm

            progress = tqdm(total=config.max_epochs, desc=_CLASS, unit="epoch")
        try:
            history, best_epoch, _ = train_vae(
                module,
                x_all[torch.from_numpy(train_idx)],
                x_all[torch.from_numpy(val_idx)],
                config,
                generator=generator,
                device=self.device_,
                progress=progress,
            )
        finally:
            if progress is not None:
                progress.close()
        self.module_ = module.eval()
        self.history_ = history
        self.best_epoch_ = int(best_epoch)
        self.n_epochs_ = len(history["epoch"])
        self.n_params_ = n_parameters(module)
        val_heat = infer_batches(module, images[val_idx], self.batch_size, self.device_)["heatmap"]
        self.heatmap_scale_ = float(max(np.percentile(val_heat, _HEATMAP_QUANTILE), np.finfo(np.float32).tiny))
        logger.info("trained %d epochs (best %d), %d parameters", self.n_epochs_, self.best_epoch_, self.n_params_)

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
        return self._explain_images(self._validated(X))["latent_mean"]

    def _heldout_scores(self, X, train_scores):
        """Scores of the validation images (``validation_indices_``), which the weights never trained on.

        Free: ``fit`` already scores every training image. The validation split chose the
        early-stopping epoch, so these scores are held out from the gradient steps but not
        from model selection (a slight optimism, far smaller than in-sample scores). With
        fewer than 10 validation images the threshold is noisy (a warning says so); raise
        ``validation_fraction`` or use :func:`greyanom.decision.calibrate`.
        """
        held = np.asarray(train_scores, dtype=np.float64)[self.validation_indices_]
        if held.size < 10:
            warnings.warn(
                f"ConvVAEDetector: the threshold is set on {held.size} validation image(s); it is noisy "
                "(raise validation_fraction, or calibrate on more held-out normals).",
                UserWarning,
                stacklevel=4,
            )
        return held

    # -- scoring ----------------------------------------------------------------------
    def _explain_images(self, images):
        from greyanom.image._torch._infer import infer_batches

        with self._threads():
            return infer_batches(self.module_, images, int(self.batch_size), self.device_)

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
        return np.asarray(heatmap, dtype=np.float32) / np.float32(self.heatmap_scale_)

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

    # -- export and persistence -----------------------------------------------------------
    def export_torchscript(self, path, *, check_images=None, rtol=1e-4, atol=1e-6):
        """Write a TorchScript module for serving and check it against this estimator.

        The module maps a float32 batch ``(n, 1, H, W)`` in [0, 1] to
        ``(reconstruction, score, heatmap)`` with shapes ``(n, 1, H, W)``, ``(n,)`` and
        ``(n, 1, H, W)``, computed as :meth:`explain` does (eval mode, z = mu, the same
        score reduction).

        Parameters
        ----------
        path : str or path-like
            Output file (``.pt``).
        check_images : array-like of shape (n, H, W), optional
            Images used to verify the export; by default four seeded random images.
        rtol, atol : float
            Tolerances of the check.

        Returns
        -------
        path : pathlib.Path

        Raises
        ------
        RuntimeError
            If the exported module's outputs differ from the estimator's.
        """
        check_is_fitted(self)
        torch = import_torch(_CLASS)
        if check_images is None:
            check_images = np.random.default_rng(0).random((4, *self.image_shape_), dtype=np.float32)
        images = self._validated(check_images)
        cpu_module = _copy_module_to_cpu(self.module_)
        path = Path(path)
        with warnings.catch_warnings():
            # torch 2.13 marks TorchScript deprecated in favour of torch.export; serving
            # stacks (TorchServe, libtorch, Triton) still load TorchScript files.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
            scripted = torch.jit.script(_scoring_with(self, cpu_module).eval())
            scripted.save(str(path))
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            recon, score, heat = loaded(torch.from_numpy(images)[:, None])
        expected = self.explain(images)
        for name, got, want in (
            ("reconstruction", recon[:, 0].numpy(), expected.reconstruction),
            ("heatmap", heat[:, 0].numpy(), expected.heatmap),
            ("score", score.numpy(), expected.score),
        ):
            if not np.allclose(got, want, rtol=rtol, atol=atol):
                err = float(np.max(np.abs(got - want)))
                raise RuntimeError(f"the TorchScript export's {name} differs from the estimator's (max abs diff {err:.3g}).")
        return path

    def _config(self):
        params = self.get_params()
        params["channels"] = list(self._checked_channels())
        if params["augmentation"] is not None:
            params["augmentation"] = list(params["augmentation"])
        if not (params["random_state"] is None or isinstance(params["random_state"], numbers.Integral)):
            params["random_state"] = None  # a RandomState instance is not saved
        params["device"] = str(params["device"])
        return {
            "class": _CLASS,
            "params": params,
            "state": {
                "image_shape_": list(self.image_shape_),
                "threshold_": self.threshold_,
                "offset_": self.offset_,
                "heatmap_scale_": self.heatmap_scale_,
                "n_params_": self.n_params_,
                "best_epoch_": self.best_epoch_,
                "n_epochs_": self.n_epochs_,
                "device_": str(self.device_),
                "history_": self.history_,
            },
        }

    def save(self, path):
        """Save the fitted detector: weights in safetensors, parameters and state in JSON.

        Parameters
        ----------
        path : str or path-like
            Output file (``.safetensors``).

        Returns
        -------
        path : pathlib.Path

        See Also
        --------
        load : Read the file back; no code is executed on loading.
        """
        check_is_fitted(self)
        from greyanom._persist import save_arrays

        arrays = {k: v.detach().cpu().numpy() for k, v in self.module_.state_dict().items()}
        return save_arrays(path, arrays, self._config())

    @classmethod
    def load(cls, path, *, device=None):
        """Load a detector written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save`.
        device : str, optional
            Device to load onto; by default the one it was trained on, or the CPU with a
            warning when that was CUDA and CUDA is not available.

        Returns
        -------
        detector : ConvVAEDetector

        Raises
        ------
        ValueError
            If the file is not a saved ConvVAEDetector (e.g. a pickle, a foreign
            safetensors file, or another detector); nothing in it is executed.
        """
        from greyanom._persist import load_arrays

        arrays, config = load_arrays(path, _CLASS)
        params = dict(config["params"])
        params["channels"] = tuple(params["channels"])
        if params.get("augmentation") is not None:
            params["augmentation"] = tuple(params["augmentation"])
        det = cls(**params)
        state = config["state"]
        det.image_shape_ = tuple(state["image_shape_"])
        for key in ("threshold_", "offset_", "heatmap_scale_", "n_params_", "best_epoch_", "n_epochs_", "history_"):
            setattr(det, key, state[key])
        det._restore_module(arrays, state["device_"] if device is None else device, explicit=device is not None)
        return det

    def _restore_module(self, arrays, device, *, explicit=False):
        torch = import_torch(_CLASS)
        from greyanom.image._torch._vae_module import ConvVAE

        module = ConvVAE(**self._arch())
        state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"the saved weights do not match the saved architecture: {exc}") from exc
        device = str(device)
        if device.startswith("cuda") and not torch.cuda.is_available() and not explicit:
            warnings.warn(
                f"this ConvVAEDetector was trained on {device!r} but CUDA is not available; loading it on the CPU.",
                UserWarning,
                stacklevel=3,
            )
            device = "cpu"
        self.device_ = resolve_device(device, _CLASS)
        self.module_ = module.to(self.device_).eval()

    def __getstate__(self):
        state = self.__dict__.copy()
        module = state.pop("module_", None)
        if module is not None:
            state["_module_arrays"] = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        arrays = state.pop("_module_arrays", None)
        self.__dict__.update(state)
        if arrays is not None:
            self._restore_module(arrays, state["device_"])


def _copy_module_to_cpu(module):
    import copy

    return copy.deepcopy(module).cpu().float().eval()


def _scoring_with(det, module):
    from greyanom.image._torch._infer import ScoringModule

    return ScoringModule(module, det.score_reduction, float(det.smoothing_sigma), float(det.topk_fraction))
