"""Decoding inspection images from request bytes and rendering heatmaps as PNG.

Pillow decodes; nothing here trusts the bytes: every way a body can fail to be a
grayscale PNG or TIFF of the model's size becomes an :class:`ImageError` carrying the
HTTP status and a message for the client.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np

__all__ = ["ImageError", "decode_image", "heatmap_png", "colormap_lut"]

#: Formats of the case study's contract.
FORMATS = ("PNG", "TIFF")
#: With ``resize=True`` an image may have at most this many times the model's pixels.
_MAX_RESIZE_FACTOR = 64


class ImageError(ValueError):
    """A request body that is not a usable inspection image.

    Attributes
    ----------
    status : int
        The HTTP status to answer with (400, 415 or 422).
    code : str
        A short machine-readable reason, e.g. ``"not_an_image"``.
    """

    def __init__(self, message, *, status=422, code="invalid_image"):
        super().__init__(message)
        self.status = int(status)
        self.code = code


def _to_gray(im):
    """A 2-D float32 array in [0, 1] from a decoded Pillow image, or ImageError."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / np.float32(255.0)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.float32) / np.float32(65535.0)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ImageError("a 32-bit float image must hold finite values in [0, 1].", code="bad_range")
        return arr
    if mode == "I":
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError("a 32-bit integer image must hold values in [0, 65535].", code="bad_range")
        scale = 255.0 if arr.max() <= 255 else 65535.0
        return arr.astype(np.float32) / np.float32(scale)
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        if mode in ("LA", "La"):
            arr = np.asarray(im)
            channels, alpha = arr[..., :1], arr[..., 1]
        else:
            arr = np.asarray(im.convert("RGBA"))
            channels, alpha = arr[..., :3], arr[..., 3]
        if (alpha != 255).any():
            raise ImageError("the image has transparent pixels; send an opaque grayscale image.", code="not_grayscale")
        if channels.shape[-1] > 1 and not (channels == channels[..., :1]).all():
            raise ImageError(
                f"the image is a colour ({im.mode}) image; the model takes grayscale images.", code="not_grayscale"
            )
        return channels[..., 0].astype(np.float32) / np.float32(255.0)
    raise ImageError(f"unsupported pixel mode {im.mode!r}; send an 8- or 16-bit grayscale image.", code="bad_mode")


def _header_size(data):
    """``(height, width)`` from a PNG's IHDR chunk without decoding, or None for other bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    return None


def _multipart_hint(data):
    """A message for a multipart form upload sent where the raw image bytes belong, or None."""
    head = bytes(data[:512])
    if head.startswith(b"--") and b"content-disposition" in head.lower():
        return ("the body is a multipart form upload (curl -F); send the raw image bytes as the body instead, "
                "e.g. curl --data-binary @image.png -H 'Content-Type: application/octet-stream'.")
    return None


def decode_image(data, image_shape, *, resize=False):
    """Decode a PNG or TIFF grayscale image from bytes into the model's input.

    Parameters
    ----------
    data : bytes
        The request body.
    image_shape : tuple of int
        ``(H, W)`` the model was trained on.
    resize : bool, default=False
        ``False``: an image of another size is an error (422), because resizing changes
        the pixel scale the model learnt. ``True``: it is resized to ``image_shape``
        with Pillow's anti-aliased bilinear filter.

    Returns
    -------
    image : ndarray of shape (H, W), float32 in [0, 1]
        8-bit images are divided by 255, 16-bit images by 65535. A colour image whose
        three channels are equal (grayscale stored as RGB) is accepted.

    Raises
    ------
    ImageError
        400 for an empty body; 415 for an image of another format (JPEG, ...); 422 for
        bytes that are not an image (with a hint for a multipart form upload), a
        truncated image, a colour or transparent image, a multi-page TIFF, an image of
        the wrong size, or one of more than 64 times the model's pixels (``too_large``,
        from the image header, before decoding).

    Examples
    --------
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.full((8, 8), 128, np.uint8)).save(buf, "PNG")
    >>> decode_image(buf.getvalue(), (8, 8)).shape
    (8, 8)
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("the request body is empty; send the raw PNG or TIFF bytes of one image.", status=400, code="empty_body")
    h, w = (int(v) for v in image_shape)
    size = _header_size(data)
    if size is not None and size[0] * size[1] > _MAX_RESIZE_FACTOR * h * w:
        raise ImageError(
            f"the image is {size[0]}x{size[1]} pixels (HxW), more than {_MAX_RESIZE_FACTOR} times the model's "
            f"{h}x{w}; it is not decoded. Send images of {h}x{w}.",
            code="too_large",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format
            if fmt not in FORMATS:
                raise ImageError(f"the body is a {fmt} image; send PNG or TIFF.", status=415, code="unsupported_format")
            if getattr(im, "n_frames", 1) != 1:
                raise ImageError(f"the TIFF holds {im.n_frames} pages; send one image.", code="multi_page")
            width, height = im.size
            if (height, width) != (h, w):
                if not resize:
                    raise ImageError(
                        f"the image is {height}x{width} pixels (HxW); the model takes {h}x{w}. Send images of that "
                        "size (this service does not resize; start it with --resize to resize).",
                        code="wrong_size",
                    )
                if height * width > _MAX_RESIZE_FACTOR * h * w:
                    raise ImageError(f"the image is {height}x{width} pixels, too large to resize to {h}x{w}.", code="too_large")
            im.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        hint = _multipart_hint(data)
        raise ImageError(hint or "the body is not a PNG or TIFF image.", code="not_an_image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"the image is too large to decode: {exc}", code="too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"the image cannot be decoded (truncated or damaged): {exc}", code="damaged_image") from None
    gray = _to_gray(im)
    if gray.shape != (h, w):
        gray = np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BILINEAR))
        gray = np.clip(gray, 0.0, 1.0)
    return np.ascontiguousarray(gray, dtype=np.float32)


def colormap_lut(name="inferno"):
    """A (256, 3) uint8 lookup table of a matplotlib colour map (no pyplot, no figure).

    Parameters
    ----------
    name : str, default="inferno"
        A matplotlib colour map, the one the library's heatmap plots use by default.

    Returns
    -------
    lut : ndarray of shape (256, 3), uint8
    """
    from greyanom._optional import import_optional

    mpl = import_optional("matplotlib", "serve", "colouring heatmaps")
    cmap = mpl.colormaps[name]
    return (np.asarray(cmap(np.linspace(0.0, 1.0, 256)))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def heatmap_png(normalized, lut, *, vmax=2.0):
    """Render a normalised heatmap as a coloured PNG.

    Parameters
    ----------
    normalized : ndarray of shape (H, W)
        The heatmap divided by the model's training scale (1 = the top of the normal
        range learnt in training).
    lut : ndarray of shape (256, 3), uint8
        From :func:`colormap_lut`.
    vmax : float, default=2.0
        The normalised value shown in the brightest colour; larger values saturate.
        One fixed scale for every image, so the same colour means the same error.

    Returns
    -------
    png : bytes
    """
    from PIL import Image

    idx = np.clip(np.nan_to_num(np.asarray(normalized, dtype=np.float32) / np.float32(vmax), nan=0.0), 0.0, 1.0)
    rgb = lut[(idx * 255.0 + 0.5).astype(np.uint8)]
    buf = io.BytesIO()
    # level 1: a 256x256 map compresses in about a millisecond; level 6 costs several
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
