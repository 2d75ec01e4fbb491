"""Webdataset ``.tar`` shards in the img2dataset layout, streamed.

Each sample is a run of consecutive tar members sharing a key (the member path
up to the first dot of its file name): ``000123.jpg`` (or ``.png``/``.jpeg``/
``.webp``), ``000123.txt`` (caption) and ``000123.json`` (metadata). Shards are
read one member at a time with ``tarfile`` in stream mode, so memory stays flat
whatever the dataset size. Shards are divided between DataLoader workers (and
distributed ranks when torch.distributed is initialised).

A sample without ``.txt`` gets caption ``""`` and ``meta["has_caption"] = False``;
an empty or non-UTF-8 caption, a missing or undecodable image, or a truncated
shard is skipped and counted (``BadSamples``), never raised mid-epoch.

Embeddings stored inside shards come with the sample as float32 tensors: ``.npy`` or ``.img_emb.npy``
(the CLIP image embedding, DALLE2-pytorch's layout) → ``"image_embed"`` [D], ``.text_emb.npy`` →
``"text_embed"`` [D]. ``caption_key`` names the caption member (default ``txt``).

Local shards are read with the standard library. URLs (``pipe:cmd``, ``http(s)://``, ``file://``) are
opened, and their brace patterns expanded, by the ``webdataset`` package, an optional extra
(``pip install 'unclip[webdataset]'``); ``a::b`` joins several specs.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import tarfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from unclip.data.common import BadSamples, MissingSplit, decode_caption, decode_image
from unclip.errors import DataError

__all__ = ["ShardDataset", "expand_shards", "write_shards", "is_shard_spec", "is_url", "EMBED_KEYS"]

_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_URL = re.compile(r"^(pipe:|https?://|file://)")
# tar member extension → item key, for embeddings stored inside shards
EMBED_KEYS = {"npy": "image_embed", "img_emb.npy": "image_embed", "text_emb.npy": "text_embed"}
WEBDATASET_HINT = "pip install 'unclip[webdataset]'"


def is_url(spec: str) -> bool:
    """A shard spec the ``webdataset`` package opens: ``pipe:...``, ``http(s)://...``, ``file://...``."""
    return any(_URL.match(part) for part in str(spec).split("::"))


def is_shard_spec(spec: str) -> bool:
    """A ``.tar`` path, a brace pattern or a URL (a directory of shards is recognised by its contents)."""
    text = str(spec)
    return "{" in text or text.endswith(".tar") or is_url(text)


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise DataError(f"reading pipe:/http(s):// shard URLs needs the webdataset package: {WEBDATASET_HINT}") from None
    return webdataset


def expand_shards(spec: str, split: str = "train") -> list[Path | str]:
    """A ``.tar`` path, a ``name-{0000..0009}.tar`` pattern or a directory → sorted shard paths;
    a URL spec → its expanded URLs (strings)."""
    if is_url(spec):
        if split not in ("train", "all"):
            raise MissingSplit(f"shard URLs have no '{split}' split; give that split's URLs as the data path")
        urls = _webdataset().shardlists.expand_urls(spec)
        if not urls:
            raise DataError(f"no shards in {spec}")
        return urls
    match = _BRACE.search(spec)
    if match:
        first, last = match.group(1), match.group(2)
        width = len(first)
        names = [spec[: match.start()] + str(i).zfill(width) + spec[match.end():]
                 for i in range(int(first), int(last) + 1)]
        paths = [Path(n) for n in names]
    else:
        root = Path(spec)
        if root.is_dir():
            if split != "all" and (root / split).is_dir():
                paths = sorted((root / split).glob("*.tar"))
            elif split == "all":
                paths = sorted(root.rglob("*.tar"))
            elif split == "train":
                paths = sorted(root.glob("*.tar"))
            else:
                raise MissingSplit(f"{spec} has no '{split}' sub-folder of shards; use split='train' or add one")
        else:
            paths = [root]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"shard not found: {missing[0]} ({len(missing)} of {len(paths)} missing)")
    if not paths:
        raise DataError(f"no .tar shards in {spec}")
    return paths


class ShardDataset(IterableDataset):
    """Streams samples ``{"image", "caption", "meta"}`` from webdataset shards."""

    def __init__(self, spec: str | Path, split: str = "train", image_size: int | None = None, *,
                 shuffle_buffer: int = 0, seed: int = 0, caption_key: str = "txt", decode_images: bool = True):
        if split not in ("train", "val", "test", "all"):
            raise DataError(f"unknown split {split!r}; choose train, val, test or all")
        self.shards = expand_shards(str(spec), split)
        self.image_size = image_size
        self.caption_key = caption_key.lstrip(".").lower()
        self.decode_images = decode_images  # False: embeddings and captions only (the prior reads shards so)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        self.bad = BadSamples(str(spec))

    def set_epoch(self, epoch: int) -> None:
        """Change the shard order / shuffle of the next pass (with ``shuffle_buffer`` > 0)."""
        self.epoch = epoch

    def _my_shards(self) -> list[Path]:
        shards = list(self.shards)
        if self.shuffle_buffer > 0:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(shards)
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return shards[rank * workers + worker:: world * workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = (s for shard in self._my_shards() for s in self._read_shard(shard))
        if self.shuffle_buffer <= 0:
            yield from stream
        else:
            yield from _shuffled(stream, self.shuffle_buffer, random.Random(f"{self.seed}:{self.epoch}:buffer"))
        self.bad.report(" in this pass")

    def _read_shard(self, shard: Path | str) -> Iterator[dict[str, Any]]:
        key, group = None, {}
        try:
            with _open_shard(shard) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = member.name
                    base = name.rsplit("/", 1)[-1]
                    if "." not in base or base.startswith("."):
                        continue
                    prefix = name[: len(name) - len(base)]
                    member_key, ext = prefix + base.split(".", 1)[0], base.split(".", 1)[1].lower()
                    if member_key != key and group:
                        yield from self._sample(shard, key, group)
                        group = {}
                    key = member_key
                    handle = tar.extractfile(member)
                    group[ext] = handle.read() if handle is not None else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.bad.add(shard, f"unreadable or truncated shard ({type(exc).__name__}); rest of shard skipped")
            self.bad.report_sparsely()
            return
        if group:
            yield from self._sample(shard, key, group)

    def _sample(self, shard: Path | str, key: str, group: dict[str, bytes]) -> Iterator[dict[str, Any]]:
        name = shard_name(shard)
        where = f"{name}:{key}"
        has_caption = self.caption_key in group
        try:
            image_ext = next((e for e in _IMAGE_KEYS if e in group), None)
            image = None
            if self.decode_images:
                if image_ext is None:
                    raise DataError("no image")
                image = decode_image(group[image_ext], self.image_size)
            caption = decode_caption(group[self.caption_key]) if has_caption else ""
            embeds = {item_key: _decode_npy(group[ext]) for ext, item_key in EMBED_KEYS.items() if ext in group}
        except DataError as exc:
            self.bad.add(where, str(exc))
            self.bad.report_sparsely()
            return
        meta: dict[str, Any] = {}
        if "json" in group:
            try:
                loaded = json.loads(group["json"].decode("utf-8"))
                meta = loaded if isinstance(loaded, dict) else {"json": loaded}
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
        item = {"image": image, "caption": caption,
                "meta": meta | {"key": key, "shard": name, "has_caption": has_caption}}
        yield item | embeds


def shard_name(shard: Path | str) -> str:
    """A shard's file name (the last part of a path or URL; a pipe: command as given)."""
    if isinstance(shard, Path):
        return shard.name
    return shard if shard.startswith("pipe:") else shard.rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def _open_shard(shard: Path | str) -> Iterator[tarfile.TarFile]:
    """A stream-mode tar reader of a local shard, or of a URL opened by ``webdataset.gopen`` (closing the
    stream checks a ``pipe:`` command's exit status: a failed command is an OSError, a bad shard)."""
    if isinstance(shard, Path):
        with tarfile.open(shard, mode="r|*") as tar:
            yield tar
        return
    stream = _webdataset().gopen(shard, "rb")
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            yield tar
    finally:
        stream.close()


def _decode_npy(data: bytes) -> torch.Tensor:
    """A ``.npy`` member → float32 tensor (one row: [D]); no pickles."""
    import io

    import numpy as np

    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise DataError("unreadable .npy member") from None
    if array.dtype.kind not in "fiu" or array.size == 0:
        raise DataError(f"a .npy embedding must hold numbers, got dtype {array.dtype}")
    return torch.from_numpy(np.asarray(array, dtype=np.float32).reshape(-1).copy())


def _shuffled(stream: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buffer: list[dict] = []
    for item in stream:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = rng.randrange(size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def write_shards(samples, out_pattern: str, per_shard: int = 1000) -> list[Path]:
    """Write ``(key, image_bytes, ext, caption, meta)`` tuples to shards ``out_pattern % shard_index``;
    a sixth element ``{extension: bytes}`` adds members (e.g. ``{"img_emb.npy": ...}``); ``image_bytes``
    None writes no image.

    A small helper for tests and for exporting a built dataset; it writes the
    img2dataset layout with plain ``tarfile``.
    """
    import io

    paths: list[Path] = []
    tar = None
    for count, sample in enumerate(samples):
        if count % per_shard == 0:
            if tar is not None:
                tar.close()
            paths.append(Path(out_pattern % len(paths)))
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            tar = tarfile.open(paths[-1], "w")
        key, image_bytes, ext, caption, meta, *more = sample
        members = [(ext, image_bytes)] if image_bytes is not None else []
        if caption is not None:
            members.append(("txt", caption.encode("utf-8") if isinstance(caption, str) else caption))
        if meta is not None:
            members.append(("json", json.dumps(meta).encode("utf-8")))
        members += list(more[0].items()) if more else []
        for suffix, data in members:
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if tar is not None:
        tar.close()
    return paths
