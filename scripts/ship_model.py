"""Copy a pipeline directory into the package as a shipped model, weights in fp16.

    python scripts/ship_model.py runs/pipeline-shapes shapes [--card docs/models/shapes.md]

Every ``model.safetensors`` (and a latent decoder's ``autoencoder.safetensors``) keeps its metadata (class and config) and has its
floating tensors stored as fp16 (loading casts them back to fp32); small files
such as statistics, tokenizers and JSON are copied as they are. The copy is
built in a temporary folder and renamed into place, so a failure leaves the
previous shipped model untouched.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from unclip.checkpoint import load_tensors, read_metadata, replace_dir, save_tensors
from unclip.pipelines import load_pipeline
from unclip.pipelines.registry import models_root
from unclip.train.stages.decoder import AUTOENCODER_FILE


def _rename(manifest: Path, name: str) -> None:
    """The shipped pipeline.json names the model as users ask for it (``--model NAME``), not as its run dir."""
    import json

    info = json.loads(manifest.read_text(encoding="utf-8"))
    if info.get("name") != name:
        manifest.write_text(json.dumps(dict(info, name=name), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ship(source: Path, name: str, card: Path | None) -> Path:
    load_pipeline(source)  # refuse to ship something that does not load
    target = models_root() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        for path in sorted(source.rglob("*")):
            if path.is_dir():
                continue
            out = tmp / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            metadata = read_metadata(path) if path.suffix == ".safetensors" else {}
            if path.name == "model.safetensors" or path.name == AUTOENCODER_FILE:   # models, not statistics
                tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_tensors(path).items()}
                save_tensors(out, tensors, metadata)
            else:
                shutil.copyfile(path, out)
        if card is not None:
            shutil.copyfile(card, tmp / "MODEL_CARD.md")
        _rename(tmp / "pipeline.json", name)
        load_pipeline(tmp)  # the fp16 copy loads too
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="pipeline directory to ship")
    parser.add_argument("name", help="model name (found by --model NAME)")
    parser.add_argument("--card", type=Path, default=None, help="model card copied in as MODEL_CARD.md")
    args = parser.parse_args()
    target = ship(args.source, args.name, args.card)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 1e6
    print(f"shipped {args.source} as {target} ({size:.1f} MB)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
