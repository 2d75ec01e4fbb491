"""The one interface every CLIP backend implements.

unCLIP (Ramesh et al. 2022, sec. 2) and CLIP-VQDiffusion (Kim et al. 2024) only
need three things from CLIP: the image embedding ``z_i``, the text embedding
``z_t`` and the text encoder's token states (the decoder's extra context,
sec. 2.1). ``Encoder`` exposes exactly that, plus the image size and whether
the embeddings are L2-normalised (``normalized``).

An encoder directory holds ``encoder.json`` (``{"backend": NAME, ...}``) and
whatever the backend needs; ``unclip.encoders.load_encoder(path)`` reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import atomic_write_text
from unclip.errors import UnclipError

__all__ = ["TextEncoding", "Encoder", "ENCODER_FILE", "check_captions", "check_utf8", "write_encoder_json",
           "read_encoder_json"]

ENCODER_FILE = "encoder.json"


@dataclass
class TextEncoding:
    """Output of ``Encoder.encode_text``."""

    embed: torch.Tensor    # [B, D] float, L2-normalised when the encoder's ``normalized`` is True
    tokens: torch.Tensor   # [B, L, Dt] float, token states of the text encoder (padding rows are zero)
    mask: torch.Tensor     # [B, L] bool, True for real tokens


def check_captions(captions: Sequence[str]) -> list[str]:
    """Captions as a list of non-empty strings, or a one-line UnclipError."""
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions)
    if not captions:
        raise UnclipError("no captions to encode: pass at least one non-empty caption")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise UnclipError(f"caption {i} is a {type(caption).__name__}, not a string")
        if not caption.strip():
            raise UnclipError(f"caption {i} is empty: every caption needs some text")
        check_utf8(caption, f"caption {i}")
    return captions


def check_utf8(text: str, what: str) -> str:
    """``text`` if it can be written as UTF-8; a lone surrogate (what Python makes of non-UTF-8 bytes
    in a command line or a file read with ``surrogateescape``) is a one-line ``UnclipError``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        shown = shown[:40] + ("..." if len(shown) > 40 else "")
        raise UnclipError(f"{what} ('{shown}') is not valid UTF-8 text; re-type it or fix the terminal's "
                          "encoding (e.g. LANG=C.UTF-8)") from None
    return text


class Encoder(nn.Module):
    """A CLIP-style text/image encoder pair behind one interface.

    Subclasses set ``backend`` and the attributes ``embed_dim`` (D), ``token_dim``
    (Dt), ``max_len`` (L), ``image_size`` and ``normalized``, and implement
    ``_encode_text(captions)`` and ``_encode_image(images)`` on already
    validated, already resized inputs, plus ``save``.
    """

    backend: ClassVar[str] = ""
    embed_dim: int
    token_dim: int
    max_len: int
    image_size: int
    normalized: bool = True

    # --- public API -------------------------------------------------------
    def encode_text(self, captions: Sequence[str]) -> TextEncoding:
        """Encode captions → ``TextEncoding(embed [B,D], tokens [B,L,Dt], mask [B,L])``."""
        return self._encode_text(check_captions(captions))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images [B,3,H,W] in [-1,1] (any H, W; resized by ``preprocess``) → [B,D]."""
        return self._encode_image(self.preprocess(images))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Validate and resize images to [B,3,S,S] (S = ``image_size``), values in [-1,1].

        Non-square images are centre-cropped to a square first; grey images are
        repeated to 3 channels. The result is on the encoder's device and dtype.
        """
        if not isinstance(images, torch.Tensor):
            raise UnclipError(f"images must be a torch tensor [B,3,H,W] in [-1,1], got {type(images).__name__}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
            raise UnclipError(f"images must have shape [B,3,H,W] with B >= 1, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise UnclipError("images must be float tensors in [-1,1] (convert uint8 with x / 127.5 - 1)")
        if images.numel() and (images.min() < -1.05 or images.max() > 1.05):
            raise UnclipError("image values must lie in [-1,1] (got values outside; convert [0,1] with 2*x - 1)")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        height, width = images.shape[-2:]
        if height != width:  # centre crop to a square
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            images = images[..., top:top + side, left:left + side]
        param = next(self.parameters(), None)
        images = images.to(device=param.device if param is not None else images.device,
                           dtype=param.dtype if param is not None else images.dtype)
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False).clamp(-1, 1)
        return images

    def save(self, directory: str | Path) -> Path:
        """Write the encoder directory (``encoder.json`` + backend files); return its path."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "embed_dim": self.embed_dim, "token_dim": self.token_dim,
                "max_len": self.max_len, "image_size": self.image_size, "normalized": self.normalized}

    # --- for subclasses ---------------------------------------------------
    def _encode_text(self, captions: list[str]) -> TextEncoding:
        raise NotImplementedError

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")


def write_encoder_json(directory: Path, encoder: Encoder, **extra: Any) -> None:
    info = {**encoder.describe(), **extra}
    atomic_write_text(Path(directory) / ENCODER_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_encoder_json(directory: Path) -> dict[str, Any]:
    path = Path(directory) / ENCODER_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise UnclipError(f"{path} is missing or unreadable; is {directory} an encoder directory?") from None
    if not isinstance(info, dict) or "backend" not in info:
        raise UnclipError(f"{path} names no backend; re-export the encoder")
    return info
