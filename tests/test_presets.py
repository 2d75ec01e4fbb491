"""Every preset under configs/ parses into its stage's config (unknown keys and bad values would fail)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unclip.config import load_config
from unclip.train.stages import STAGES, get_stage_class

PRESETS = sorted(Path("configs").glob("*/*.yaml"))
# decoder-only fine-tunes start from trained weights (--init)
NEEDS_INIT = {"emoji64-decoder-ft.yaml", "emoji64-decoder-ft-long.yaml", "emoji64-decoder-channelnorm.yaml"}


@pytest.mark.parametrize("path", PRESETS, ids=[f"{p.parent.name}/{p.name}" for p in PRESETS])
def test_preset_parses(path):
    assert path.parent.name in STAGES, f"configs/{path.parent.name}/ is not a training stage"
    cls = get_stage_class(path.parent.name).config_class
    overrides = ["train.init=runs/some-autoencoder"] if path.name in NEEDS_INIT else []
    config = load_config(cls, path, overrides)
    assert config.train.steps >= 1


def test_presets_exist_for_every_stage():
    assert {p.parent.name for p in PRESETS} >= {"clip", "prior", "decoder", "upsampler", "autoencoder", "vq", "clipvq"}
