"""CLIP encoders behind one interface (see ``unclip.encoders.base``).

Backends: ``clip`` (trained from scratch), ``lit`` (locked MiniLM text tower,
trainable image tower) and ``hf`` (a local Hugging Face CLIPModel directory, or
open_clip when installed). ``load_encoder(path)`` opens any of them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unclip.encoders.base import ENCODER_FILE, Encoder, TextEncoding, read_encoder_json
from unclip.encoders.stats import load_embed_stats, save_embed_stats
from unclip.errors import UnclipError

__all__ = ["Encoder", "TextEncoding", "load_encoder", "load_embed_stats", "save_embed_stats", "BACKENDS"]

BACKENDS = ("clip", "lit", "hf", "open_clip")


def load_encoder(path: str | Path, *, device: str | torch.device = "cpu") -> Encoder:
    """Load an encoder from a directory (or ``hf:DIR`` / ``open_clip:ARCH:CHECKPOINT``), in eval mode.

    A directory with ``encoder.json`` names its backend; a directory with a
    Hugging Face ``config.json`` of model_type ``clip`` is read as backend "hf".
    Nothing is ever downloaded.
    """
    text = str(path)
    if text.startswith("hf:"):
        from unclip.encoders.hf import HFClipEncoder

        return HFClipEncoder.from_pretrained(text[3:], device=device)
    if text.startswith("open_clip:"):
        from unclip.encoders.hf import load_open_clip

        return load_open_clip(text[len("open_clip:"):], device=device)
    directory = Path(text)
    if not directory.is_dir():
        raise UnclipError(f"encoder directory not found: {directory} (train one with 'unclip train clip')")
    if not (directory / ENCODER_FILE).is_file():
        from unclip.encoders.hf import HFClipEncoder, is_hf_clip_dir

        if is_hf_clip_dir(directory):
            return HFClipEncoder.from_pretrained(directory, device=device)
        raise UnclipError(f"{directory} is not an encoder directory (no {ENCODER_FILE} and no CLIP config.json)")
    info = read_encoder_json(directory)
    backend = info["backend"]
    if backend == "clip":
        from unclip.encoders.clip import ClipEncoder

        encoder = ClipEncoder.load(directory, device=device)
    elif backend == "lit":
        from unclip.encoders.lit import LitEncoder

        encoder = LitEncoder.load(directory, device=device)
    elif backend == "hf":
        from unclip.encoders.hf import HFClipEncoder

        encoder = HFClipEncoder.from_pretrained(info["path"], device=device)
    elif backend == "open_clip":
        from unclip.encoders.hf import load_open_clip

        encoder = load_open_clip(info["spec"], device=device)
    else:
        raise UnclipError(f"{directory / ENCODER_FILE} names unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    return encoder.eval()
