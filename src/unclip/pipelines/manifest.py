"""The keys of ``pipeline.json``, and a strict check of it.

A model folder is read by path alone (house rule 4), so what its JSON holds is checked the way
configs are (house rule 3): an unknown key, a value of the wrong type or a file that is not a JSON
object is a one-line ``CheckpointError`` naming the file and the key, never a key silently ignored
or a ``TypeError`` later. This table is the one home of those keys. A component's own settings
(``COMPONENT_KEYS``, in its safetensors metadata) are checked in ``unclip.components``; they are
re-exported here for older imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unclip.components import (COMPONENT_KEYS, SETTING_TYPES, check_component_info, check_keys, check_settings,
                               check_value, read_json_object)
from unclip.errors import CheckpointError
from unclip.pipelines.registry import PIPELINE_FILE

__all__ = ["PIPELINE_KEYS", "COMPONENT_KEYS", "SETTING_TYPES", "read_json_object", "read_pipeline_json", "check_pipeline_info",
           "check_component_info"]

_OPTIONAL_STR = (str, type(None))

PIPELINE_KEYS: dict[str, dict[str, Any]] = {
    # version 2: "upsamplers" lists the cascade's upsampler folders in order (version 1: components.upsampler)
    "unclip": {"kind": str, "version": int, "name": _OPTIONAL_STR, "image_size": int, "components": dict,
               "upsamplers": list, "defaults": dict},
    # version 2: the noise process and sampling defaults live in transformer/model.safetensors
    "clipvq": {"kind": str, "version": int, "name": _OPTIONAL_STR, "image_size": int, "components": dict,
               "defaults": dict, "condition": str, "diffusion": dict, "info": (dict, type(None))},
}
UNCLIP_STAGES = ("prior", "decoder", "upsampler")


def check_pipeline_info(info: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check a ``pipeline.json`` object of a known kind (the caller has checked ``kind``)."""
    table = PIPELINE_KEYS.get(info.get("kind"))
    if table is None:
        return info
    check_keys(path, info, table)
    for name, folder in info.get("components", {}).items():
        check_value(path, f"components.{name}", folder, _OPTIONAL_STR)
    for i, folder in enumerate(info.get("upsamplers", [])):
        check_value(path, f"upsamplers[{i}]", folder, str)
    defaults = info.get("defaults", {})
    if info["kind"] == "unclip":
        for stage, values in defaults.items():
            if stage not in UNCLIP_STAGES:
                raise CheckpointError(f"{path}: unknown stage 'defaults.{stage}' (known: {', '.join(UNCLIP_STAGES)})")
            check_value(path, f"defaults.{stage}", values, dict)
            check_settings(path, values, f"defaults.{stage}.", strict=True)
    else:
        check_settings(path, defaults, "defaults.", strict=True)
    return info


def read_pipeline_json(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / PIPELINE_FILE
    info = read_json_object(path, f"is {directory} a pipeline directory?")
    if not isinstance(info.get("kind"), str):
        raise CheckpointError(f"{path} names no pipeline kind; rebuild the pipeline directory")
    return check_pipeline_info(info, path)
