"""Inference pipelines: text → image with unCLIP (``UnCLIPPipeline``) or CLIP-VQDiffusion.

Every pipeline is one directory (``pipeline.json`` + one sub-folder per component) and every
text→image pipeline is called the same way (see docs/pipeline.md)::

    pipe = load_pipeline("runs/pipeline-shapes")      # or a shipped model name, e.g. "emoji"
    out = pipe(["a red circle"], num_images_per_prompt=4, seed=0)
    out.images[0].save("a.png"); out.seeds               # per-image seeds reproduce any image

``load_pipeline`` dispatches on ``pipeline.json``'s ``"kind"``: ``"unclip"`` → ``UnCLIPPipeline``,
``"clipvq"`` → ``unclip.pipelines.clip_vq.ClipVQPipeline``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from unclip.devices import check_device
from unclip.errors import CheckpointError, UnclipError
from unclip.pipelines.manifest import read_pipeline_json
from unclip.pipelines.output import PipelineOutput
from unclip.pipelines.registry import PIPELINE_FILE, resolve_model

__all__ = ["PipelineOutput", "PIPELINE_KINDS", "load_pipeline", "read_pipeline_json", "assemble"]

PIPELINE_KINDS = {
    "unclip": "unclip.pipelines.unclip:UnCLIPPipeline",
    "clipvq": "unclip.pipelines.clip_vq:ClipVQPipeline",
    "diffusers-unclip": "unclip.interop.diffusers_unclip:DiffusersUnCLIPPipeline",  # `unclip import` (issue 20)
}


def load_pipeline(path_or_name: str | Path | None = None, *, device: str | torch.device = "cpu"):
    """Load a pipeline from a directory or a shipped model name (default ``"emoji"``).

    A diffusers pipeline folder (``model_index.json``) is run through ``unclip.interop``."""
    device = check_device(device)
    from unclip.interop import diffusers_folder, load_diffusers

    if diffusers_folder(path_or_name) is not None:
        return load_diffusers(path_or_name, device=device)
    directory = resolve_model(path_or_name)
    kind = read_pipeline_json(directory)["kind"]
    if kind not in PIPELINE_KINDS:
        raise CheckpointError(f"{directory / PIPELINE_FILE} has unknown kind {kind!r} "
                              f"(known: {', '.join(PIPELINE_KINDS)})")
    module_name, _, class_name = PIPELINE_KINDS[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UnclipError(f"pipeline kind {kind!r} is not available in this build") from None
        raise
    return getattr(module, class_name).load(directory, device=device)


def assemble(out_dir: str | Path, *, encoder: str | Path, decoder: str | Path, prior: str | Path | None = None,
             upsampler: str | Path | list[str | Path] | None = None, defaults: dict[str, Any] | None = None,
             name: str | None = None):
    """Build an unCLIP pipeline directory from trained stage outputs; returns the loaded pipeline.

    ``encoder``: an encoder directory; ``prior``/``decoder``/``upsampler``: a training run directory
    (``RUNDIR``, read from ``RUNDIR/final/<stage>``), its ``final`` folder, or the component folder itself;
    ``upsampler`` may be a list: the cascade after the decoder, in order.
    """
    from unclip.pipelines.unclip import assemble_unclip

    return assemble_unclip(out_dir, encoder=encoder, decoder=decoder, prior=prior, upsampler=upsampler,
                           defaults=defaults, name=name)
