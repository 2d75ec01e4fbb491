"""Registry of training stages: ``unclip train NAME`` looks the name up here.

Values are ``module:Class`` so that importing the registry stays cheap and a
stage's heavy dependencies load only when it is used.
"""

from __future__ import annotations

import importlib

from unclip.errors import UnclipError

STAGES: dict[str, str] = {
    "clip": "unclip.train.stages.clip:ClipStage",
    "prior": "unclip.train.stages.prior:PriorStage",
    "decoder": "unclip.train.stages.decoder:DecoderStage",
    "upsampler": "unclip.train.stages.upsampler:UpsamplerStage",
    "vq": "unclip.train.stages.vq:VQStage",
    "autoencoder": "unclip.train.stages.autoencoder:AutoencoderStage",
    "clipvq": "unclip.train.stages.clipvq:ClipVQStage",
    "distill": "unclip.train.stages.distill:DistillStage",
}


def get_stage_class(name: str):
    if name not in STAGES:
        raise UnclipError(f"unknown training stage {name!r} (choose from: {', '.join(sorted(STAGES))})")
    module_name, _, class_name = STAGES[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UnclipError(f"training stage {name!r} is not available in this build") from None
        raise
    return getattr(module, class_name)
