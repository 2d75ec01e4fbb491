"""Data as users have it (issue 20): Hugging Face imagefolder, clip-retrieval embedding folders, webdataset
URLs (pipe:, http://, brace patterns) and embeddings stored inside shards; each trains a tiny model."""

from __future__ import annotations

import functools
import http.server
import io
import json
import sys
import threading
import warnings

import numpy as np
import pytest
import torch

from unclip.cli import main
from unclip.data import DataWarning, open_dataset, render_shape
from unclip.data.shards import ShardDataset, write_shards
from unclip.encoders.shards import open_embeddings
from unclip.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")
SPECS = [("circle", "red", "top left", "small"), ("square", "blue", "center", "large"),
         ("star", "green", "bottom right", "small"), ("heart", "black", "top right", "large")]
D = 8
TINY = ["train.steps=3", "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=100",
        "train.warmup_steps=1"]


def _caption(i):
    shape, color, position, size = SPECS[i % 4]
    return f"a {size} {color} {shape} in the {position}"


def _png(i, size=16) -> bytes:
    buffer = io.BytesIO()
    render_shape(*SPECS[i % 4], image_size=size).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float16), allow_pickle=False)
    return buffer.getvalue()


def _embeddings(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1)
    image = torch.nn.functional.normalize(text + 0.3 * torch.randn(n, D, generator=g), dim=-1)
    return image.numpy(), text.numpy()


# --- Hugging Face imagefolder -----------------------------------------------------------------
def _imagefolder(root, column="text", splits=None, csv=False):
    """``root/metadata.jsonl`` (or ``.csv``) + PNGs; with ``splits`` {dir: count} one sub-folder per split
    and one top-level metadata file whose ``file_name`` holds the sub-folder."""
    rows, index = [], 0
    for folder, count in (splits or {"": 8}).items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            name = f"{folder}/{index:03d}.png".lstrip("/")
            (root / name).write_bytes(_png(index))
            rows.append({"file_name": name, column: _caption(index), "label": index % 4})
            index += 1
    if csv:
        lines = [f"file_name,{column},label"] + [f"{r['file_name']},{r[column]},{r['label']}" for r in rows]
        (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    else:
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_imagefolder_metadata_gives_captions_and_meta(tmp_path):
    ds = open_dataset(_imagefolder(tmp_path / "hf"), image_size=16)
    assert len(ds) == 8 and ds.captions[1] == _caption(1) and ds.caption_source == "metadata.jsonl"
    item = ds[2]
    assert item["image"].shape == (3, 16, 16) and item["meta"]["label"] == 2 and item["meta"]["has_caption"]
    csv = open_dataset(_imagefolder(tmp_path / "csv", csv=True))
    assert csv.captions == ds.captions and csv.caption_source == "metadata.csv"


def test_imagefolder_caption_column_is_chosen_by_name(tmp_path):
    root = _imagefolder(tmp_path / "hf", column="caption")
    with pytest.raises(DataError, match="no caption column 'text' .columns: caption, label.*data.caption_column"):
        open_dataset(root)
    assert open_dataset(root, caption_column="caption").captions[0] == _caption(0)


def test_imagefolder_split_folders_with_top_level_metadata(tmp_path):
    root = _imagefolder(tmp_path / "hf", splits={"train": 6, "validation": 2})
    train, val = open_dataset(root, split="train"), open_dataset(root, split="val")
    assert (len(train), len(val)) == (6, 2) and val.captions == [_caption(6), _caption(7)]


def test_imagefolder_trains_clip_then_embeds_and_trains_a_prior(tmp_path):
    """A user's imagefolder (caption column 'caption', a validation split) end to end: CLIP, embed, prior."""
    root = _imagefolder(tmp_path / "hf", column="caption", splits={"train": 12, "validation": 4})
    clip_run, emb, prior_run = tmp_path / "clip", tmp_path / "emb", tmp_path / "prior"
    assert main(["train", "clip", "--config", "configs/clip/tiny.yaml", "--out", str(clip_run),
                 "--set", f"data.path={root}", "--set", "data.caption_column=caption", "--set", "data.eval_items=4",
                 *[a for kv in TINY for a in ("--set", kv)]]) == 0
    encoder = clip_run / "final" / "encoder"
    assert main(["embed", "--encoder", str(encoder), "--data", str(root), "--out", str(emb),
                 "--caption-column", "caption", "--no-progress"]) == 0
    assert json.loads((emb / "embed.json").read_text())["counts"] == {"train": 12, "val": 4}
    captions = [row["caption"] for row in map(json.loads, (emb / "metadata" / "metadata_0000.jsonl").open())]
    assert captions[0] == _caption(0)
    assert main(["train", "prior", "--config", "configs/prior/tiny.yaml", "--out", str(prior_run),
                 "--set", f"data.path={emb}", "--set", f"data.encoder={encoder}", "--set", "sample.eval_items=4",
                 *[a for kv in TINY for a in ("--set", kv)]]) == 0
    assert (prior_run / "final" / "prior" / "model.safetensors").is_file()


# --- clip-retrieval ---------------------------------------------------------------------------
def _clip_retrieval(root, parts=(6, 6), parquet=True):
    """clip-retrieval inference output: img_emb/img_emb_{i}.npy, text_emb/text_emb_{i}.npy, metadata parquet."""
    image, text = _embeddings(sum(parts))
    for folder in ("img_emb", "text_emb", "metadata"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    start = 0
    for i, count in enumerate(parts):
        rows = slice(start, start + count)
        np.save(root / "img_emb" / f"img_emb_{i}.npy", image[rows].astype(np.float16))
        np.save(root / "text_emb" / f"text_emb_{i}.npy", text[rows].astype(np.float16))
        if parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            captions = [_caption(j) for j in range(start, start + count)]
            table = pa.table({"image_path": [f"{j}.jpg" for j in range(start, start + count)], "caption": captions})
            pq.write_table(table, root / "metadata" / f"metadata_{i}.parquet")
        start += count
    return root, image, text


def test_clip_retrieval_folder_reads_as_it_is(tmp_path):
    pytest.importorskip("pyarrow")
    root, image, text = _clip_retrieval(tmp_path / "cr")
    emb = open_embeddings(root, "train")
    assert len(emb) == 12 and emb.info["format"] == "clip-retrieval" and emb.info["embed_dim"] == D
    assert emb.captions[7] == _caption(7) and emb.metadata[7]["image_path"] == "7.jpg" and emb.normalized
    np.testing.assert_allclose(emb.stack("image_embed").numpy(), image.astype(np.float16), rtol=0, atol=0)
    assert emb.stack("text_tokens").shape == (12, 1, 1) and not emb.stack("text_mask").any()
    with pytest.raises(DataError, match="no 'val' split"):
        open_embeddings(root, "val")


def test_clip_retrieval_without_pyarrow_loads_the_embeddings_and_names_the_extra(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    root, _, _ = _clip_retrieval(tmp_path / "cr")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.warns(DataWarning, match=r"needs pyarrow: pip install 'unclip\[parquet\]'"):
        emb = open_embeddings(root)
    assert len(emb) == 12 and emb.captions[0] == ""


def test_clip_retrieval_without_text_embeddings_is_one_line(tmp_path):
    root, _, _ = _clip_retrieval(tmp_path / "cr", parquet=False)
    for path in (root / "text_emb").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="--enable_text True"):
        open_embeddings(root)


def test_prior_trains_on_a_clip_retrieval_folder(tmp_path):
    root, _, _ = _clip_retrieval(tmp_path / "cr", parquet="pyarrow" in sys.modules or _has("pyarrow"))
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert main(["train", "prior", "--config", "configs/prior/tiny.yaml", "--out", str(run),
                     "--set", f"data.path={root}", *[a for kv in TINY for a in ("--set", kv)]]) == 0
    from unclip.checkpoint import load_model

    prior = load_model(run / "final" / "prior" / "model.safetensors")
    assert prior.config.embed_dim == D and not prior.config.use_text_tokens


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --- shards: embeddings inside, brace patterns, pipe: and http:// URLs --------------------------
def _shards(root, n=8, per_shard=4, images=True, embeds=True):
    """shard-0000.tar, shard-0001.tar, ... with png, txt and the embeddings as .img_emb.npy/.text_emb.npy."""
    image, text = _embeddings(n)
    samples = [(f"{i:06d}", _png(i) if images else None, "png", _caption(i), {"i": i},
                {"img_emb.npy": _npy(image[i]), "text_emb.npy": _npy(text[i])} if embeds else {})
               for i in range(n)]
    return write_shards(samples, str(root / "shard-%04d.tar"), per_shard=per_shard), image


def test_shard_members_carry_embeddings(tmp_path):
    paths, image = _shards(tmp_path)
    ds = ShardDataset(str(tmp_path / "shard-{0000..0001}.tar"), image_size=16)
    items = list(ds)
    assert len(items) == 8 and items[3]["caption"] == _caption(3)
    np.testing.assert_allclose(items[3]["image_embed"].numpy(), image[3], atol=1e-3)
    from unclip.data import collate_samples

    batch = collate_samples(items[:4])
    assert batch["image_embed"].shape == (4, D) and batch["text_embed"].shape == (4, D)
    # DALLE2-pytorch's layout: the image embedding as the sample's .npy member
    write_shards([("a", _png(0), "png", "x", None, {"npy": _npy(image[0])})], str(tmp_path / "d2-%d.tar"))
    assert next(iter(ShardDataset(str(tmp_path / "d2-0.tar"))))["image_embed"].shape == (D,)


def test_pipe_urls_and_brace_patterns_through_webdataset(tmp_path):
    pytest.importorskip("webdataset")
    _shards(tmp_path)
    local = [item["caption"] for item in ShardDataset(str(tmp_path / "shard-{0000..0001}.tar"))]
    piped = ShardDataset(f"pipe:cat {tmp_path}/shard-{{0000..0001}}.tar")
    assert len(piped.shards) == 2 and [item["caption"] for item in piped] == local
    joined = open_dataset(f"pipe:cat {tmp_path}/shard-0000.tar::pipe:cat {tmp_path}/shard-0001.tar")
    assert [item["caption"] for item in joined] == local
    broken = ShardDataset(f"pipe:cat {tmp_path}/missing-{{0..1}}.tar::pipe:cat {tmp_path}/shard-0000.tar")
    with pytest.warns(DataWarning):
        assert len(list(broken)) == 4    # a failing command is a bad shard, counted, not a crash
    assert len(broken.bad) >= 2


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_urls_through_webdataset(tmp_path, http_root):
    pytest.importorskip("webdataset")
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("webdataset reads http:// with curl")
    _shards(tmp_path)
    items = list(open_dataset(f"{http_root}/shard-{{0000..0001}}.tar", image_size=16))
    assert len(items) == 8 and items[0]["image"].shape == (3, 16, 16) and items[0]["meta"]["shard"] == "shard-0000.tar"


def test_urls_without_webdataset_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(DataError, match=r"needs the webdataset package: pip install 'unclip\[webdataset\]'"):
        open_dataset(f"pipe:cat {tmp_path}/shard-0000.tar")
    _shards(tmp_path)
    assert len(list(open_dataset(str(tmp_path / "shard-{0000..0001}.tar")))) == 8   # local shards need nothing


def test_prior_trains_on_embeddings_inside_shards_read_through_a_pipe(tmp_path):
    pytest.importorskip("webdataset")
    _shards(tmp_path, n=12, images=False)
    spec = f"pipe:cat {tmp_path}/shard-{{0000..0002}}.tar"
    emb = open_embeddings(spec)
    assert len(emb) == 12 and emb.info["format"] == "webdataset" and emb.captions[5] == _caption(5)
    run = tmp_path / "run"
    assert main(["train", "prior", "--config", "configs/prior/tiny.yaml", "--out", str(run),
                 "--set", f"data.path={spec}", *[a for kv in TINY for a in ("--set", kv)]]) == 0
    assert (run / "final" / "prior" / "model.safetensors").is_file()


def test_shards_without_embeddings_are_a_clear_error_for_the_prior(tmp_path):
    _shards(tmp_path, embeds=False)
    with pytest.raises(DataError, match="no samples with both an image embedding"):
        open_embeddings(str(tmp_path / "shard-{0000..0001}.tar"))
