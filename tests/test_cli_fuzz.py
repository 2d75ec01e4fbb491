"""Fuzz-style: a corpus of broken inputs through the CLI (issue 22).

Broken images (truncated, bombs, empty, text, a folder), text that is not UTF-8, damaged model
folders and outputs that cannot be written. Every case must end the same way: exit code 2, exactly
one ``error:`` line on stderr (after ``warning:`` lines, if any), no traceback, and nothing written anywhere. The corpus is made here,
in ``tmp_path``; nothing is committed.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers.pipeline import edit_component, tiny_pipeline
from unclip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--quiet", "--decoder-steps", "1", "--upsampler-steps", "1"]


def _bomb(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _encoded(fmt: str, size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


BAD_IMAGES = {
    "truncated.png": _encoded("PNG", (64, 64))[:80],
    "truncated.jpg": _encoded("JPEG", (64, 64))[:200],
    "bomb13k.png": _bomb(13000, 13000),
    "bomb20k.png": _bomb(20000, 20000),
    "bomb-wide.png": _bomb(2**31 - 1, 1),
    "zero.png": b"",
    "text.png": b"this is a text file, not a picture\n",
    "html.jpg": b"<html><body>not an image</body></html>",
    "garbage.gif": b"GIF89a" + bytes(range(256)) * 3,
    "tiff.png": _encoded("TIFF"),  # a real image, but not an accepted format
}


def _damage_header_config(path: Path) -> None:
    """Flip one byte inside the safetensors header's config JSON (the header stays the same length)."""
    data = bytearray(path.read_bytes())
    at = data.index(b'"image_size')
    data[at + 1] ^= 0x20  # "image_size" -> "Image_size": an unknown config key
    path.write_bytes(bytes(data))


def _damage_config_json(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b'\\"image_size\\":')  # inside the escaped config string
    data[at + len(b'\\"image_size\\":')] = ord("{")
    path.write_bytes(bytes(data))


def _nan_weights(path: Path) -> None:
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(path), metadata=metadata)


DAMAGE = {
    "pipeline-missing": lambda m: (m / "pipeline.json").unlink(),
    "pipeline-list": lambda m: (m / "pipeline.json").write_text("[1, 2]"),
    "pipeline-null": lambda m: (m / "pipeline.json").write_text("null"),
    "pipeline-binary": lambda m: (m / "pipeline.json").write_bytes(b"\xff\xfe\x00garbage"),
    "pipeline-unknown-key": lambda m: _edit(m / "pipeline.json", lambda i: {**i, "upsamplr": "x"}),
    "pipeline-components-list": lambda m: _edit(m / "pipeline.json", lambda i: {**i, "components": ["decoder"]}),
    "pipeline-bad-steps": lambda m: _edit(m / "pipeline.json", lambda i: {**i, "defaults": {"decoder": {"steps": "x"}}}),
    # a component's settings live in its model.safetensors metadata (unclip.components)
    "component-missing": lambda m: edit_component(m / "decoder", lambda i: ...),
    "component-number": lambda m: edit_component(m / "decoder", lambda i: "42"),
    "component-unreadable": lambda m: edit_component(m / "decoder", lambda i: "{not json"),
    "component-unknown-key": lambda m: edit_component(m / "decoder", lambda i: {**i, "noise": 1}),
    "component-diffusion-typo": lambda m: edit_component(m / "decoder", lambda i: {**i, "diffusion": {"timestep": 10}}),
    "legacy-component-number": lambda m: (m / "decoder" / "component.json").write_text("42"),
    "decoder-folder-missing": lambda m: shutil.rmtree(m / "decoder"),
    "encoder-folder-missing": lambda m: shutil.rmtree(m / "encoder"),
    "weights-zero-bytes": lambda m: (m / "decoder" / "model.safetensors").write_bytes(b""),
    "weights-truncated": lambda m: _truncate(m / "decoder" / "model.safetensors"),
    "weights-text": lambda m: (m / "decoder" / "model.safetensors").write_text("not weights"),
    "weights-header-bitflip": lambda m: _damage_header_config(m / "decoder" / "model.safetensors"),
    "weights-config-json": lambda m: _damage_config_json(m / "decoder" / "model.safetensors"),
    "weights-nan": lambda m: _nan_weights(m / "decoder" / "model.safetensors"),
    "encoder-weights-nan": lambda m: _nan_weights(m / "encoder" / "model.safetensors"),
    "encoder-json-list": lambda m: (m / "encoder" / "encoder.json").write_text("[]"),
}


def _edit(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    good = tiny_pipeline("full").save(root / "model")  # prior, decoder, upsampler: can do everything
    images = root / "images"
    images.mkdir()
    for name, data in BAD_IMAGES.items():
        (images / name).write_bytes(data)
    (images / "folder.png").mkdir()
    Image.new("RGB", (24, 24), (220, 30, 30)).save(root / "good.png")
    models = root / "damaged"
    for name, damage in DAMAGE.items():
        damage(shutil.copytree(good, models / name))
    (root / "a-file").write_text("a regular file, so nothing can be created below it")
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_refused(args, corpus, tmp_path, capsys):
    before_corpus, before_out = _files(corpus), _files(tmp_path)
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (args, err)
    lines = err.splitlines()  # one error line, last; before it at most warnings (e.g. skipped files)
    assert lines and lines[-1].startswith("error: "), (args, err)
    assert all(line.startswith("warning: ") for line in lines[:-1]), (args, err)
    assert "Traceback" not in err and "internal error" not in err, (args, err)
    assert _files(corpus) == before_corpus and _files(tmp_path) == before_out, (args, "something was written")
    return err


def _image_commands(image, out, model):
    yield ["vary", image, "--model", model, "-n", "1", "--out", out, *FAST]
    yield ["interpolate", image, image, "--model", model, "--frames", "2", "--out", out, *FAST]
    yield ["textdiff", image, "--from", "a red circle", "--to", "a blue circle", "--model", model, "--out", out, *FAST]


@pytest.mark.parametrize("name", sorted(BAD_IMAGES) + ["folder.png", "missing.png"])
def test_broken_images(corpus, tmp_path, capsys, name):
    for args in _image_commands(corpus / "images" / name, tmp_path / "out.png", corpus / "model"):
        _assert_refused(args, corpus, tmp_path, capsys)


def test_a_folder_of_only_broken_images(corpus, tmp_path, capsys):
    folder = tmp_path.parent / f"{tmp_path.name}-folder"  # truncated files pass the header check of 'info'
    folder.mkdir()
    for name, data in BAD_IMAGES.items():
        if not name.startswith("truncated"):
            (folder / name).write_bytes(data)
    err = _assert_refused(["data", "info", folder], corpus, tmp_path, capsys)
    assert "no readable samples" in err


@pytest.mark.parametrize("bad", ["caf\udce9", "\udcff\udcfe", "ok \ud800 then"])
def test_text_that_is_not_utf8(corpus, tmp_path, capsys, bad):
    model, out = corpus / "model", tmp_path / "out.png"
    for args in (["generate", bad, "--model", model, "--out", out, *FAST],
                 ["generate", "fine", "--negative", bad, "--model", model, "--out", out, *FAST],
                 ["textdiff", corpus / "good.png", "--from", bad, "--to", "x", "--model", model, "--out", out, *FAST],
                 ["textdiff", corpus / "good.png", "--from", "x", "--to", bad, "--model", model, "--out", out, *FAST]):
        assert "not valid UTF-8" in _assert_refused(args, corpus, tmp_path, capsys)


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_model_folders(corpus, tmp_path, capsys, name):
    model = corpus / "damaged" / name
    _assert_refused(["generate", "a red circle", "--model", model, "--out", tmp_path / "g.png", *FAST],
                    corpus, tmp_path, capsys)
    _assert_refused(["vary", corpus / "good.png", "--model", model, "-n", "1", "--out", tmp_path / "v.png", *FAST],
                    corpus, tmp_path, capsys)


@pytest.mark.parametrize("flag, target", [
    ("--out", "a-file/sub/out.png"), ("--out", "/proc/out.png"), ("--out", "a-file"),
    ("--out-dir", "a-file/sub/samples"), ("--out-dir", "/proc/samples"), ("--out-dir", "a-file"),
    ("--device", "bogus"), ("--device", "cuda:nope"), ("--model", ""), ("--model", "a-file"),
])
def test_unwritable_outputs_and_bad_flags(corpus, tmp_path, capsys, flag, target):
    value = str(corpus / target) if target.startswith("a-file") else target
    args = ["generate", "a red circle", "--model", corpus / "model", "--out", tmp_path / "g.png", *FAST, flag, value]
    _assert_refused(args, corpus, tmp_path, capsys)


def test_training_into_an_unwritable_run_directory(corpus, tmp_path, capsys):
    args = ["train", "helpers.stages:TinyStage", "--set", "train.steps=1", "--out", corpus / "a-file" / "run"]
    assert "Not a directory" in _assert_refused(args, corpus, tmp_path, capsys)


def test_the_corpus_model_itself_works(corpus, tmp_path, capsys):
    """So that each refusal above is for the damage, not for something the model cannot do."""
    model, image = corpus / "model", corpus / "good.png"
    for args in (["generate", "a red circle", "--model", model, "-n", "1", "--out", tmp_path / "g.png", *FAST],
                 *_image_commands(image, tmp_path / "out.png", model)):
        assert main([str(a) for a in args]) == 0, capsys.readouterr().err
