"""`unclip eval` comparing pipelines over a sweep (unCLIP vs GLIDE, paper §5.2) and merging reports."""

from __future__ import annotations

import json

import pytest

from unclip.cli import main
from unclip.data.shapes import build_shapes
from unclip.errors import UnclipError
from unclip.eval.compare import combine_reports, comparison_table, plot_tradeoff, write_comparison

from helpers.pipeline import tiny_pipeline

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    build_shapes(root / "shapes", image_size=32, count=200, seed=0)
    tiny_pipeline("full", upsampler=False).save(root / "unclip")
    tiny_pipeline("glide", upsampler=False).save(root / "glide")
    return root


def _common(root, out):
    return ["--data", str(root / "shapes"), "--out", str(out), "--num-prompts", "3", "--images-per-prompt", "2",
            "--set", "decoder_steps=2", "--set", "prior_steps=2", "--sweep", "decoder_guidance=1,4"]


def test_two_pipelines_over_one_sweep_in_one_report(setup):
    out = setup / "cmp"
    code = main(["eval", "--model", str(setup / "unclip"), "--label", "unCLIP", "--model", str(setup / "glide"),
                 "--label", "GLIDE", "--decoder-diversity", *_common(setup, out)])
    assert code == 0
    payload = json.loads((out / "metrics.json").read_text())
    rows = payload["results"]
    assert payload["models"] == ["unCLIP", "GLIDE"] and payload["sweep"]["values"] == [1, 4]
    assert [(r["model"], r["decoder_guidance"]) for r in rows] == [("unCLIP", 1), ("unCLIP", 4), ("GLIDE", 1),
                                                                     ("GLIDE", 4)]
    for row in rows:
        assert row["n_generated"] == 6 and row["diversity"] > 0 and row["seconds_per_image"] > 0 < row["cpu_seconds_per_image"]
        assert "fid" in row and "shapes_exact" in row
        assert "real_diversity" not in row  # every test caption of the tiny set is unique
    # the decoder's own diversity needs a CLIP image embedding to hold fixed: unCLIP only
    assert [r["decoder_diversity"] is None for r in rows] == [False, False, True, True]
    # different pipelines (and guidance scales) give different samples, so different scores
    assert len({round(r["diversity"], 6) for r in rows}) == 4
    for name in ("curves.png", "tradeoff.png", "samples-0.png", "samples-1.png"):
        assert (out / name).read_bytes()[:4] == PNG, name
    report = (out / "report.md").read_text()
    assert "| unCLIP | 1 |" in report and "| GLIDE | 4 |" in report and "![tradeoff](tradeoff.png)" in report
    assert "<table>" in (out / "report.html").read_text()


def test_combined_reports_reproduce_the_live_comparison(setup):
    # A single-model run made separately, with the same prompts and seeds, scores exactly the same.
    single = setup / "glide-alone"
    assert main(["eval", "--model", str(setup / "glide"), "--label", "GLIDE-alone", *_common(setup, single)]) == 0
    assert json.loads((single / "metrics.json").read_text())["label"] == "GLIDE-alone"
    out = setup / "merged"
    assert main(["eval", "--combine", str(setup / "cmp"), str(single), "--out", str(out)]) == 0
    rows = json.loads((out / "metrics.json").read_text())["results"]
    live = {r["decoder_guidance"]: r for r in rows if r["model"] == "GLIDE"}
    alone = {r["decoder_guidance"]: r for r in rows if r["model"] == "GLIDE-alone"}
    assert sorted(alone) == [1, 4]
    for value in (1, 4):
        for key in ("fid", "diversity", "shapes_exact"):
            assert alone[value][key] == pytest.approx(live[value][key], rel=1e-5), (value, key)
    assert (out / "tradeoff.png").read_bytes()[:4] == PNG


def test_real_images_grouped_by_caption(tmp_path):
    from PIL import Image

    from unclip.data.built import DatasetWriter
    from unclip.eval.evaluate import real_by_caption

    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    with DatasetWriter(tmp_path / "d", name="toy", image_size=8, build={}) as writer:
        for i in range(3):
            for name, rgb in colours.items():
                writer.add(Image.new("RGB", (8, 8), tuple(c // (i + 1) for c in rgb)), f"a {name} square", "test")
        writer.add(Image.new("RGB", (8, 8), "white"), "a red square", "train")
    groups = real_by_caption(tmp_path / "d", "test", ["a red square", "a green square"], limit=2)
    assert list(groups) == ["a red square"] and len(groups["a red square"]) == 2
    first, second = groups["a red square"]
    assert first[0].mean() == 1.0 and second[0].mean() < 1.0  # red, then the darker red of row 2


def _fake_report(path, label, seed=0, key="decoder_guidance"):
    rows = [{key: g, "fid": 100.0 / g, "diversity": 10.0 - g, "clip_score": 20.0 + g, "seed": seed,
             "n_prompts": 5, "images_per_prompt": 4, "split": "test", "n_real": 20} for g in (1, 3)]
    path.mkdir(parents=True, exist_ok=True)
    payload = {"model": label, "label": label, "data": "d", "command": f"eval {label}", "results": rows,
               "sweep": {"key": key, "values": [1, 3]}}
    (path / "metrics.json").write_text(json.dumps(payload))
    return path


def test_table_and_plots_from_hand_made_reports(tmp_path):
    merged = combine_reports([_fake_report(tmp_path / "a", "A"), _fake_report(tmp_path / "b", "B")], ["uc", "gl"])
    assert merged["key"] == "decoder_guidance" and [r["model"] for r in merged["rows"]] == ["uc", "uc", "gl", "gl"]
    table = comparison_table(merged["key"], merged["rows"])
    assert table[0] == "| model | decoder_guidance | FID ↓ | CLIP score (eval CLIP) ↑ | diversity ↑ |"
    assert table[3] == "| uc | 3 | 33.33 | 23 | 7 |"
    report = write_comparison(tmp_path / "out", data="d", commands=merged["commands"], key=merged["key"],
                              rows=merged["rows"])
    assert "eval A" in report.read_text() and (tmp_path / "out" / "curves.png").read_bytes()[:4] == PNG
    with pytest.raises(UnclipError, match="needs --images-per-prompt 2"):
        plot_tradeoff("decoder_guidance", [{"model": "x", "decoder_guidance": 1, "fid": 1.0}], tmp_path / "t.png")


def test_mismatched_reports_are_refused(tmp_path):
    a = _fake_report(tmp_path / "a", "A")
    with pytest.raises(UnclipError, match="differ in seed"):
        combine_reports([a, _fake_report(tmp_path / "b", "B", seed=1)])
    with pytest.raises(UnclipError, match="differ in sweep key"):
        combine_reports([a, _fake_report(tmp_path / "c", "C", key="decoder_steps")])
    with pytest.raises(UnclipError, match="same model name"):
        combine_reports([a, _fake_report(tmp_path / "d", "A")])
    with pytest.raises(UnclipError, match="no readable metrics.json"):
        combine_reports([a, tmp_path / "missing"])


def test_bad_comparison_arguments_are_one_line(setup, capsys):
    pipe = str(setup / "glide")
    assert main(["eval", "--model", pipe, "--combine", str(setup), "--out", str(setup / "x")]) == 2
    assert main(["eval", "--model", pipe, "--model", pipe, "--label", "a", "--data", str(setup / "shapes"),
                 "--out", str(setup / "x")]) == 2
    assert main(["eval", "--model", pipe, "--model", pipe, "--data", str(setup / "shapes"),
                 "--out", str(setup / "x")]) == 2
    assert main(["eval", "--model", pipe, "--out", str(setup / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" ")[1] for line in err] == ["give", "got", "two", "--data"]
    assert all(line.startswith("error: ") for line in err) and not (setup / "x").exists()
