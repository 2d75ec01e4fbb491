"""Emoji builder on a tiny committed fixture of real icons: captions, FE0F, aliases, split by concept."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from unclip.cli import main
from unclip.data import open_dataset
from unclip.data.emoji import build_emoji, concept_of, emoji_caption, normalise_hexcode
from unclip.data.npm import open_package
from unclip.data.svg import iconify_svg, rasterise
from unclip.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "emoji"
STYLES = ("twemoji", "fluent")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji") / "emoji16"
    assert build_emoji(out, image_size=16, packages=FIXTURE, styles=STYLES) is True
    return out


def _rows(out):
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def test_hexcode_normalisation_and_concepts():
    assert normalise_hexcode("1F636-200D-1F32B-FE0F") == "1f636-200d-1f32b"
    assert normalise_hexcode("2764-fe0f") == normalise_hexcode("2764")
    assert concept_of("1f44b-1f3ff") == "1f44b" and concept_of("1f9d1-1f3fb-200d-1f3a8") == "1f9d1-200d-1f3a8"


def test_captions_name_style_label_and_tags():
    assert emoji_caption("Twemoji", "red apple", "food-fruit", ["apple", "diet", "food", "fruit", "red"]) == \
        "a Twemoji-style emoji of red apple, fruit, food, diet"
    assert emoji_caption("OpenMoji", "star").startswith("an OpenMoji-style emoji of star")


def test_build_contents_captions_and_licences(built):
    rows = _rows(built)
    info = json.loads((built / "dataset.json").read_text())
    assert info["counts"]["total"] == len(rows) == 31
    assert set(info["licences"]) == {"twemoji", "fluent", "captions"} and "CC-BY-4.0" in info["licences"]["twemoji"]
    captions = {r["caption"] for r in rows}
    assert "a Twemoji-style emoji of red apple, fruit, food, diet" in captions
    assert "a Fluent-style emoji of waving hand: dark skin tone, open, fingers, bye" in captions  # skin tone named
    assert "a Twemoji-style emoji of face in clouds, skeptical, neutral, absentminded" in captions  # FE0F joined
    assert "a Twemoji-style emoji of flag for flag japan" in captions  # no codepoint: name fallback
    image = np.asarray(open_dataset(built, "all")[0]["image"])
    assert image.shape == (3, 16, 16) and image.max() == 1.0  # white background present


def test_split_is_by_concept(built):
    rows = _rows(built)
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["meta"]["concept"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values())  # every style and tone of a concept together
    assert {s for (s,) in splits_of.values()} == {"train", "val", "test"}
    waving = {r["split"] for r in rows if r["meta"]["label"].startswith("waving hand")}
    assert len(waving) == 1 and len([r for r in rows if r["meta"]["label"].startswith("waving hand")]) == 6
    train = {r["caption"] for r in rows if r["split"] == "train"}
    assert not train & {r["caption"] for r in rows if r["split"] != "train"}
    other_seed = build_emoji(built.parent / "seed1", image_size=16, packages=FIXTURE, styles=STYLES, seed=1)
    assert other_seed and [r["split"] for r in _rows(built.parent / "seed1")] != [r["split"] for r in rows]


def test_rebuild_is_a_noop_and_cli_works(built, tmp_path, capsys):
    stamp = (built / "dataset.json").stat().st_mtime_ns
    assert build_emoji(built, image_size=16, packages=FIXTURE, styles=STYLES) is False
    assert (built / "dataset.json").stat().st_mtime_ns == stamp
    out = tmp_path / "cli"
    argv = ["data", "build", "emoji", "--out", str(out), "--size", "16", "--packages", str(FIXTURE),
            "--styles", "twemoji,fluent", "--count", "5"]
    assert main(argv) == 0 and len(_rows(out)) == 5
    assert main(argv) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(["data", "build", "emoji", "--out", str(tmp_path / "x"), "--packages", str(FIXTURE)]) == 2
    assert "iconify-json-noto" in capsys.readouterr().err  # missing package named in one line


def test_alias_with_hflip_mirrors_parent():
    icon_set = open_package("@iconify-json/fluent-emoji-flat", packages=FIXTURE).read_json("icons.json")
    left = np.asarray(rasterise(iconify_svg(icon_set, "backhand-index-pointing-left"), 32)).astype(int)
    right = np.asarray(rasterise(iconify_svg(icon_set, "backhand-index-pointing-right"), 32)).astype(int)
    assert np.abs(right - left[:, ::-1]).mean() < 2 and np.abs(right - left).mean() > 10
    with pytest.raises(DataError, match="not found"):
        iconify_svg(icon_set, "no-such-icon")


def test_missing_npm_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(DataError, match="'npm' is not installed"):
        open_package("@iconify-json/noto", cache=tmp_path)


def test_held_out_split_option(built, tmp_path, capsys):
    """--split 95/0/5: no val, a test split that is a subset of the 80/10/10 one (same seed, same hash)."""
    from unclip.data.emoji import parse_split, split_for_concept

    assert parse_split("95/0/5") == (0.95, 0.0, 0.05)
    for bad in ("90/10", "50/30/30", "a/b/c", "0/50/50", "-5/55/50"):
        with pytest.raises(DataError, match="--split"):
            parse_split(bad)
    concepts = [f"c{i}" for i in range(2000)]
    default = {c: split_for_concept(c) for c in concepts}
    held = {c: split_for_concept(c, fractions=(0.95, 0.0, 0.05)) for c in concepts}
    assert "val" not in held.values() and 50 <= list(held.values()).count("test") <= 150
    assert all(default[c] == "test" for c in concepts if held[c] == "test")
    out = tmp_path / "held"
    argv = ["data", "build", "emoji", "--out", str(out), "--size", "16", "--packages", str(FIXTURE),
            "--styles", "twemoji,fluent", "--split", "95/0/5"]
    assert main(argv) == 0
    rows = _rows(out)
    assert len(rows) == 31 and {r["split"] for r in rows} <= {"train", "test"}
    assert json.loads((out / "dataset.json").read_text())["build"]["split"] == [0.95, 0.0, 0.05]
    assert main(argv[:-2] + ["--split", "95/5"]) == 2 and "--split" in capsys.readouterr().err
