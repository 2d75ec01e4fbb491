"""The CLI as hardened as the server (issue 22): text, outputs, total work, model folders, small flags.

Every refusal is one ``error:`` line with exit code 2, and leaves nothing behind.
"""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers.pipeline import edit_component, tiny_pipeline
from unclip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--quiet", "--decoder-steps", "1"]
FAST_UP = FAST + ["--upsampler-steps", "1"]  # for models with an upsampler


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    red = root / "red.png"
    Image.new("RGB", (24, 24), (220, 30, 30)).save(red)
    return {"glide": tiny_pipeline("glide", upsampler=False).save(root / "glide"),
            "unclip": tiny_pipeline("unclip").save(root / "unclip"), "red": red}


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error(code, err, *fragments):
    """Exit 2 and one 'error:' line, the last of stderr (a training progress bar may come before it)."""
    assert code == 2, err
    lines = err.splitlines()
    assert [line for line in lines if "error" in line] == lines[-1:] and lines[-1].startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    for fragment in fragments:
        assert fragment in lines[-1], err


def _copy(model, tmp_path, name="damaged"):
    return shutil.copytree(model, tmp_path / name)


# --- 4. text that is not UTF-8 ---------------------------------------------------------------
def test_non_utf8_text_is_one_line(models, tmp_path, capsys):
    out = tmp_path / "g.png"
    bad = "caf\udce9 circle"  # what Python makes of the byte 0xE9 in a UTF-8 command line
    for args, fragment in (
        (["generate", bad, "--model", models["glide"], "--out", out], "prompt 1 ('caf\\udce9 circle') is not valid"),
        (["generate", "ok", "--negative", bad, "--model", models["glide"], "--out", out], "--negative"),
        (["textdiff", models["red"], "--from", "a red circle", "--to", bad, "--model", models["unclip"],
          "--out", out, *FAST_UP], "--to ('caf\\udce9 circle') is not valid UTF-8"),
    ):
        code, _, err = _run(args, capsys)
        _one_error(code, err, fragment)
    assert not out.exists()


# --- 5. outputs that cannot be written ------------------------------------------------------------
def test_unwritable_outputs_are_refused_before_sampling(models, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for flag, target, fragment in (
        ("--out", "/proc/grid.png", "cannot write /proc"),
        ("--out-dir", "/proc/samples", "cannot write /proc"),
        ("--out-dir", blocker / "sub" / "samples", "is a file"),
        ("--out", blocker / "sub" / "grid.png", "does not exist"),
    ):
        code, _, err = _run(["generate", "a red circle", "-n", "1", "--model", models["glide"], flag, target, *FAST],
                            capsys)
        _one_error(code, err, fragment)


def _fill_disk_after(monkeypatch, n_good: int):
    """PNG writes after the first ``n_good`` write half a file, then fail as on a full disk."""
    original, calls = Image.Image.save, {"n": 0}

    def save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_good:
            with open(fp, "wb") as handle:
                handle.write(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


@pytest.mark.parametrize("existing", [False, True])
def test_a_full_disk_leaves_no_half_written_out_dir(models, tmp_path, capsys, monkeypatch, existing):
    out_dir = tmp_path / "samples"
    if existing:
        out_dir.mkdir()
        (out_dir / "keep.txt").write_text("from before")
    _fill_disk_after(monkeypatch, n_good=2)
    code, _, err = _run(["generate", "a red circle", "-n", "3", "--seed", "0", "--model", models["glide"],
                         "--out-dir", out_dir, *FAST], capsys)
    _one_error(code, err, f"cannot write {out_dir}: No space left on device; nothing was written")
    left = sorted(p.name for p in tmp_path.rglob("*"))
    assert left == (["keep.txt", "samples"] if existing else [])  # no PNG, no generation.json, no temporaries


def test_a_full_disk_writes_neither_the_strip_nor_the_gif(models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "strip.png"
    original = Image.Image.save

    def save(self, fp, *args, **kwargs):  # the PNG fits, the GIF does not
        if kwargs.get("format") == "GIF":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    code, _, err = _run(["interpolate", models["red"], models["red"], "--frames", "2", "--model", models["unclip"],
                         "--out", out, *FAST_UP], capsys)
    _one_error(code, err, "strip.gif: No space left on device; nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_train_out_and_checkpoint_write_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from unclip.train import state

    config = ["helpers.stages:TinyStage", "--set", "train.steps=2", "--set", "train.checkpoint_every=1"]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = _run(["train", *config, "--out", blocker / "run"], capsys)
    _one_error(code, err, f"cannot write {blocker / 'run'}: Not a directory")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("unclip.checkpoint.save_file", full)
    run = tmp_path / "run"
    code, _, err = _run(["train", *config, "--out", run], capsys)
    _one_error(code, err, f"cannot write {run / 'checkpoints' / 'step_00000001'}: No space left on device")
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())
    assert state.list_checkpoints(run) == []


# --- 6. total work -----------------------------------------------------------------------------
def test_total_images_are_capped_and_the_cap_can_be_raised(models, tmp_path, capsys):
    out = tmp_path / "g.png"
    code, _, err = _run(["generate", "a", "b", "c", "-n", "30", "--model", models["glide"], "--out", out, *FAST],
                        capsys)
    _one_error(code, err, "3 prompt(s) x -n 30 = 90 images is more than the limit of 64; pass --max-images 90")
    assert not out.exists()


def test_images_are_sampled_and_written_in_batches(models, tmp_path, capsys, monkeypatch):
    from unclip.pipelines.unclip import UnCLIPPipeline

    calls = []
    original = UnCLIPPipeline.__call__

    def spy(self, prompts, **kwargs):
        calls.append((list(prompts), list(kwargs["seed"])))
        return original(self, prompts, **kwargs)

    monkeypatch.setattr(UnCLIPPipeline, "__call__", spy)
    out_dir = tmp_path / "many"
    prompts = ["a red circle", "a blue square", "a shape"]
    code, stdout, err = _run(["generate", *prompts, "-n", "8", "--seed", "10", "--model", models["glide"],
                              "--max-images", "24", "--out-dir", out_dir, *FAST], capsys)
    assert code == 0, err
    assert [len(p) * 8 for p, _ in calls] == [16, 8]  # unclip.limits.GENERATE_BATCH images per call
    assert [s for _, seeds in calls for s in seeds] == list(range(10, 34))
    record = json.loads((out_dir / "generation.json").read_text())
    assert [im["seed"] for im in record["images"]] == list(range(10, 34))
    assert [im["prompt"] for im in record["images"]] == [p for p in prompts for _ in range(8)]
    assert "24 images, seeds 10..33" in stdout
    # image 17 (the second call's first) is reproduced alone from its seed
    again = tmp_path / "again"
    assert main(["generate", "a shape", "-n", "1", "--seed", "26", "--model", str(models["glide"]),
                 "--out-dir", str(again), *FAST]) == 0
    first = np.asarray(Image.open(out_dir / record["images"][16]["file"]), dtype=np.float32)
    alone = np.asarray(Image.open(next(again.glob("*.png"))), dtype=np.float32)
    assert np.abs(first - alone).max() <= 1


# --- 7. model folders ------------------------------------------------------------------------------
def _edit_json(path, edit):
    if path.name == "model.safetensors":  # a component's settings live in its metadata (unclip.components)
        edit_component(path.parent, edit)
        return
    info = json.loads(path.read_text())
    path.write_text(json.dumps(edit(info)))


@pytest.mark.parametrize("file, edit, fragment", [
    ("decoder/model.safetensors", lambda i: {**i, "noise_levl": 3}, "unknown key 'noise_levl'"),
    ("decoder/model.safetensors", lambda i: {**i, "role": "upsampler", "low_res_size": "16"},
     "'low_res_size' must be"),
    ("decoder/model.safetensors", lambda i: [i], "hold a list, not a JSON object"),
    ("decoder/model.safetensors", lambda i: {**i, "sample": {"steps": "many"}}, "'sample.steps' must be an integer"),
    ("pipeline.json", lambda i: {**i, "defualts": {}}, "unknown key 'defualts'"),
    ("pipeline.json", lambda i: {**i, "defaults": {"decoder": {"steps": 2.5}}}, "'defaults.decoder.steps' must be"),
    ("pipeline.json", lambda i: {**i, "defaults": {"decoder": {"stpes": 2}}}, "unknown key 'defaults.decoder.stpes'"),
    ("pipeline.json", lambda i: {**i, "defaults": {"decoder": 5}}, "'defaults.decoder' must be an object"),
    ("pipeline.json", lambda i: {**i, "name": 7}, "'name' must be a string or null"),
    ("pipeline.json", lambda i: "unclip", "holds a string, not a JSON object"),
])
def test_model_folders_are_checked_strictly(models, tmp_path, capsys, file, edit, fragment):
    model = _copy(models["glide"], tmp_path)
    _edit_json(model / file, edit)
    code, _, err = _run(["generate", "a red circle", "-n", "1", "--model", model, "--out", tmp_path / "g.png", *FAST],
                        capsys)
    _one_error(code, err, fragment)
    assert not (tmp_path / "g.png").exists()


def test_bad_devices_are_one_line(models, tmp_path, capsys):
    devices = ["bogus", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        code, _, err = _run(["generate", "a red circle", "--model", models["glide"], "--device", device,
                             "--out", tmp_path / "g.png", *FAST], capsys)
        _one_error(code, err, f"device {device!r}")


def _damage(model, change):
    """Rewrite the decoder's weights with ``change(state)`` (metadata kept)."""
    path = model / "decoder" / "model.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata=metadata)


def _first_conv(state):
    return sorted(k for k, v in state.items() if v.is_floating_point() and v.numel() > 100)[0]


def test_nan_weights_are_a_damaged_model(models, tmp_path, capsys):
    model = _copy(models["glide"], tmp_path)
    _damage(model, lambda s: s[_first_conv(s)].view(-1).__setitem__(0, float("nan")))
    code, _, err = _run(["generate", "a red circle", "--model", model, "--out", tmp_path / "g.png", *FAST], capsys)
    _one_error(code, err, "is damaged", "NaN or infinite")
    assert not (tmp_path / "g.png").exists()


def test_a_flipped_bit_that_makes_outputs_non_finite_is_caught(models, tmp_path, capsys):
    model = _copy(models["glide"], tmp_path)

    def flip(state):  # the top exponent bit of one weight: finite (about 1e37), so only the outputs tell
        state[_first_conv(state)].view(-1)[:1].view(torch.int32).bitwise_xor_(1 << 30)

    _damage(model, flip)
    code, _, err = _run(["generate", "a red circle", "--model", model, "--out", tmp_path / "g.png", *FAST], capsys)
    _one_error(code, err, "produced NaN or infinite values, so its weights are damaged")
    assert not (tmp_path / "g.png").exists()


# --- 9. small flags --------------------------------------------------------------------------------
def test_upsampler_steps_without_an_upsampler_is_refused(models, tmp_path, capsys):
    code, _, err = _run(["generate", "a red circle", "--model", models["glide"], "--out", tmp_path / "g.png",
                         *FAST_UP], capsys)
    _one_error(code, err, "--upsampler-steps: this model (tiny-glide) has no upsampler")
    assert not (tmp_path / "g.png").exists()
    code, _, err = _run(["vary", models["red"], "--model", models["unclip"], "-n", "1", "--out", tmp_path / "v.png",
                         *FAST_UP], capsys)
    assert code == 0, err  # the unclip model has an upsampler


def test_an_empty_model_name_is_not_the_default_model(tmp_path, capsys):
    code, _, err = _run(["generate", "a red circle", "--model", "", "--out", tmp_path / "g.png"], capsys)
    _one_error(code, err, "--model is empty")
