"""Safe decoding of uploaded images and encoding of results (PNG, GIF, base64).

Uploads are untrusted: the size in bytes is capped by the caller, the format
must be one of a few raster formats, and the pixel count is read from the
header and checked *before* any pixel is decoded, so a decompression bomb
(a tiny file that claims a huge canvas) is refused without allocating it.
Nothing here touches Pillow's global ``Image.MAX_IMAGE_PIXELS`` (house rule 6).
"""

from __future__ import annotations

import base64
import io

from PIL import Image, UnidentifiedImageError

from unclip.errors import UnclipError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class ImageRejected(UnclipError):
    """An upload is not an acceptable image; the message says why."""


def decode_upload(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int | None = None,
                  name: str = "image") -> Image.Image:
    """Decode ``data`` into an RGB image on white, refusing anything unsafe.

    Order matters: byte size, then the header (format and dimensions), and only
    then the pixels. An image with a side over ``max_side`` is downscaled (Lanczos,
    aspect kept) so that what waits in the queue is small.
    """
    if not data:
        raise ImageRejected(f"{name}: the upload is empty; choose a PNG, JPEG, WebP, GIF or BMP file")
    if len(data) > max_bytes:
        raise ImageRejected(f"{name}: the upload is {len(data)} bytes, more than the limit of "
                            f"{max_bytes} bytes; send a smaller image")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise ImageRejected(f"{name}: refused as a decompression bomb (the header claims too many "
                            "pixels); resize the image first") from None
    except UnidentifiedImageError:
        raise ImageRejected(f"{name}: not a readable image; upload a PNG, JPEG, WebP, GIF or BMP file") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on hostile headers
        raise ImageRejected(f"{name}: cannot read the image header ({type(exc).__name__}); "
                            "upload a valid PNG, JPEG, WebP, GIF or BMP file") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        image.close()
        raise ImageRejected(f"{name}: {width}x{height} pixels is over the limit of {max_pixels} "
                            "pixels (possible decompression bomb); resize the image first")
    try:
        image.seek(0)  # first frame of an animation
        image.load()
        rgb = to_rgb_on_white(image)
        if max_side is not None and max(rgb.size) > max_side:
            rgb.thumbnail((max_side, max_side), Image.LANCZOS)
        return rgb
    except Image.DecompressionBombError:
        raise ImageRejected(f"{name}: refused as a decompression bomb; resize the image first") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageRejected(f"{name}: the image data is corrupt or truncated ({type(exc).__name__}); "
                            "re-save it and upload again") from None
    finally:
        image.close()


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB copy of ``image``; transparent pixels become white (the datasets are RGB on white)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")  # as unclip.pipelines.images.from_pil
    return image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gif_bytes(frames: list[Image.Image], *, frame_ms: int = 250) -> bytes:
    """A looping GIF that plays the frames forward then back (a 'ping-pong' strip)."""
    if not frames:
        raise ValueError("gif_bytes needs at least one frame")
    sequence = list(frames) + list(frames[-2:0:-1])
    buffer = io.BytesIO()
    sequence[0].save(buffer, format="GIF", save_all=True, append_images=sequence[1:],
                     duration=frame_ms, loop=0)
    return buffer.getvalue()


def strip(frames: list[Image.Image]) -> Image.Image:
    """Frames side by side, left to right, on white."""
    width = sum(frame.width for frame in frames)
    height = max(frame.height for frame in frames)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for frame in frames:
        canvas.paste(frame, (x, 0))
        x += frame.width
    return canvas


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
