"""Safe decoding of uploaded images and encoding of results (PNG, GIF, base64).

Uploads are untrusted: the size in bytes is capped here, and the rest (format, the pixel
count read from the header before any pixel is decoded, corrupt data) is checked by
``unclip.imagefile.open_image``, the one image reader of the CLI, the API and the datasets.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

from unclip.imagefile import ALLOWED_FORMATS, ImageRejected, open_image, to_rgb_on_white

__all__ = ["ALLOWED_FORMATS", "ImageRejected", "decode_upload", "to_rgb_on_white", "png_bytes", "gif_bytes",
           "strip", "b64"]


def decode_upload(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int | None = None,
                  name: str = "image") -> Image.Image:
    """Decode ``data`` into an RGB image on white, refusing anything unsafe.

    Order matters: byte size, then the header (format and dimensions), and only
    then the pixels. An image with a side over ``max_side`` is downscaled (Lanczos,
    aspect kept) so that what waits in the queue is small.
    """
    if not data:
        raise ImageRejected(f"{name}: ", "the upload is empty; choose a PNG, JPEG, WebP, GIF or BMP file")
    if len(data) > max_bytes:
        raise ImageRejected(f"{name}: ", f"the upload is {len(data)} bytes, more than the limit of "
                            f"{max_bytes} bytes; send a smaller image")
    return open_image(data, max_pixels=max_pixels, max_side=max_side, name=name)


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
