"""Resolving ``--model NAME|PATH`` to a pipeline directory.

A shipped model is a pipeline directory under ``src/unclip/assets/models/NAME/`` (installed with the
package) and is found by its bare name (``--model emoji``). Anything else is read as a path.
"""

from __future__ import annotations

from pathlib import Path

from unclip.errors import UnclipError

__all__ = ["DEFAULT_MODELS", "PIPELINE_FILE", "default_model", "models_root", "shipped_models", "resolve_model"]

# The default is the first of these that is shipped (emoji once it ships, else shapes).
DEFAULT_MODELS = ("emoji", "shapes")
PIPELINE_FILE = "pipeline.json"


def models_root() -> Path:
    """Where shipped pipelines live: ``unclip/assets/models``."""
    return Path(__file__).resolve().parent.parent / "assets" / "models"


def shipped_models() -> list[str]:
    root = models_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / PIPELINE_FILE).is_file())


def default_model() -> str:
    """The model used when none is named: the first shipped of ``DEFAULT_MODELS``."""
    shipped = shipped_models()
    return next((name for name in DEFAULT_MODELS if name in shipped), DEFAULT_MODELS[0])


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith(".") or text.startswith("~")


def resolve_model(name_or_path: str | Path | None) -> Path:
    """A shipped model's directory by name, or an existing pipeline directory by path.

    Raises a one-line ``UnclipError`` saying which models are shipped and how to pass a path.
    """
    text = str(name_or_path) if name_or_path is not None else default_model()
    if not text.strip():
        raise UnclipError("--model is empty: pass a shipped model name or a pipeline directory")
    if not _looks_like_path(text):
        shipped = models_root() / text
        if (shipped / PIPELINE_FILE).is_file():
            return shipped
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / PIPELINE_FILE).is_file():
            raise UnclipError(f"{path} is not a pipeline directory (no {PIPELINE_FILE}); "
                              "build one with unclip.pipelines.assemble(...)")
        return path
    if path.exists():
        raise UnclipError(f"--model {path} is a file; pass the pipeline directory that holds {PIPELINE_FILE}")
    names = shipped_models()
    if not _looks_like_path(text):
        available = f"shipped models: {', '.join(names)}" if names else "no models are shipped in this install yet"
        raise UnclipError(f"model {text!r} not found ({available}); pass --model PATH to a pipeline directory")
    raise UnclipError(f"model directory not found: {path}")
