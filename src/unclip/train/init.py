"""Starting a run from existing weights (``unclip train STAGE --init PATH``, ``train.init``).

Fine-tuning a released model needs its weights at step 0: a stage's freshly built model is filled from
a ``.safetensors`` model file, found from any of the places a user has one — the file itself, a
component folder (``model.safetensors``), a run directory (``final/model.safetensors`` or
``final/STAGE/model.safetensors``) or a pipeline directory (``STAGE/model.safetensors``). Every tensor
must match by name and shape (strict), so a wrong architecture fails before step 0 with one line.
A resumed run ignores ``init``: its checkpoint holds newer weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unclip.checkpoint import load_tensors
from unclip.errors import UnclipError

__all__ = ["find_weights", "init_weights"]


def find_weights(path: str | Path, stage: str) -> Path:
    """The model file that ``path`` names for ``stage``, or a one-line ``UnclipError``."""
    path = Path(path)
    candidates = [path, path / "model.safetensors", path / stage / "model.safetensors",
                  path / "final" / "model.safetensors", path / "final" / stage / "model.safetensors"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UnclipError(f"--init {path}: no weights found (looked for model.safetensors in it, {stage}/, final/ "
                      f"and final/{stage}/); pass a model file, a component, a run or a pipeline directory")


@torch.no_grad()
def init_weights(model: torch.nn.Module, path: str | Path, stage: str) -> Path:
    """Copy the weights at ``path`` into ``model`` (every tensor, same names and shapes); return the file."""
    file = find_weights(path, stage)
    tensors = load_tensors(file)
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    wrong = [k for k in state if k in tensors and tuple(tensors[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                  f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else
                  f"{wrong[0]} is {tuple(tensors[wrong[0]].shape)} there, {tuple(state[wrong[0]].shape)} here")
        raise UnclipError(f"--init {file}: the weights do not fit this {stage} model ({detail}); "
                          "use the same model config as the weights")
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()})
    return file
