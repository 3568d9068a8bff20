"""Image-caption pairs from img2dataset WebDataset shards, for caption pretraining.

Bad samples (undecodable image, missing or empty caption, unreadable shard) are
skipped, logged with their key and reason, and counted in `CaptionSamples.skipped`:
a stream never loses data silently.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import braceexpand
import fsspec
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from webdataset.tariterators import group_by_keys, tar_file_expander

from xpl.errors import DataError

log = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


def expand_urls(spec: str | list[str]) -> list[str]:
    """Shard URLs from a brace pattern ('dir/{00000..00003}.tar'), a glob, a folder, or a list of those.

    Remote URLs (s3://, gs://, ...) have their braces expanded and are kept as they are.
    Local globs and folders keep only shard files (img2dataset writes *_stats.json and
    *.parquet beside the tars); a local pattern that matches nothing raises DataError.
    """
    if not isinstance(spec, str):
        return [url for item in spec for url in expand_urls(item)]
    urls: list[str] = []
    for url in braceexpand.braceexpand(spec):
        if "://" in url and not url.startswith("file://"):
            urls.append(url)
            continue
        path = url.removeprefix("file://")
        if os.path.isdir(path):
            matches = sorted(str(p) for p in Path(path).iterdir() if p.name.endswith(SHARD_SUFFIXES))
        elif glob.has_magic(path):
            matches = sorted(p for p in glob.glob(path) if p.endswith(SHARD_SUFFIXES))
        else:
            matches = [path] if os.path.isfile(path) else []
        if not matches:
            raise DataError(f"no shards found for {url!r} (from {spec!r})")
        urls.extend(matches)
    return urls


class CaptionSamples:
    """An iterable of `{"key", "image", "caption"}` dicts from shards; see `iter_caption_samples`.

    After (or during) iteration, `skipped` counts dropped samples by reason ("bad_shard"
    counts shards cut short or unreadable, whose remaining samples are lost), `bad_shards`
    lists those shards and `yielded` counts delivered samples. All restart with each iteration.
    """

    def __init__(self, urls: list[str], *, rank: int, world_size: int, image_size: int | None,
                 shuffle: int, seed: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.urls, self.rank, self.world_size = urls, rank, world_size
        self.image_size, self.shuffle, self.seed = image_size, shuffle, seed
        self.skipped: Counter[str] = Counter()
        self.bad_shards: list[str] = []
        self.yielded = 0
        self._current_url = ""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped, self.bad_shards, self.yielded = Counter(), [], 0
        rank, world_size = self._partition()
        by_shard = len(self.urls) >= world_size
        urls = self.urls[rank::world_size] if by_shard else self.urls
        rng = random.Random(self.seed)
        if self.shuffle:
            urls = rng.sample(urls, len(urls))
        samples = self._decoded(urls, None if by_shard else (rank, world_size))
        yield from _shuffled(samples, self.shuffle, rng) if self.shuffle else samples

    def _partition(self) -> tuple[int, int]:
        """This reader's slot among all ranks x DataLoader workers, so no sample is read twice."""
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            return self.rank, self.world_size
        return self.rank * worker.num_workers + worker.id, self.world_size * worker.num_workers

    def _decoded(self, urls: list[str], by_index: tuple[int, int] | None) -> Iterator[dict[str, Any]]:
        files = tar_file_expander(self._streams(urls), handler=self._shard_error)
        for index, sample in enumerate(group_by_keys(files, handler=self._shard_error)):
            if by_index is not None and index % by_index[1] != by_index[0]:
                continue
            decoded = self._decode(sample)
            if decoded is not None:
                self.yielded += 1
                yield decoded

    def _streams(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        """Open shards one at a time; each is checked for truncation and closed once it is read."""
        for url in urls:
            self._current_url = url
            try:
                stream = _open(url)
            except OSError as exc:
                self._bad_shard(url, exc)
                continue
            with stream:
                yield {"url": url, "stream": stream}
                if url.endswith(".tar") and not _ends_cleanly(stream):
                    self._bad_shard(url, "truncated (no end-of-archive blocks)")

    def _decode(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        key = sample["__key__"]
        image_bytes = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
        if image_bytes is None:
            return self._skip(key, "missing_image")
        if "txt" not in sample:
            return self._skip(key, "missing_caption")
        try:
            caption = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            return self._skip(key, "bad_caption")
        if not caption:
            return self._skip(key, "empty_caption")
        try:
            with Image.open(io.BytesIO(image_bytes)) as img:
                img = img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return self._skip(key, "bad_image")
        if self.image_size is not None:
            img = _resize_longer_side(img, self.image_size)
        image = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)
        return {"key": os.path.basename(key), "image": image, "caption": caption}

    def _skip(self, key: str, reason: str) -> None:
        self.skipped[reason] += 1
        log.warning("skipping caption sample %s: %s", key, reason)

    def _shard_error(self, exc: Exception) -> bool:
        """webdataset's error handler: the current shard is unreadable from here on; go on with the next."""
        self._bad_shard(self._current_url, exc)
        return True

    def _bad_shard(self, url: str, problem: object) -> None:
        if url not in self.bad_shards:
            self.bad_shards.append(url)
            self.skipped["bad_shard"] += 1
        log.warning("shard %s: %s; skipping the rest of it", url, problem)


def iter_caption_samples(urls: str | list[str], *, rank: int = 0, world_size: int = 1, image_size: int | None = None,
                         shuffle: int = 0, seed: int = 0) -> CaptionSamples:
    """Caption samples for one rank: `{"key": str, "image": float CHW in [0, 1], "caption": str}`.

    Rank r reads shards r, r + world_size, ...; with fewer shards than ranks every rank
    reads all shards and keeps samples r, r + world_size, ... instead. `image_size` resizes
    so the longer side has that many pixels. `shuffle` > 0 shuffles the shard order and
    the samples in a buffer of that size, seeded by `seed`.
    """
    return CaptionSamples(expand_urls(urls), rank=rank, world_size=world_size, image_size=image_size,
                          shuffle=shuffle, seed=seed)


def _open(url: str) -> Any:
    """Open a shard for streaming: local paths directly, remote URLs through fsspec."""
    if "://" in url:
        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def _ends_cleanly(stream: Any) -> bool:
    """Whether a tar ends with its two zero blocks: Python's tarfile silently stops at a
    truncated header, so a shard cut short (interrupted copy) would otherwise lose samples unseen."""
    try:
        size = stream.seek(0, os.SEEK_END)
        if size % 512 or size < 1024:
            return False
        stream.seek(size - 1024)
        return stream.read(1024) == bytes(1024)
    except (OSError, io.UnsupportedOperation):
        return True  # not seekable: nothing to check with


def _resize_longer_side(img: Image.Image, size: int) -> Image.Image:
    scale = size / max(img.size)
    if scale == 1:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)


def _shuffled(samples: Iterator[dict[str, Any]], buffer_size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Shuffle a stream through a buffer of `buffer_size` samples, deterministic for a given seed."""
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= buffer_size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer
