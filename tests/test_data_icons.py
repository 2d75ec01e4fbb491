"""Tabler icons builder on a tiny committed fixture: captions, black-on-white, outline+filled share a split."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from unclip.cli import main
from unclip.data import open_dataset
from unclip.data.icons import build_icons, icon_caption

FIXTURE = Path(__file__).parent / "fixtures" / "icons"


def test_icon_caption():
    assert icon_caption("arrow-left", "outline", "Arrows", ["arrow", "back", "direction", "west", "x"]) == \
        "a tabler outline icon of arrow left, arrows, back, direction, west"
    assert icon_caption("heart", "filled") == "a tabler filled icon of heart"


def test_build_icons_from_fixture(tmp_path):
    out = tmp_path / "icons"
    assert main(["data", "build", "icons", "--out", str(out), "--size", "24", "--packages", str(FIXTURE)]) == 0
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(rows) == 24  # 14 outline + 10 filled
    assert {r["meta"]["style"] for r in rows} == {"outline", "filled"}
    assert any(r["caption"].startswith("a tabler filled icon of heart") for r in rows)
    splits = defaultdict(set)
    for row in rows:
        splits[row["meta"]["name"]].add(row["split"])
    assert all(len(s) == 1 for s in splits.values()) and {s for (s,) in splits.values()} == {"train", "val", "test"}
    info = json.loads((out / "dataset.json").read_text())
    assert "MIT" in info["licences"]["tabler"]
    image = np.asarray(open_dataset(out, "all")[0]["image"])
    assert image.max() == 1.0 and image.min() < -0.9  # black strokes on white
    assert build_icons(out, image_size=24, packages=FIXTURE) is False
