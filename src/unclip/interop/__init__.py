"""diffusers-format unCLIP models run as unclip pipelines (issue 20, item 1).

A diffusers pipeline folder (``model_index.json`` + one sub-folder per component, as ``save_pretrained``
writes it) is read by thin adapters around diffusers' own modules, so every unclip feature (negative
prompts, per-image seeds, variations with DDIM inversion, interpolation, text diffs, ``unclip eval``,
``unclip serve``) runs on it. Supported (``SUPPORTED``):

* ``UnCLIPPipeline`` (Karlo: text encoder, prior, text projection, decoder, two super-resolution UNets);
* ``UnCLIPImageVariationPipeline`` (Karlo's decoder without a prior: variations, interpolation, text diffs).

``load_diffusers(folder)`` builds the pipeline in memory (``--model FOLDER`` works directly);
``import_diffusers(folder, out)`` writes an unclip pipeline directory (``pipeline.json`` of kind
``"diffusers-unclip"`` + the folder's weights, safetensors only) that ``load_pipeline`` opens by path.
diffusers is an optional extra (``pip install 'unclip[diffusers]'``), imported only here, lazily.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unclip.errors import UnclipError

__all__ = ["SUPPORTED", "EXTRA", "require_diffusers", "diffusers_folder", "read_model_index", "load_diffusers",
           "import_diffusers"]

EXTRA = "diffusers"
INDEX_FILE = "model_index.json"
# model_index.json's "_class_name" -> the module whose ``load(folder, ...)`` adapts it
SUPPORTED = {
    "UnCLIPPipeline": "unclip.interop.diffusers_unclip",
    "UnCLIPImageVariationPipeline": "unclip.interop.diffusers_unclip",
}


def require_diffusers():
    """The ``diffusers`` module, or a one-line ``UnclipError`` naming the extra to install."""
    try:
        import diffusers
        import transformers  # noqa: F401  (every supported pipeline has a CLIP from transformers)
    except ModuleNotFoundError as exc:
        raise UnclipError(f"running a diffusers-format model needs {exc.name}: pip install 'unclip[{EXTRA}]'") from None
    return diffusers


def diffusers_folder(path_or_name: Any) -> Path | None:
    """``path_or_name`` as a diffusers pipeline folder (it holds model_index.json but no pipeline.json), else None."""
    if path_or_name is None or not str(path_or_name).strip():  # "" is not the current directory
        return None
    path = Path(str(path_or_name)).expanduser()
    if path.is_dir() and (path / INDEX_FILE).is_file() and not (path / "pipeline.json").is_file():
        return path
    return None


def read_model_index(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """(pipeline class name, model_index.json) of a supported diffusers folder, or a one-line ``UnclipError``."""
    folder = Path(folder)
    supported = ", ".join(SUPPORTED)
    if not folder.is_dir():
        raise UnclipError(f"{folder} is not a directory; pass a diffusers pipeline folder ({supported})")
    path = folder / INDEX_FILE
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise UnclipError(f"{folder} is not a diffusers pipeline folder (no {INDEX_FILE}; found: {found}); "
                          f"supported: {supported}")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnclipError(f"{path} is unreadable ({type(exc).__name__}); re-save the pipeline") from None
    name = index.get("_class_name") if isinstance(index, dict) else None
    if name not in SUPPORTED:
        raise UnclipError(f"{folder} holds a diffusers {name or 'pipeline of no _class_name'}, which unclip cannot "
                          f"run (supported: {supported})")
    return name, index


def _module(folder: Path):
    import importlib

    name, _ = read_model_index(folder)
    require_diffusers()
    return importlib.import_module(SUPPORTED[name])


def load_diffusers(folder: str | Path, *, device="cpu", defaults: dict | None = None, name: str | None = None):
    """An unclip pipeline running the diffusers pipeline folder ``folder`` (nothing is downloaded)."""
    folder = Path(folder)
    return _module(folder).load(folder, device=device, defaults=defaults, name=name or folder.name)


def import_diffusers(folder: str | Path, out: str | Path, *, name: str | None = None, overwrite: bool = False):
    """Write the unclip pipeline directory ``out`` for the diffusers folder ``folder``; returns the loaded pipeline."""
    pipe = load_diffusers(folder, name=name or Path(out).name)
    pipe.save(out, overwrite=overwrite)
    return type(pipe).load(out)
