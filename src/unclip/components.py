"""A component is one self-describing file: ``save_component`` / ``load_component`` (issue #19).

A trained model that a pipeline runs (prior, decoder, upsampler, VQ tokenizer, token transformer) is
one folder holding ``model.safetensors``. Its metadata carries everything needed to run it (house
rule 4): the class and model config (``unclip.checkpoint.save_model``) and, under ``"component"``, a
JSON object with the ``role``, the noise process (``"diffusion"``: a ``DiffusionConfig``, or for the
token transformer a ``DiscreteDiffusionConfig``) and the default sampling settings (``"sample"``),
plus the role's extra keys (``COMPONENT_KEYS``). The prior's noise process is part of its model
config (``PriorConfig.diffusion``); ``StoredComponent.diffusion`` reads it from there, so it is
written once. A latent decoder's frozen autoencoder is the one other file, ``autoencoder.safetensors``,
named by the ``"autoencoder"`` key.

Every writer (the stage exports, ``Component.save``, ``PriorComponent.save``, ``ClipVQPipeline.save``)
calls ``save_component``; every reader calls ``load_component`` (or ``read_component_info`` when the
weights are not needed). This module sits below ``pipelines`` and ``train`` so both import it downwards.

Old layouts still load: a folder with a ``component.json`` beside the weights is read from that file
(what older versions read). ``unclip convert DIR`` (``convert_component``) rewrites such a folder as one
file; it leaves the weights' bytes alone when the metadata already holds the same settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from unclip.checkpoint import load_model, read_metadata, save_model, save_tensors
from unclip.config import from_dict, to_dict
from unclip.errors import CheckpointError, ConfigError

__all__ = ["COMPONENT_FILE", "LEGACY_INFO_FILE", "AUTOENCODER_FILE", "COMPONENT_KEYS", "SETTING_TYPES",
           "CONVERT_HINT", "StoredComponent", "save_component", "load_component", "read_component_info",
           "check_component_info", "convert_component", "read_json_object"]

COMPONENT_FILE = "model.safetensors"
LEGACY_INFO_FILE = "component.json"          # old layouts: the settings beside the weights
AUTOENCODER_FILE = "autoencoder.safetensors"  # beside a latent decoder's model.safetensors
METADATA_KEY = "component"
CONVERT_HINT = "convert it with 'unclip convert DIR'"

_NUMBER = (int, float)
COMPONENT_KEYS: dict[str, dict[str, Any]] = {
    "decoder": {"role": str, "conditioning": str, "diffusion": dict, "image_size": int, "encoder": str,
                "sample": dict, "distilled": dict, "autoencoder": str},
    "upsampler": {"role": str, "diffusion": dict, "image_size": int, "low_res_size": int, "noise_level": int,
                  "sample": dict, "crop_size": int, "anchor_low_res": bool},
    "prior": {"role": str, "kind": str, "embeddings": str, "sample": dict},
    "vq": {"role": str},
    "transformer": {"role": str, "diffusion": dict, "sample": dict},
}
# Sampling settings, wherever they appear (pipeline defaults, a component's "sample"); other keys of
# "sample" are training-time settings (eval_items, num_images) and are not read at inference.
SETTING_TYPES: dict[str, Any] = {"steps": int, "sampler": str, "guidance_scale": _NUMBER, "spacing": str,
                                 "precision": str, "eta": _NUMBER, "truncation": _NUMBER, "num_candidates": int}


# --- strict checks of the settings objects (shared with pipelines.manifest) --------------------
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
             list: "a list", type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def check_value(path: Path, key: str, value: Any, expected) -> None:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise CheckpointError(f"{path}: '{key}' must be {_type_name(expected)}, got {json.dumps(value)[:40]}; "
                              "the model folder is damaged or was edited by hand")


def check_keys(path: Path, info: dict[str, Any], table: dict[str, Any], where: str = "") -> None:
    for key, value in info.items():
        if key not in table:
            raise CheckpointError(f"{path}: unknown key '{where}{key}' (known: {', '.join(sorted(table))}); "
                                  "fix the file or re-export the model with this version of unclip")
        check_value(path, where + key, value, table[key])


def check_settings(path: Path, settings: dict[str, Any], where: str, *, strict: bool) -> None:
    for key, value in settings.items():
        if key in SETTING_TYPES:
            check_value(path, where + key, value, SETTING_TYPES[key])
        elif strict:
            raise CheckpointError(f"{path}: unknown key '{where}{key}' (known: {', '.join(sorted(SETTING_TYPES))})")


def _diffusion_class(role: str):
    if role == "transformer":
        from unclip.diffusion.discrete import DiscreteDiffusionConfig

        return DiscreteDiffusionConfig
    from unclip.diffusion.schedule import DiffusionConfig

    return DiffusionConfig


def check_component_info(info: dict[str, Any], path: Path, roles: tuple[str, ...]) -> dict[str, Any]:
    """Check a component's settings object whose ``role`` (default: the first of ``roles``) is one of ``roles``."""
    role = info.get("role", roles[0])
    if role not in roles:
        raise CheckpointError(f"{path}: 'role' is {json.dumps(role)[:40]}, expected {' or '.join(roles)}; "
                              "assemble the pipeline from the right folders")
    check_keys(path, info, COMPONENT_KEYS[role])
    check_settings(path, info.get("sample", {}), "sample.", strict=False)
    if "diffusion" in COMPONENT_KEYS[role]:
        try:
            from_dict(_diffusion_class(role), info.get("diffusion", {}))
        except ConfigError as exc:
            raise CheckpointError(f"{path}: 'diffusion': {exc}") from None
    return info


# --- one component: save / load ---------------------------------------------------------------
@dataclass
class StoredComponent:
    """What ``load_component`` returns: the network, its settings object and a latent decoder's autoencoder."""

    model: torch.nn.Module
    info: dict[str, Any]
    autoencoder: torch.nn.Module | None = None

    @property
    def role(self) -> str:
        return self.info["role"]

    @property
    def sample_defaults(self) -> dict[str, Any]:
        return dict(self.info.get("sample", {}))

    @property
    def diffusion(self):
        """The noise process as its config dataclass (the prior's comes from its model config)."""
        if self.role == "prior":
            return getattr(self.model.config, "diffusion", None)  # None: the autoregressive prior
        return from_dict(_diffusion_class(self.role), self.info.get("diffusion", {}))


def _component_info(role: str, diffusion, sample_defaults, extra) -> dict[str, Any]:
    info: dict[str, Any] = {"role": role, **dict(extra or {})}
    if diffusion is not None:
        info["diffusion"] = diffusion if isinstance(diffusion, dict) else to_dict(diffusion)
    if sample_defaults is not None:
        info["sample"] = sample_defaults if isinstance(sample_defaults, dict) else to_dict(sample_defaults)
    return info


def save_component(directory: str | Path, model: torch.nn.Module, *, role: str, diffusion=None,
                   sample_defaults=None, extra: Mapping[str, Any] | None = None,
                   autoencoder: torch.nn.Module | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``directory/model.safetensors``: the weights, the model config and the component settings.

    ``diffusion``: the noise process (a config dataclass or its dict; the prior's lives in its model
    config, so pass None or the same one); ``sample_defaults``: default sampling settings (dataclass or
    dict); ``extra``: the role's other keys (``COMPONENT_KEYS``); ``autoencoder``: a latent decoder's,
    saved beside it as ``autoencoder.safetensors``. Returns the path of the model file.
    """
    directory = Path(directory)
    if role == "prior" and diffusion is not None:
        own = getattr(model.config, "diffusion", None)
        if own is None or to_dict(own) != (diffusion if isinstance(diffusion, dict) else to_dict(diffusion)):
            raise CheckpointError("a prior's noise process is its model config's 'diffusion'; do not pass another")
        diffusion = None
    info = _component_info(role, diffusion, sample_defaults, extra)
    if autoencoder is not None:
        info["autoencoder"] = AUTOENCODER_FILE
    check_component_info(info, directory / COMPONENT_FILE, (role,))
    path = directory / COMPONENT_FILE
    save_model(model, path, dtype=dtype, extra_metadata={METADATA_KEY: json.dumps(info, sort_keys=True)})
    if autoencoder is not None:
        save_model(autoencoder, directory / AUTOENCODER_FILE, dtype=dtype)
    return path


def read_component_info(directory: str | Path, roles: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The checked settings object of the component in ``directory`` without loading its weights.

    Old layouts: a ``component.json`` beside the weights wins (it is what older versions read and
    what a user may have edited). ``roles``: the roles accepted (default: any)."""
    directory = Path(directory)
    path = directory / COMPONENT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; re-export the model or rebuild the pipeline directory")
    roles = roles or tuple(COMPONENT_KEYS)
    legacy = directory / LEGACY_INFO_FILE
    if legacy.is_file():
        info = read_json_object(legacy, "re-export the model")
        return check_component_info(info, legacy, roles)
    raw = read_metadata(path).get(METADATA_KEY)
    if raw is None:
        if roles[0] in ("prior", "vq"):  # these ran without settings before; their defaults apply
            return {"role": roles[0]}
        raise CheckpointError(f"{path} carries no component settings (an old layout without component.json?); "
                              f"re-export it, or if its component.json was moved, put it back and {CONVERT_HINT}")
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has unreadable component settings in its metadata; the file is "
                              "damaged") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: the component settings in its metadata hold {_json_kind(info)}, not a "
                              "JSON object; the file is damaged")
    return check_component_info(info, path, roles)


def load_component(directory: str | Path, *, device: str | torch.device = "cpu",
                   roles: tuple[str, ...] | None = None, expected: type | None = None) -> StoredComponent:
    """Load the component in ``directory`` from the path alone (house rule 4); see the module docstring."""
    directory = Path(directory)
    info = read_component_info(directory, roles)
    info.setdefault("role", (roles or ("decoder",))[0])
    autoencoder = None
    if info.get("autoencoder"):
        from unclip.models.autoencoder import Autoencoder

        name = info["autoencoder"]
        if Path(name).name != name or name.startswith("."):
            raise CheckpointError(f"{directory}: 'autoencoder' must be a file name in {directory}, got {name!r}")
        autoencoder = load_model(directory / name, device=device, expected=Autoencoder)
    model = load_model(directory / COMPONENT_FILE, device=device, expected=expected)
    return StoredComponent(model, info, autoencoder)


def convert_component(directory: str | Path, *, role: str | None = None, info: dict[str, Any] | None = None) -> bool:
    """Rewrite an old-layout component folder as one file; True when something changed.

    ``info`` (e.g. a CLIP-VQ transformer's settings from its old ``pipeline.json``) replaces what the
    folder holds. The weights are rewritten only when their metadata lacks these settings; the
    tensors' bytes and dtypes are kept as they are."""
    directory = Path(directory)
    path, legacy = directory / COMPONENT_FILE, directory / LEGACY_INFO_FILE
    roles = (role,) if role else None
    if info is None:
        if not legacy.is_file():
            return False
        info = read_component_info(directory, roles)
    check_component_info(info, path, (info.get("role") or role,))
    meta = read_metadata(path)
    stored = meta.get(METADATA_KEY)
    if stored is None or json.loads(stored) != info:
        from unclip.checkpoint import load_tensors

        tensors = load_tensors(path)
        save_tensors(path, tensors, {**meta, METADATA_KEY: json.dumps(info, sort_keys=True)})
    legacy.unlink(missing_ok=True)
    return True
