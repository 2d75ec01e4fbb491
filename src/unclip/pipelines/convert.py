"""``unclip convert DIR``: rewrite an old pipeline directory (or component folder) in today's layout.

Old layouts load as they are (``unclip.components``, ``UnCLIPPipeline.load``, ``ClipVQPipeline.load``);
converting makes each component one self-describing file and ``pipeline.json`` version 2:
* a component folder's ``component.json`` moves into its ``model.safetensors`` metadata (the weights are
  rewritten only when the metadata lacks those settings; the tensors' bytes are kept);
* unCLIP: ``components.upsampler`` becomes the ``upsamplers`` list;
* CLIP-VQ: ``pipeline.json``'s ``diffusion`` and ``defaults`` move into the transformer's file.
Converting twice changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from unclip.checkpoint import atomic_write_text
from unclip.components import COMPONENT_FILE, LEGACY_INFO_FILE, convert_component
from unclip.errors import UnclipError
from unclip.pipelines.manifest import read_pipeline_json
from unclip.pipelines.registry import PIPELINE_FILE

__all__ = ["convert"]


def convert(path: str | Path) -> list[str]:
    """Convert the pipeline directory or component folder at ``path`` in place; returns what changed."""
    path = Path(path)
    if (path / PIPELINE_FILE).is_file():
        return _convert_pipeline(path)
    if (path / COMPONENT_FILE).is_file():
        return [f"{path}: {LEGACY_INFO_FILE} moved into {COMPONENT_FILE}"] if convert_component(path) else []
    raise UnclipError(f"{path} is neither a pipeline directory ({PIPELINE_FILE}) nor a component folder "
                      f"({COMPONENT_FILE})")


def _convert_pipeline(directory: Path) -> list[str]:
    info = read_pipeline_json(directory)
    parts = dict(info.get("components", {}))
    changed: list[str] = []

    def component(folder: str, role: str, settings: dict | None = None) -> None:
        if convert_component(directory / folder, role=role, info=settings):
            changed.append(f"{directory / folder}: settings moved into {COMPONENT_FILE}")

    if info["kind"] == "unclip":
        folders = info.get("upsamplers", [parts["upsampler"]] if parts.get("upsampler") else [])
        parts.pop("upsampler", None)
        for role in ("prior", "decoder"):
            if parts.get(role):
                component(parts[role], role)
        for folder in folders:
            component(folder, "upsampler")
        new = {**info, "version": 2, "components": parts, "upsamplers": folders}
    elif info["kind"] == "clipvq":
        new = {**info, "version": 2}
        if "diffusion" in info:
            settings = {"role": "transformer", "diffusion": new.pop("diffusion"), "sample": new.pop("defaults", {})}
            component(parts.get("transformer", "transformer"), "transformer", settings)
    else:
        raise UnclipError(f"{directory / PIPELINE_FILE}: cannot convert a {info['kind']!r} pipeline")
    if new != info:
        atomic_write_text(directory / PIPELINE_FILE, json.dumps(new, indent=2, sort_keys=True) + "\n")
        changed.append(f"{directory / PIPELINE_FILE}: version 2")
    return changed
