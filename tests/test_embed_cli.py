"""ClipStage (loss, export) and `unclip embed` on a tiny shapes dataset built in the test."""

import json

import numpy as np
import pytest
import torch

from unclip.cli import main
from unclip.config import load_config
from unclip.data import DatasetWriter, render_shape
from unclip.encoders import load_embed_stats, load_encoder
from unclip.encoders.clip import clip_loss
from unclip.encoders.shards import open_embeddings, read_info
from unclip.train.stages.clip import ClipStage, ClipStageConfig

SPECS = [("circle", "red", "top left", "small"), ("square", "blue", "center", "large"),
         ("star", "green", "bottom right", "small"), ("heart", "black", "top right", "large")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    with DatasetWriter(root, name="shapes", image_size=16, build={"test": True}) as writer:
        for i in range(14):
            shape, color, position, size = SPECS[i % 4]
            caption = f"a {size} {color} {shape} in the {position}"
            split = "train" if i < 10 else ("val" if i < 12 else "test")
            writer.add(render_shape(shape, color, position, size, 16), caption, split,
                       {"shape": shape, "color": color, "position": position, "size": size})
    return root


def tiny_stage(data_dir, backend="clip") -> ClipStage:
    config = load_config(ClipStageConfig, "configs/clip/tiny.yaml",
                         [f"data.path={data_dir}", f"backend={backend}", "data.eval_items=4"])
    return ClipStage(config)


def test_clip_loss_matches_cross_entropy_reference():
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    loss, _ = clip_loss(image, text, torch.tensor(10.0))
    logits = 10.0 * image @ text.t()
    labels = torch.arange(5)
    reference = (torch.nn.functional.cross_entropy(logits, labels)
                 + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    assert torch.allclose(loss, reference, atol=1e-6)
    same = torch.eye(5, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True                      # rows 0 and 1 share a caption
    dup, _ = clip_loss(image, text, torch.tensor(10.0), same)
    assert not torch.allclose(dup, loss)


def test_stage_trains_and_exports(data_dir, tmp_path):
    stage = tiny_stage(data_dir)
    torch.manual_seed(0)
    model = stage.build_model()
    stage.setup(torch.device("cpu"))
    train = stage.build_dataset("train")
    batch = stage.collate([train[i] for i in range(8)])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss, logs = stage.loss(model, batch, torch.Generator())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first - 0.3 and "acc_i2t" in logs
    # the tokenizer is trained deterministically from the training captions
    assert tiny_stage(data_dir).tokenizer().tokenizer.to_str() == stage.tokenizer().tokenizer.to_str()
    path = stage.export(model, tmp_path / "final")
    assert path == tmp_path / "final" / "encoder" and (path / "tokenizer.json").is_file()
    stats = load_embed_stats(path)
    assert stats["image_mean"].shape == (16,) and (stats["text_std"] > 0).all()
    metrics = stage.evaluate(model, tmp_path, 15)
    assert 0 <= metrics["t2i_r1_all"] <= 1 and "zeroshot_color" in metrics
    encoder = load_encoder(path)
    assert torch.allclose(encoder.encode_text(["a small red circle in the top left"]).embed,
                          model.encode_text(["a small red circle in the top left"]).embed, atol=1e-5)


def test_embed_cli_writes_resumable_shards(data_dir, tmp_path, capsys):
    stage = tiny_stage(data_dir)
    torch.manual_seed(0)
    encoder_dir = stage.export(stage.build_model(), tmp_path / "final")
    out = tmp_path / "emb"
    args = ["embed", "--encoder", str(encoder_dir), "--data", str(data_dir), "--out", str(out),
            "--shard-size", "4", "--batch-size", "3", "--no-progress"]
    assert main(args) == 0
    info = read_info(out)
    assert info["counts"] == {"train": 10, "val": 2, "test": 2} and info["finished_shards"] == [0, 1, 2, 3]
    assert np.load(out / "img_emb" / "img_emb_0000.npy").dtype == np.float16
    assert np.load(out / "text_tokens" / "text_tokens_0003.npy").shape == (2, 16, 32)
    row = json.loads((out / "metadata" / "metadata_0000.jsonl").read_text().splitlines()[0])
    assert row["split"] == "train" and row["image"] == "images/000000.png" and row["meta"]["shape"] == "circle"
    data = open_embeddings(out, split="test")
    assert len(data) == 2 and data[0]["caption"] == "a small red circle in the top left"
    encoder = load_encoder(encoder_dir)
    expected = encoder.encode_text(["a small red circle in the top left"]).embed[0]
    assert torch.allclose(data[0]["text_embed"], expected, atol=2e-3)
    # resume: delete one finished shard from embed.json, re-run, only that one is rewritten
    mtime = (out / "img_emb" / "img_emb_0000.npy").stat().st_mtime_ns
    info["finished_shards"] = [0, 1, 2]
    (out / "embed.json").write_text(json.dumps(info))
    (out / "img_emb" / "img_emb_0003.npy").unlink()
    assert main(args) == 0
    assert read_info(out)["finished_shards"] == [0, 1, 2, 3] and (out / "img_emb" / "img_emb_0003.npy").is_file()
    assert (out / "img_emb" / "img_emb_0000.npy").stat().st_mtime_ns == mtime
    # a different shard size cannot silently mix with the old shards
    assert main([a if a != "4" else "5" for a in args]) == 2
    assert "different shard_size" in capsys.readouterr().err


def test_embed_cli_errors(tmp_path, capsys):
    assert main(["embed", "--encoder", str(tmp_path / "none"), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "encoder directory not found" in capsys.readouterr().err
    assert main(["embed", "--encoder", "x", "--data", "y", "--out", "z", "--split", "bogus"]) == 2


def test_retrieval_module_cli(data_dir, tmp_path, capsys):
    from unclip.eval.retrieval import main as retrieval_main

    stage = tiny_stage(data_dir)
    torch.manual_seed(0)
    encoder_dir = stage.export(stage.build_model(), tmp_path / "final")
    out = tmp_path / "metrics.json"
    assert retrieval_main(["--encoder", str(encoder_dir), "--data", str(data_dir), "--split", "train",
                           "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 10 and metrics["unique_captions"] == 4 and "zeroshot_position" in metrics
    assert retrieval_main(["--encoder", str(tmp_path / "missing"), "--data", str(data_dir)]) == 2
    assert "encoder directory not found" in capsys.readouterr().err
