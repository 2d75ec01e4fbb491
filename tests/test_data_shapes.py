"""Shapes dataset: exact grammar, exact colours, determinism, withheld combinations, built format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unclip.cli import main
from unclip.data import collate_samples, open_dataset
from unclip.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    WITHHELD_PAIRS,
    ShapesDataset,
    all_combinations,
    build_shapes,
    caption_for,
    parse_caption,
    render_shape,
    sample_specs,
    split_for,
)
from unclip.errors import DataError


def test_grammar_is_exactly_the_issue_grammar():
    assert SHAPES == ("circle", "square", "triangle", "star", "heart", "cross")
    assert COLORS == {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
                      "yellow": (235, 205, 30), "purple": (140, 60, 190), "orange": (245, 140, 20),
                      "black": (20, 20, 20), "cyan": (30, 200, 210)}
    assert POSITIONS == {"top left": (0.28, 0.28), "top right": (0.72, 0.28), "bottom left": (0.28, 0.72),
                         "bottom right": (0.72, 0.72), "center": (0.5, 0.5)}
    assert SIZES == {"small": 0.13, "large": 0.24}
    assert len(all_combinations()) == 480
    assert caption_for("star", "cyan", "top left", "small") == "a small cyan star in the top left"


def test_parse_caption_round_trip_and_rejects_other_text():
    for spec in all_combinations():
        assert parse_caption(spec.caption) == {"shape": spec.shape, "color": spec.color,
                                               "position": spec.position, "size": spec.size}
    for bad in ("a small red circle in the middle", "a tiny red circle in the center", "a red circle"):
        with pytest.raises(DataError):
            parse_caption(bad)


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("shape", SHAPES)
def test_exact_colour_at_centre_and_white_corners(shape, image_size):
    for color, rgb in COLORS.items():
        for position, (cx, cy) in POSITIONS.items():
            image = np.asarray(render_shape(shape, color, position, "small", image_size))
            assert image.shape == (image_size, image_size, 3)
            # pixel whose centre is nearest the shape centre is fully covered → exact colour
            assert tuple(image[int(cy * image_size), int(cx * image_size)]) == rgb, (shape, color, position)
        assert tuple(image[0, 0]) == (255, 255, 255) and tuple(image[-1, -1]) == (255, 255, 255)


def test_rendering_is_anti_aliased_and_sizes_differ():
    small = np.asarray(render_shape("circle", "red", "center", "small", 64))
    large = np.asarray(render_shape("circle", "red", "center", "large", 64))
    is_red = lambda a: (a == COLORS["red"]).all(-1)
    ratio = is_red(large).sum() / is_red(small).sum()
    assert 2.8 < ratio < 3.9  # area ratio (0.24/0.13)^2 ≈ 3.4
    colours = {tuple(p) for p in large.reshape(-1, 3)}
    assert len(colours) > 3  # edge pixels are blends, not just red and white


def test_specs_are_deterministic_by_seed_and_jitter_is_small():
    a, b, c = sample_specs(960, seed=1, jitter=0.02), sample_specs(960, seed=1, jitter=0.02), sample_specs(960, seed=2)
    assert a == b and a != c
    assert {s.caption for s in a[:480]} == {s.caption for s in all_combinations()}  # each pass covers all 480
    for spec in a:
        x, y = POSITIONS[spec.position]
        assert abs(spec.center[0] - x) <= 0.02 and abs(spec.center[1] - y) <= 0.02
        assert abs(spec.radius / SIZES[spec.size] - 1) <= 0.04
    with pytest.raises(DataError):
        sample_specs(10, jitter=0.2)


def test_withheld_pairs_only_in_test():
    specs = sample_specs(960, seed=0)
    splits = [split_for(s, i) for i, s in enumerate(specs)]
    held = {(s.shape, s.color) for s, split in zip(specs, splits) if split in ("train", "val")}
    assert not held & set(WITHHELD_PAIRS)
    test_pairs = {(s.shape, s.color) for s, split in zip(specs, splits) if split == "test"}
    assert set(WITHHELD_PAIRS) <= test_pairs
    assert splits.count("train") > 0.7 * len(specs) and "val" in splits


def test_build_open_and_rebuild_is_noop(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "build", "shapes", "--out", str(out), "--size", "16", "--count", "60"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"]["total"] == 60 and info["image_size"] == 16 and info["licences"]
    mtime = (out / "dataset.json").stat().st_mtime_ns
    assert build_shapes(out, image_size=16, count=60) is False
    assert (out / "dataset.json").stat().st_mtime_ns == mtime

    train, test = open_dataset(out, "train"), open_dataset(out, "test")
    item = train[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert parse_caption(item["caption"])["shape"] == item["meta"]["shape"]
    assert not any(train[i]["meta"]["withheld"] for i in range(len(train)))
    assert any(test[i]["meta"]["withheld"] for i in range(len(test)))
    assert open_dataset(out, "train", image_size=8)[0]["image"].shape == (3, 8, 8)
    batch = collate_samples([train[0], train[1], test[0]])
    assert batch["image"].shape == (3, 3, 16, 16) and len(batch["caption"]) == 3 and len(batch["meta"]) == 3

    # built images equal on-the-fly rendering
    live = ShapesDataset(image_size=16, count=60, seed=0, split="train")
    assert len(live) == len(train)
    assert torch.allclose(live[3]["image"], train[3]["image"]) and live[3]["caption"] == train[3]["caption"]

    assert main(["data", "info", str(out)]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["data", "preview", str(out), "--out", str(tmp_path / "grid.png"), "--n", "4"]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 500


def test_build_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        build_shapes(tmp_path, image_size=16, count=4)


@pytest.mark.parametrize("command", ["build", "info", "preview"])
def test_data_subcommands_have_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", command, "--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nope")]) == 2
    assert main(["data", "preview", str(tmp_path), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_built_dataset_in_memory_and_damaged_files(tmp_path):
    import warnings

    from unclip.data import DataWarning

    out = tmp_path / "shapes"
    build_shapes(out, image_size=16, count=40, seed=3)
    lazy = open_dataset(out, "all")
    memory = open_dataset(out, "all", in_memory=True)
    assert memory.pixels.shape == (40, 3, 16, 16) and memory.pixels.dtype == torch.uint8
    assert torch.allclose(lazy[5]["image"], memory[5]["image"]) and lazy[5]["caption"] == memory[5]["caption"]

    (out / "images" / "000001.png").unlink()  # missing file → dropped at open
    (out / "images" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 20)  # corrupt → at read
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        damaged = open_dataset(out, "all")
        assert len(damaged) == 39
        items = [damaged[i] for i in range(len(damaged))]
    assert len(items) == 39 and len(damaged.bad) == 2
    assert sum(issubclass(w.category, DataWarning) for w in caught) == 2  # one at open, one while reading
    with pytest.raises(DataError, match="in_memory"):
        open_dataset(tmp_path / "nope", in_memory=True)
