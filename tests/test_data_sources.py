"""Bring-your-own data: image folders (txt / jsonl / csv / no captions), bad files, webdataset shards."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from unclip.data import DataWarning, collate_samples, open_dataset
from unclip.data.shards import ShardDataset, write_shards
from unclip.errors import DataError


def _png(color=(255, 0, 0), size=(12, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg(color=(0, 0, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _good_folder(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "a.png").write_bytes(_png((255, 0, 0)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(_jpg())
    (tmp_path / "c.png").write_bytes(_png((0, 0, 0, 0), mode="RGBA"))  # transparent → white
    return tmp_path


def test_txt_captions_and_image_size(tmp_path):
    root = _good_folder(tmp_path)
    (root / "a.txt").write_text("a red thing\n")
    (root / "sub" / "b.txt").write_text("a blue  thing")
    (root / "c.txt").write_text("nothing")
    ds = open_dataset(root, image_size=8)
    assert len(ds) == 3
    items = {item["meta"]["path"]: item for item in (ds[i] for i in range(3))}
    assert items["a.png"]["caption"] == "a red thing" and items["sub/b.jpg"]["caption"] == "a blue thing"
    assert items["a.png"]["image"].shape == (3, 8, 8)
    assert torch.allclose(items["a.png"]["image"][0], torch.ones(8, 8))  # red channel 255 → 1
    assert torch.allclose(items["c.png"]["image"], torch.ones(3, 8, 8))  # alpha composited on white
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_samples)))
    assert batch["image"].shape == (3, 3, 8, 8) and len(batch["meta"]) == 3


def test_jsonl_and_csv_captions(tmp_path):
    root = _good_folder(tmp_path / "j")
    rows = [{"file": "a.png", "caption": "red", "source": "me"}, {"image": "sub/b.jpg", "text": "blue"},
            {"file": "c.png", "caption": "clear"}]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = open_dataset(root)
    by_path = {ds[i]["meta"]["path"]: ds[i] for i in range(len(ds))}
    assert by_path["a.png"]["caption"] == "red" and by_path["a.png"]["meta"]["source"] == "me"
    assert by_path["sub/b.jpg"]["caption"] == "blue"

    root = _good_folder(tmp_path / "c")
    (root / "captions.csv").write_text('file,caption\na.png,"red, bright"\nsub/b.jpg,blue\nc.png,clear\n')
    ds = open_dataset(root)
    assert sorted(ds.captions) == ["blue", "clear", "red, bright"]


def test_folder_without_captions_is_language_free(tmp_path):
    ds = open_dataset(_good_folder(tmp_path))
    assert len(ds) == 3 and all(ds[i]["caption"] == "" and ds[i]["meta"]["has_caption"] is False for i in range(3))
    with pytest.raises(DataError, match="only split='train'"):
        open_dataset(tmp_path, split="val")


def test_split_subfolders(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        (tmp_path / split).mkdir()
        for i in range(n):
            (tmp_path / split / f"{i}.png").write_bytes(_png())
    assert len(open_dataset(tmp_path, "train")) == 3 and len(open_dataset(tmp_path, "val")) == 1
    assert len(open_dataset(tmp_path, "all")) == 4


def test_bad_files_are_skipped_counted_and_reported_once(tmp_path):
    root = _good_folder(tmp_path)
    for name, caption in (("a", "red"), ("sub/b", "blue"), ("c", "clear")):
        (root / f"{name}.txt").write_text(caption)
    (root / "fake.png").write_bytes(b"this is not a png")  # non-image with an image name
    (root / "fake.txt").write_text("fake")
    (root / "empty.png").write_bytes(b"")
    (root / "empty.txt").write_text("x")
    (root / "nocap.png").write_bytes(_png())  # caption file missing
    (root / "blank.png").write_bytes(_png())
    (root / "blank.txt").write_text("   \n")  # empty caption
    (root / "latin.png").write_bytes(_png())
    (root / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))  # not UTF-8
    (root / "notes.md").write_text("hello")  # not an image at all
    truncated = _png((0, 255, 0), size=(64, 64))
    (root / "trunc.png").write_bytes(truncated[: len(truncated) // 2])  # header fine, data cut
    (root / "trunc.txt").write_text("green")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(root)
    reports = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(reports) == 1
    message = str(reports[0].message)
    assert "skipped 6 bad sample(s)" in message and "fake.png" in message and "and 1 more" in message
    reasons = dict(ds.bad.items)
    assert reasons[str(root / "latin.png")] == "caption is not UTF-8"
    assert reasons[str(root / "blank.png")] == "caption is empty"
    assert len(ds) == 4  # a, b, c and the truncated one (found only on decode)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]  # two epochs, no crash
    assert len([w for w in caught if issubclass(w.category, DataWarning)]) == 1
    assert all(item["caption"] != "green" for item in items)
    assert len(ds.bad) == 7 and str(root / "trunc.png") in dict(ds.bad.items)  # counted once, not once per epoch


def test_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="no readable images"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "missing")


def _samples(n, start=0):
    for i in range(start, start + n):
        yield f"{i:06d}", _png((i * 20 % 256, 0, 0)) if i % 2 else _jpg(), "png" if i % 2 else "jpg", \
            f"caption {i}", {"url": f"http://x/{i}", "similarity": 0.3}


def test_webdataset_round_trip_streams_and_splits_over_workers(tmp_path):
    paths = write_shards(_samples(10), str(tmp_path / "shards" / "%05d.tar"), per_shard=4)
    assert len(paths) == 3
    ds = open_dataset(str(tmp_path / "shards" / "{00000..00002}.tar"), image_size=8)
    assert isinstance(ds, ShardDataset)
    items = list(ds)
    assert [it["caption"] for it in items] == [f"caption {i}" for i in range(10)]
    assert items[3]["meta"]["url"] == "http://x/3" and items[3]["image"].shape == (3, 8, 8)
    assert len(list(open_dataset(tmp_path / "shards", image_size=8))) == 10  # directory form
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_samples)
    captions = sorted(c for batch in loader for c in batch["caption"])
    assert captions == sorted(f"caption {i}" for i in range(10))  # each sample once across workers
    shuffled = [it["caption"] for it in ShardDataset(paths[0].parent, image_size=8, shuffle_buffer=4, seed=1)]
    assert sorted(shuffled) == sorted(f"caption {i}" for i in range(10)) and shuffled != captions


def test_webdataset_bad_samples_and_truncated_shard(tmp_path):
    good = list(_samples(3))
    bad = [("000100", b"garbage", "jpg", "broken image", None),
           ("000101", _png(), "png", b"\xff\xfe bad", None),
           ("000102", _png(), "png", None, None)]  # no caption → language-free sample, kept
    paths = write_shards(good + bad, str(tmp_path / "%03d.tar"), per_shard=100)
    data = paths[0].read_bytes()
    with tarfile.open(paths[0]) as tar:
        member = tar.getmembers()[3]  # second sample's image
        cut = member.offset_data + member.size // 2
    (tmp_path / "001.tar").write_bytes(data[:cut])  # truncated copy, cut inside a member
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(tmp_path, image_size=8)
        items = list(ds)
    kept = [it["caption"] for it in items]
    assert kept[:4] == ["caption 0", "caption 1", "caption 2", ""]
    assert items[3]["meta"]["has_caption"] is False
    assert any(issubclass(w.category, DataWarning) for w in caught)
    assert any(path.endswith("001.tar") and "truncated" in reason for path, reason in ds.bad.items)
    assert any("caption is not UTF-8" == reason for _, reason in ds.bad.items)


def test_captions_jsonl_counts_lines_that_are_not_objects(tmp_path):
    """A bare number or list in captions.jsonl is a bad line (counted), not a TypeError."""
    for i in range(2):
        Image.new("RGB", (8, 8), "red").save(tmp_path / f"{i}.png")
    (tmp_path / "captions.jsonl").write_text('{"file": "0.png", "caption": "a red square"}\n5\n[1, 2]\n'
                                             '{"file": "1.png", "caption": "another"}\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = open_dataset(tmp_path, split="train")
        captions = sorted(dataset[i]["caption"] for i in range(len(dataset)))
    assert captions == ["a red square", "another"]
    assert any("2" in str(w.message) and "captions.jsonl" in str(w.message) for w in caught)
