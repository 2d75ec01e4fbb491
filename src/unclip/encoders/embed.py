"""Embed a dataset once so the prior trains without touching images.

``embed_to_shards`` encodes every item of the chosen splits with an encoder
and writes the shard layout of ``unclip.encoders.shards`` (clip-retrieval
style: fp16 ``.npy`` arrays plus jsonl metadata). Rows are numbered over the
splits in order; shard ``i`` holds rows ``[i*S, (i+1)*S)``. A shard is listed
in ``embed.json`` only once all its files are written, so re-running the same
command skips finished shards and continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from unclip.encoders.shards import ShardRows, new_info, read_info, write_info, write_shard
from unclip.encoders.stats import save_embed_stats, stats_from_embeddings
from unclip.errors import DataError, UnclipError

__all__ = ["embed_to_shards", "open_splits", "SPLITS"]

SPLITS = ("train", "val", "test")


def open_splits(data: str | Path, splits: Sequence[str], image_size: int, *,
                caption_column: str | None = None) -> dict[str, Any]:
    """``{split: dataset}`` for the requested splits; with ``all``, the splits that exist.
    ``caption_column``: the caption column of an ``imagefolder``'s metadata (``unclip.data.folder``)."""
    from unclip.data import open_dataset

    wanted = list(SPLITS) if list(splits) == ["all"] else list(splits)
    opened = {}
    for split in wanted:
        try:
            opened[split] = open_dataset(data, split=split, image_size=image_size, caption_column=caption_column)
        except DataError:
            if list(splits) != ["all"]:
                raise
    if not opened:
        raise DataError(f"{data} has no items in splits {', '.join(wanted)}")
    return opened


def _row_meta(item: dict[str, Any], split: str) -> dict[str, Any]:
    meta = dict(item.get("meta") or {})
    image = str(meta.pop("path", ""))
    meta.pop("split", None)
    return {"caption": item["caption"], "split": split, "image": image, "meta": meta}


@torch.no_grad()
def _encode_rows(encoder, items: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
    captions = [it["caption"] for it in items]
    image_embed = encoder.encode_image(torch.stack([it["image"] for it in items]))   # [B, D]
    text = encoder.encode_text(captions)                                           # [B, D], [B, L, Dt], [B, L]
    return image_embed.float().cpu(), text.embed.float().cpu(), text.tokens.float().cpu(), text.mask.cpu()


def _check_resumable(info: dict[str, Any], fresh: dict[str, Any], out: Path) -> None:
    for key in ("encoder", "source", "shard_size", "splits", "counts", "embed_dim", "max_len"):
        if info.get(key) != fresh.get(key):
            raise UnclipError(f"{out} holds embeddings made with a different {key} ({info.get(key)!r} vs "
                              f"{fresh.get(key)!r}); pass --overwrite or choose another --out")


def embed_to_shards(encoder, data: str | Path, out: str | Path, *, encoder_path: str = "",
                    splits: Sequence[str] = ("all",), batch_size: int = 64, shard_size: int = 4096,
                    overwrite: bool = False, progress: bool = True,
                    caption_column: str | None = None) -> dict[str, Any]:
    """Encode ``data`` into ``out`` (resumable); returns the final ``embed.json`` contents.

    Also writes ``out/embed_stats.safetensors`` (per-dimension mean/std of the
    training rows, or of all rows when there is no train split).
    """
    if batch_size < 1 or shard_size < 1:
        raise UnclipError("--batch-size and --shard-size must be >= 1")
    out = Path(out)
    datasets = open_splits(data, splits, encoder.image_size, caption_column=caption_column)
    rows = [(split, i) for split, ds in datasets.items() for i in range(len(ds))]   # global row order
    fresh = new_info(encoder=encoder_path, source=str(Path(data).resolve()), embed_dim=encoder.embed_dim,
                     token_dim=encoder.token_dim, max_len=encoder.max_len, shard_size=shard_size,
                     normalized=encoder.normalized, splits=list(datasets),
                     counts={s: len(ds) for s, ds in datasets.items()})
    if (out / "embed.json").is_file() and not overwrite:
        info = read_info(out)
        _check_resumable(info, fresh, out)
    else:
        info = fresh
        out.mkdir(parents=True, exist_ok=True)
        write_info(out, info)
    done = set(info["finished_shards"])
    todo = [i for i in range(info["num_shards"]) if i not in done]
    bar = tqdm(total=len(rows), initial=min(len(rows), len(done) * shard_size), unit="img",
               desc="embed", disable=not progress)
    for shard in todo:
        chunk = rows[shard * shard_size:(shard + 1) * shard_size]
        parts, metadata = [], []
        for start in range(0, len(chunk), batch_size):
            items = [datasets[s][i] for s, i in chunk[start:start + batch_size]]
            parts.append(_encode_rows(encoder, items))
            metadata += [_row_meta(it, s) for it, (s, _) in zip(items, chunk[start:start + batch_size])]
            bar.update(len(items))
        arrays = [torch.cat(p).numpy() for p in zip(*parts)]
        write_shard(out, shard, ShardRows(*arrays, metadata=metadata))
        info["finished_shards"] = sorted(set(info["finished_shards"]) | {shard})
        write_info(out, info)
    bar.close()
    _write_stats(out, info)
    info["complete"] = True
    write_info(out, info)
    return info


def _write_stats(out: Path, info: dict[str, Any]) -> None:
    from unclip.encoders.shards import open_embeddings

    split = "train" if "train" in info["splits"] else None
    data = open_embeddings(out, split=split)
    save_embed_stats(out, stats_from_embeddings([data.stack("image_embed")], [data.stack("text_embed")]))
