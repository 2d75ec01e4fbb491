"""Embedding shards: write, read back, split filter, errors."""

import json

import numpy as np
import pytest
import torch

from unclip.encoders.shards import open_embeddings, read_info, shard_paths, write_embedding_shards
from unclip.errors import DataError


def _write(tmp_path, n=10, shard_size=4):
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)
    tokens = torch.randn(n, 5, 6, generator=g)
    mask = torch.arange(5)[None, :] < torch.randint(1, 6, (n,), generator=g)[:, None]
    captions = [f"caption {i}" for i in range(n)]
    splits = ["train"] * (n - 3) + ["test"] * 3
    root = write_embedding_shards(tmp_path / "emb", image_embed=image, text_embed=text, text_tokens=tokens,
                                  text_mask=mask, captions=captions, splits=splits,
                                  metas=[{"i": i} for i in range(n)], shard_size=shard_size, encoder="enc")
    return root, image, text, tokens, mask


def test_round_trip_layout_and_dtypes(tmp_path):
    root, image, text, tokens, mask = _write(tmp_path)
    info = read_info(root)
    assert info["finished_shards"] == [0, 1, 2] and info["counts"] == {"train": 7, "test": 3}
    assert (info["embed_dim"], info["token_dim"], info["max_len"]) == (8, 6, 5)
    paths = shard_paths(root, 1)
    assert paths["img_emb"].name == "img_emb_0001.npy" and np.load(paths["img_emb"]).dtype == np.float16
    assert np.load(paths["text_mask"]).dtype == bool
    assert np.load(paths["text_tokens"]).shape == (4, 5, 6)
    rows = [json.loads(l) for l in paths["metadata"].read_text().splitlines()]
    assert rows[0]["caption"] == "caption 4" and set(rows[0]) == {"caption", "split", "image", "meta"}

    data = open_embeddings(root)
    assert len(data) == 10
    item = data[5]
    assert item["image_embed"].dtype == torch.float32 and item["text_mask"].dtype == torch.bool
    assert torch.allclose(item["image_embed"], image[5], atol=1e-3)
    assert torch.allclose(item["text_tokens"], tokens[5], atol=1e-2)
    assert torch.equal(item["text_mask"], mask[5])
    assert item["caption"] == "caption 5" and item["meta"] == {"i": 5}
    assert torch.allclose(data.stack("text_embed"), text, atol=1e-3)


def test_split_filter(tmp_path):
    root, image, *_ = _write(tmp_path)
    test = open_embeddings(root, split="test")
    assert len(test) == 3 and test.captions == ["caption 7", "caption 8", "caption 9"]
    assert torch.allclose(test.stack("image_embed"), image[7:], atol=1e-3)
    with pytest.raises(DataError, match="split 'val'"):
        open_embeddings(root, split="val")


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="unclip embed"):
        open_embeddings(tmp_path / "nothing")
