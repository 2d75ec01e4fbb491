"""diffusers-format unCLIP models run as unclip pipelines (issue 20, item 1).

A diffusers pipeline folder (``model_index.json`` + one sub-folder per component, as ``save_pretrained``
writes it) is read by thin adapters around diffusers' own modules, so every unclip feature (negative
prompts, per-image seeds, variations with DDIM inversion, interpolation, text diffs, ``unclip eval``,
``unclip serve``) runs on it. Supported (``SUPPORTED``):

* ``UnCLIPPipeline`` (Karlo: text encoder, prior, text projection, decoder, two super-resolution UNets);
* ``UnCLIPImageVariationPipeline`` (Karlo's decoder without a prior: variations, interpolation, text diffs);
* ``KandinskyV22CombinedPipeline`` (Kandinsky 2.2: prior, CLIP text and image towers, latent decoder, MoVQ);
* ``KandinskyV22Pipeline`` (Kandinsky 2.2's decoder) with its ``KandinskyV22PriorPipeline`` folder as
  ``prior=`` (``NEEDS_PRIOR``; ``unclip import DECODER --prior PRIOR``).

``load_diffusers(folder)`` builds the pipeline in memory (``--model FOLDER`` works directly);
``import_diffusers(folder, out)`` writes an unclip pipeline directory (``pipeline.json`` of kind
``"diffusers-unclip"`` + the folder's weights, safetensors only) that ``load_pipeline`` opens by path.
diffusers is an optional extra (``pip install 'unclip[diffusers]'``), imported only here, lazily.
Scheduler mapping: ``unclip.interop.schedulers``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unclip.errors import UnclipError

__all__ = ["SUPPORTED", "NEEDS_PRIOR", "EXTRA", "require_diffusers", "diffusers_folder", "read_model_index",
           "load_diffusers",
           "import_diffusers"]

EXTRA = "diffusers"
INDEX_FILE = "model_index.json"
# model_index.json's "_class_name" -> the module whose ``load(folder, ...)`` adapts it
SUPPORTED = {
    "UnCLIPPipeline": "unclip.interop.diffusers_unclip",
    "UnCLIPImageVariationPipeline": "unclip.interop.diffusers_unclip",
    "KandinskyV22CombinedPipeline": "unclip.interop.diffusers_kandinsky",
    "KandinskyV22Pipeline": "unclip.interop.diffusers_kandinsky",
}
# a decoder-only class -> the class of the prior folder it must be given (prior= / --prior)
NEEDS_PRIOR = {"KandinskyV22Pipeline": "KandinskyV22PriorPipeline"}


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


def read_model_index(folder: str | Path, *, expect: str | None = None) -> tuple[str, dict[str, Any]]:
    """(pipeline class name, model_index.json) of a supported diffusers folder (of class ``expect`` if given:
    a prior folder of ``NEEDS_PRIOR``), or a one-line ``UnclipError``."""
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
    if expect is not None and name != expect:
        raise UnclipError(f"{folder} holds a diffusers {name or 'pipeline of no _class_name'}; the prior folder "
                          f"must be a {expect}")
    if expect is not None:
        return name, index
    if name in NEEDS_PRIOR.values():
        decoder = next(k for k, v in NEEDS_PRIOR.items() if v == name)
        raise UnclipError(f"{folder} holds a {name}, a prior alone; pass its {decoder} folder with this one as "
                          f"--prior: unclip import DECODER_DIR --prior {folder} --out DIR")
    if name not in SUPPORTED:
        raise UnclipError(f"{folder} holds a diffusers {name or 'pipeline of no _class_name'}, which unclip cannot "
                          f"run (supported: {supported})")
    return name, index


def _module(folder: Path, prior: Path | None):
    import importlib

    name, _ = read_model_index(folder)
    if prior is not None and name not in NEEDS_PRIOR:
        raise UnclipError(f"{folder} holds a {name}, which takes no separate prior folder; drop --prior (prior= is "
                          f"for a decoder folder: {', '.join(NEEDS_PRIOR)})")
    if prior is None and name in NEEDS_PRIOR:
        raise UnclipError(f"{folder} holds a {name}, a decoder without its prior; pass its {NEEDS_PRIOR[name]} folder: "
                          f"unclip import {folder} --prior PRIOR_DIR --out DIR (Python: prior=PRIOR_DIR)")
    require_diffusers()
    return importlib.import_module(SUPPORTED[name])


def load_diffusers(folder: str | Path, *, prior: str | Path | None = None, device="cpu", defaults: dict | None = None,
                   name: str | None = None):
    """An unclip pipeline running the diffusers pipeline folder ``folder`` (nothing is downloaded); ``prior``:
    the prior folder a decoder-only folder needs (``NEEDS_PRIOR``)."""
    folder = Path(folder)
    prior = Path(prior) if prior is not None and str(prior).strip() else None
    module = _module(folder, prior)
    extra = {"prior": prior} if prior is not None else {}
    return module.load(folder, device=device, defaults=defaults, name=name or folder.name, **extra)


def import_diffusers(folder: str | Path, out: str | Path, *, prior: str | Path | None = None, name: str | None = None,
                     overwrite: bool = False):
    """Write the unclip pipeline directory ``out`` for the diffusers folder ``folder`` (+ ``prior``, see
    ``load_diffusers``); returns the loaded pipeline."""
    pipe = load_diffusers(folder, prior=prior, name=name or Path(out).name)
    pipe.save(out, overwrite=overwrite)
    return type(pipe).load(out)
