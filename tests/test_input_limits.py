"""One pixel limit for every image reader (CLI, API, datasets), and bad files skipped, never fatal (issue 22)."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib

import pytest
from PIL import Image

from unclip.data import DataWarning, open_dataset
from unclip.errors import DataError, UnclipError
from unclip.imagefile import ImageRejected, check_image_header, open_image
from unclip.limits import MAX_IMAGE_PIXELS


def bomb_png(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png(colour=(200, 30, 30), size=(16, 16), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# 13000^2 is under Pillow's own bomb error (2 x 89 M pixels) but far over ours: only our limit stops it;
# 20000^2 is over Pillow's too (it used to escape as an internal DecompressionBombError).
BOMBS = [(13000, 13000), (20000, 20000)]


@pytest.mark.parametrize("size", BOMBS)
def test_every_reader_refuses_a_bomb_from_its_header(size, tmp_path):
    from unclip.data.common import decode_image
    from unclip.pipelines.images import load_image
    from unclip.serve.images import decode_upload

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(*size))
    for read in (lambda: open_image(path), lambda: check_image_header(path), lambda: load_image(path, 16)):
        with pytest.raises(ImageRejected, match=rf"bomb\.png: .*(over the limit of {MAX_IMAGE_PIXELS}|bomb)"):
            read()
    with pytest.raises(ImageRejected, match="image: .*decompression bomb"):
        decode_upload(path.read_bytes(), max_bytes=10**6, max_pixels=MAX_IMAGE_PIXELS)
    with pytest.raises(DataError, match="over the limit|bomb"):
        decode_image(path.read_bytes())


def test_the_limit_is_one_number_that_callers_can_lower(tmp_path):
    from unclip.serve.config import ServeConfig

    assert ServeConfig().max_image_pixels == MAX_IMAGE_PIXELS
    path = tmp_path / "small.png"
    path.write_bytes(png(size=(20, 10)))
    assert open_image(path).size == (20, 10)
    with pytest.raises(ImageRejected, match="20x10 pixels is over the limit of 199 pixels"):
        open_image(path, max_pixels=199)


def test_cli_vary_refuses_a_bomb_in_one_line(tmp_path, capsys):
    from unclip.cli import main

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(13000, 13000))
    out = tmp_path / "v.png"
    assert main(["vary", str(path), "--model", "shapes", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot read image") and "over the limit" in err
    assert not out.exists()
    small = tmp_path / "small.png"
    small.write_bytes(png(size=(40, 40)))
    assert main(["vary", str(small), "--model", "shapes", "--max-image-pixels", "100", "--out", str(out)]) == 2
    assert "40x40 pixels is over the limit of 100" in capsys.readouterr().err


def _folder(tmp_path, n=6):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(n):
        (root / f"{i}.png").write_bytes(png((40 * i, 100, 200)))
    return root


@pytest.mark.parametrize("size", BOMBS)
def test_a_bomb_in_a_folder_is_skipped_and_counted(size, tmp_path, capsys):
    from unclip.cli import main

    root = _folder(tmp_path)
    (root / "bomb.png").write_bytes(bomb_png(*size))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(root, image_size=16)
    assert len(ds) == 6 and [item["image"].shape for item in (ds[0], ds[5])] == [(3, 16, 16)] * 2
    reports = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(reports) == 1 and "skipped 1 bad sample(s)" in reports[0] and "bomb.png" in reports[0]
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert main(["data", "info", str(root)]) == 0
    captured = capsys.readouterr()
    assert "train 6" in captured.out and "skipped 1 bad sample(s)" in captured.err


def test_a_bomb_in_shards_is_skipped(tmp_path):
    from unclip.data.shards import write_shards

    samples = [(f"{i:04d}", png(), "png", f"caption {i}", None) for i in range(4)]
    samples.insert(2, ("bomb", bomb_png(20000, 20000), "png", "a bomb", None))
    write_shards(samples, str(tmp_path / "shard-%04d.tar"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(open_dataset(str(tmp_path / "shard-0000.tar")))
    assert [item["caption"] for item in items] == [f"caption {i}" for i in range(4)]
    assert any("bomb" in str(w.message) for w in caught if issubclass(w.category, DataWarning))


def test_a_lone_surrogate_in_captions_jsonl_is_a_skipped_sample(tmp_path):
    root = _folder(tmp_path, n=3)
    rows = [{"file": "0.png", "caption": "a red thing"}, {"file": "1.png", "caption": "bad \ud800 text"},
            {"file": "2.png", "caption": "a blue thing"}]
    # json.dumps escapes the surrogate as \ud800: valid JSON, invalid text
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ds = open_dataset(root)
    assert sorted(ds.captions) == ["a blue thing", "a red thing"]
    assert "lone surrogate" in dict(ds.bad.items)[str(root / "1.png")]


def test_non_utf8_captions_are_one_line_errors_in_the_library():
    from unclip.encoders.base import check_captions

    with pytest.raises(UnclipError, match=r"caption 1 \('caf\\udce9'\) is not valid UTF-8"):
        check_captions(["fine", "caf\udce9"])
