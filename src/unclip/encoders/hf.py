"""Backend "hf": a pretrained CLIP read from a local directory, never downloaded.

* ``HFClipEncoder``: a Hugging Face ``transformers`` ``CLIPModel`` directory
  (``config.json`` of model_type "clip", weights, tokenizer files), loaded with
  ``local_files_only=True``. Text embedding = projected state at the EOS token,
  image embedding = projected pooled class token, both L2-normalised (Radford
  et al. 2021, sec. 2.4); token states = the text transformer's last hidden states.
* ``load_open_clip("ARCH:CHECKPOINT")``: an ``open_clip`` model from a local
  checkpoint file, when ``open_clip`` is importable.

Images come in [-1,1] (the unclip convention) and are mapped to the model's
own pixel normalisation (``preprocessor_config.json``, else OpenAI's values).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip.encoders.base import Encoder, TextEncoding, write_encoder_json
from unclip.errors import UnclipError

__all__ = ["HFClipEncoder", "is_hf_clip_dir", "load_open_clip", "quiet_loading", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@contextmanager
def quiet_loading():
    """Hide transformers' "Loading weights" progress bar while a local model loads (it is restored after)."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def is_hf_clip_dir(directory: Path) -> bool:
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "clip"


def _pixel_stats(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        pre = json.loads((directory / "preprocessor_config.json").read_text(encoding="utf-8"))
        return tuple(pre["image_mean"]), tuple(pre["image_std"])
    except (OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError):
        return OPENAI_MEAN, OPENAI_STD


class HFClipEncoder(Encoder):
    """Wraps a local ``transformers.CLIPModel`` and its tokenizer (build with ``from_pretrained``)."""

    backend = "hf"
    normalized = True

    def __init__(self, model, tokenizer, *, path: str, mean=OPENAI_MEAN, std=OPENAI_STD):
        super().__init__()
        self.model = model.eval()
        self.text_tokenizer = tokenizer
        self.path = str(path)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        config = model.config
        self.embed_dim = int(config.projection_dim)
        self.token_dim = int(config.text_config.hidden_size)
        self.image_size = int(config.vision_config.image_size)
        limit = getattr(tokenizer, "model_max_length", None) or 10**9
        self.max_len = int(min(limit, config.text_config.max_position_embeddings))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "HFClipEncoder":
        directory = Path(path)
        if not directory.is_dir():
            raise UnclipError(f"Hugging Face CLIP directory not found: {directory}")
        if not is_hf_clip_dir(directory):
            raise UnclipError(f"{directory} has no config.json of model_type 'clip' (save one with CLIPModel.save_pretrained)")
        from transformers import AutoTokenizer, CLIPModel

        try:
            with quiet_loading():
                model = CLIPModel.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UnclipError(f"cannot load CLIPModel from {directory}: {str(exc).splitlines()[0]}") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise UnclipError(f"{directory} has no usable tokenizer files ({str(exc).splitlines()[0]}); "
                              "save one with tokenizer.save_pretrained") from None
        mean, std = _pixel_stats(directory)
        return cls(model, tokenizer, path=str(directory.resolve()), mean=mean, std=std).to(device).eval()

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> TextEncoding:
        batch = self.text_tokenizer(captions, padding="max_length", truncation=True,
                                    max_length=self.max_len, return_tensors="pt")
        ids = batch["input_ids"].to(self.device)                         # [B, L]
        mask = batch["attention_mask"].to(self.device)                   # [B, L]
        out = self.model.text_model(input_ids=ids, attention_mask=mask)
        embed = F.normalize(self.model.text_projection(out.pooler_output), dim=-1)   # [B, D]
        mask = mask.bool()
        return TextEncoding(embed=embed, tokens=out.last_hidden_state * mask[..., None], mask=mask)

    @torch.no_grad()
    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        pixels = ((images + 1) / 2 - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        out = self.model.vision_model(pixel_values=pixels)
        return F.normalize(self.model.visual_projection(out.pooler_output), dim=-1)  # [B, D]

    def save(self, directory: str | Path) -> Path:
        """Write an encoder directory that points at the CLIP directory (weights are not copied)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_encoder_json(directory, self, path=self.path)
        return directory


class OpenClipEncoder(Encoder):
    """An ``open_clip`` CLIP (OpenAI-style text transformer) from a local checkpoint."""

    backend = "open_clip"
    normalized = True

    def __init__(self, model, tokenizer, *, spec: str, image_size: int, mean, std):
        super().__init__()
        self.model = model.eval()
        self.text_tokenizer = tokenizer
        self.spec = spec
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        probe = tokenizer(["a"])
        self.max_len = int(probe.shape[1])
        self.image_size = int(image_size)
        with torch.no_grad():
            self.embed_dim = int(model.encode_text(probe).shape[-1])
        self.token_dim = int(model.token_embedding.weight.shape[1])

    @torch.no_grad()
    def _token_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Last hidden states of an OpenAI-style text transformer, [B, L, Dt] (mirrors encode_text)."""
        m = self.model
        x = m.token_embedding(ids) + m.positional_embedding
        batch_first = getattr(m.transformer, "batch_first", True)
        x = m.transformer(x if batch_first else x.permute(1, 0, 2), attn_mask=m.attn_mask)
        return m.ln_final(x if batch_first else x.permute(1, 0, 2))

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> TextEncoding:
        ids = self.text_tokenizer(captions).to(self.device)                 # [B, L]
        mask = ids != 0
        embed = F.normalize(self.model.encode_text(ids), dim=-1)            # [B, D]
        try:
            tokens = self._token_states(ids) * mask[..., None]
        except (AttributeError, TypeError, RuntimeError) as exc:
            raise UnclipError(f"open_clip model {self.spec} does not expose token states ({exc})") from None
        return TextEncoding(embed=embed, tokens=tokens, mask=mask)

    @torch.no_grad()
    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        pixels = ((images + 1) / 2 - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        return F.normalize(self.model.encode_image(pixels), dim=-1)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_encoder_json(directory, self, spec=self.spec)
        return directory


def load_open_clip(spec: str, *, device: str | torch.device = "cpu") -> Encoder:
    """``spec`` = ``ARCH:CHECKPOINT`` (e.g. ``ViT-B-32:/models/vit_b_32.pt``); never downloads."""
    try:
        import open_clip
    except ImportError:
        raise UnclipError("open_clip is not installed; pip install open_clip_torch, or use a "
                          "Hugging Face CLIP directory (hf:DIR)") from None
    arch, _, checkpoint = spec.partition(":")
    if not checkpoint or not Path(checkpoint).is_file():
        raise UnclipError(f"open_clip spec {spec!r} must be ARCH:LOCAL_CHECKPOINT_FILE (nothing is downloaded)")
    model = open_clip.create_model(arch, pretrained=checkpoint, device=str(device))
    tokenizer = open_clip.get_tokenizer(arch)
    visual = model.visual
    size = getattr(visual, "image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = getattr(visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(visual, "image_std", None) or OPENAI_STD
    return OpenClipEncoder(model, tokenizer, spec=spec, image_size=int(size), mean=mean, std=std).to(device).eval()
