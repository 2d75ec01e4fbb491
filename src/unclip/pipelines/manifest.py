"""The keys of ``pipeline.json`` and ``component.json``, and a strict check of both.

A model folder is read by path alone (house rule 4), so what its JSON files hold is checked the way
configs are (house rule 3): an unknown key, a value of the wrong type or a file that is not a JSON
object is a one-line ``CheckpointError`` naming the file and the key, never a key silently ignored
or a ``TypeError`` later. This table is the one home of those keys: a stage that writes a new key
adds it here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unclip.config import from_dict
from unclip.diffusion.schedule import DiffusionConfig
from unclip.errors import CheckpointError, ConfigError

__all__ = ["PIPELINE_KEYS", "COMPONENT_KEYS", "SETTING_TYPES", "read_json_object", "check_pipeline_info",
           "check_component_info"]

_NUMBER = (int, float)
_OPTIONAL_STR = (str, type(None))

PIPELINE_KEYS: dict[str, dict[str, Any]] = {
    "unclip": {"kind": str, "version": int, "name": _OPTIONAL_STR, "image_size": int, "components": dict,
               "defaults": dict},
    "clipvq": {"kind": str, "version": int, "name": _OPTIONAL_STR, "image_size": int, "components": dict,
               "defaults": dict, "condition": str, "diffusion": dict, "info": (dict, type(None))},
}
COMPONENT_KEYS: dict[str, dict[str, Any]] = {
    "decoder": {"role": str, "conditioning": str, "diffusion": dict, "image_size": int, "encoder": str,
                "sample": dict, "distilled": dict, "autoencoder": str},
    "upsampler": {"role": str, "diffusion": dict, "image_size": int, "low_res_size": int, "noise_level": int,
                  "sample": dict, "crop_size": int, "anchor_low_res": bool},
    "prior": {"role": str, "kind": str, "embeddings": str, "sample": dict},
}
# Sampling settings, wherever they appear (pipeline defaults, a component's "sample"); other keys of
# "sample" are training-time settings (eval_items, num_images) and are not read at inference.
SETTING_TYPES: dict[str, Any] = {"steps": int, "sampler": str, "guidance_scale": _NUMBER, "spacing": str,
                                 "precision": str, "eta": _NUMBER, "truncation": _NUMBER, "num_candidates": int}
UNCLIP_STAGES = ("prior", "decoder", "upsampler")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, unreadable or non-object file is a ``CheckpointError``."""
    path = Path(path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}); {what}") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} holds {_json_kind(info)}, not a JSON object; {what}")
    return info


def _json_kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _type_name(expected) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object", bool: "true/false",
             type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _check_value(path: Path, key: str, value: Any, expected) -> None:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise CheckpointError(f"{path}: '{key}' must be {_type_name(expected)}, got {json.dumps(value)[:40]}; "
                              "the model folder is damaged or was edited by hand")


def _check_keys(path: Path, info: dict[str, Any], table: dict[str, Any], where: str = "") -> None:
    for key, value in info.items():
        if key not in table:
            raise CheckpointError(f"{path}: unknown key '{where}{key}' (known: {', '.join(sorted(table))}); "
                                  "fix the file or re-export the model with this version of unclip")
        _check_value(path, where + key, value, table[key])


def _check_settings(path: Path, settings: dict[str, Any], where: str, *, strict: bool) -> None:
    for key, value in settings.items():
        if key in SETTING_TYPES:
            _check_value(path, where + key, value, SETTING_TYPES[key])
        elif strict:
            raise CheckpointError(f"{path}: unknown key '{where}{key}' (known: {', '.join(sorted(SETTING_TYPES))})")


def check_pipeline_info(info: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check a ``pipeline.json`` object of a known kind (the caller has checked ``kind``)."""
    table = PIPELINE_KEYS.get(info.get("kind"))
    if table is None:
        return info
    _check_keys(path, info, table)
    for name, folder in info.get("components", {}).items():
        _check_value(path, f"components.{name}", folder, _OPTIONAL_STR)
    defaults = info.get("defaults", {})
    if info["kind"] == "unclip":
        for stage, values in defaults.items():
            if stage not in UNCLIP_STAGES:
                raise CheckpointError(f"{path}: unknown stage 'defaults.{stage}' (known: {', '.join(UNCLIP_STAGES)})")
            _check_value(path, f"defaults.{stage}", values, dict)
            _check_settings(path, values, f"defaults.{stage}.", strict=True)
    else:
        _check_settings(path, defaults, "defaults.", strict=True)
    return info


def check_component_info(info: dict[str, Any], path: Path, roles: tuple[str, ...]) -> dict[str, Any]:
    """Check a ``component.json`` object whose ``role`` (default: the first of ``roles``) is one of ``roles``."""
    role = info.get("role", roles[0])
    if role not in roles:
        raise CheckpointError(f"{path}: 'role' is {json.dumps(role)[:40]}, expected {' or '.join(roles)}; "
                              "assemble the pipeline from the right folders")
    _check_keys(path, info, COMPONENT_KEYS[role])
    _check_settings(path, info.get("sample", {}), "sample.", strict=False)
    if role in ("decoder", "upsampler"):
        try:
            from_dict(DiffusionConfig, info.get("diffusion", {}))
        except ConfigError as exc:
            raise CheckpointError(f"{path}: 'diffusion': {exc}") from None
    return info
