"""Reading image files safely, for every entry point: the CLI, the HTTP API and the dataset readers.

Input images are untrusted. ``open_image`` checks, in this order: the file is not empty, its
header names one of a few raster formats, the canvas it claims is at most ``max_pixels``
(``unclip.limits.MAX_IMAGE_PIXELS`` unless told otherwise), and only then decodes the pixels.
A decompression bomb is thus refused without allocating it, and every failure is one
``ImageRejected`` line naming the file. Nothing here touches Pillow's global
``Image.MAX_IMAGE_PIXELS`` (house rule 6). ``image_to_tensor`` is the one conversion of a
picture into the project's tensor layout ([3, S, S] in [-1, 1], transparency on white, centre
square, Lanczos resize), used alike by the datasets and by the pipelines' image inputs, so an
image a user passes in is seen exactly as the training images were.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from unclip.errors import UnclipError
from unclip.limits import MAX_IMAGE_PIXELS

__all__ = ["ALLOWED_FORMATS", "ImageRejected", "open_image", "check_image_header", "to_rgb_on_white", "image_to_tensor",
           "load_image"]

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_KINDS = "a PNG, JPEG, WebP, GIF or BMP file"


class ImageRejected(UnclipError):
    """An input is not an acceptable image; the message (one line, naming the input) says why.

    ``reason`` is the message without the name (datasets list it beside the path of a skipped file).
    """

    def __init__(self, label: str, reason: str | None = None):
        label, reason = ("", label) if reason is None else (label, reason)
        super().__init__(label + reason)
        self.reason = reason


def _source(source: bytes | str | Path, name: str | None) -> tuple[io.BytesIO | Path, str]:
    """The thing to open and the prefix of every message about it ("NAME: " or "cannot read image PATH: ")."""
    if isinstance(source, (bytes, bytearray)):
        label = f"{name or 'image'}: "
        if not source:
            raise ImageRejected(label, f"the file is empty; give {_KINDS}")
        return io.BytesIO(source), label
    path = Path(source)
    label = f"cannot read image {name or path}: "
    try:
        if not path.is_file():
            raise ImageRejected(f"image not found: {path}")
        if path.stat().st_size == 0:
            raise ImageRejected(label, f"the file is empty; give {_KINDS}")
    except OSError as exc:
        raise ImageRejected(label, exc.strerror or type(exc).__name__) from None
    return path, label


def _open_header(source: bytes | str | Path, max_pixels: int, name: str | None) -> tuple[Image.Image, str]:
    """Open (header only) and check format and pixel count; the caller closes the image."""
    handle, label = _source(source, name)
    try:
        with warnings.catch_warnings():  # Pillow warns above its own threshold; our limit is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise ImageRejected(label, f"refused as a decompression bomb (the header claims more pixels than "
                            f"the limit of {max_pixels}); resize the image first") from None
    except UnidentifiedImageError:
        raise ImageRejected(label, f"not a readable image; give {_KINDS}") from None
    except OSError as exc:
        if exc.errno is not None:  # the filesystem: no permission, an I/O error
            raise ImageRejected(label, exc.strerror or _first_line(exc)) from None
        raise ImageRejected(label, f"the image data is corrupt or truncated ({_first_line(exc)}); "
                            "re-save the image") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on hostile headers
        raise ImageRejected(label, f"cannot read the image header ({type(exc).__name__}); "
                            f"give a valid {_KINDS[2:]}") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        image.close()
        raise ImageRejected(label, f"{width}x{height} pixels is over the limit of {max_pixels} pixels "
                            "(possible decompression bomb); resize the image first")
    return image, label


def check_image_header(source: bytes | str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS,
                       name: str | None = None) -> tuple[int, int]:
    """(width, height) from the header alone, after the checks of ``open_image``; decodes no pixel."""
    image, _ = _open_header(source, max_pixels, name)
    with image:
        return image.size


def open_image(source: bytes | str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None,
               max_side: int | None = None) -> Image.Image:
    """Decode ``source`` (file bytes or a path) into an RGB image on white; the first frame of an animation.

    Raises ``ImageRejected`` (one line) for a missing, empty, non-image, over-``max_pixels``,
    truncated or corrupt input. With ``max_side``, a larger image is downscaled (Lanczos, aspect kept).
    """
    image, label = _open_header(source, max_pixels, name)
    try:
        image.seek(0)
        image.load()  # full decode: truncated files fail here, not later
        rgb = to_rgb_on_white(image)
        if max_side is not None and max(rgb.size) > max_side:
            rgb.thumbnail((max_side, max_side), Image.LANCZOS)
        return rgb
    except Image.DecompressionBombError:
        raise ImageRejected(label, "refused as a decompression bomb; resize the image first") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageRejected(label, f"the image data is corrupt or truncated ({_first_line(exc)}); "
                            "re-save the image") from None
    finally:
        image.close()


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB copy of ``image``; transparent pixels become white (the datasets are RGB on white)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def image_to_tensor(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """PIL image (any mode) → FloatTensor [3, S, S] in [-1, 1]: transparent pixels on white, the centre
    square cropped, then resized to ``size`` (Lanczos) when given. Square inputs are only resized."""
    image = to_rgb_on_white(image)
    width, height = image.size
    side = min(width, height)
    if (width, height) != (side, side):
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if size is not None and side != size:
        image = image.resize((size, size), Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32)                                  # [S, S, 3] in 0..255
    return torch.from_numpy(array.copy()).permute(2, 0, 1).div(127.5).sub(1.0)


def load_image(source: bytes | str | Path, size: int | None = None, *, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """An image file (path or bytes) → [3, S, S] in [-1, 1] (``image_to_tensor``); a missing, corrupt or
    over-``max_pixels`` input raises a one-line ``ImageRejected`` (``open_image``)."""
    return image_to_tensor(open_image(source, max_pixels=max_pixels), size)
