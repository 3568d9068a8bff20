"""Image-caption pairs from img2dataset WebDataset shards, for caption pretraining and the teacher, and
pseudo-labeled caption samples (with their `pseudo.json` targets) for the student.

Bad samples (undecodable image, missing or empty caption, damaged or unreadable shard) are
skipped, logged with their key and reason, and counted in `CaptionSamples.skipped`, with the
reason names pseudo-labeling uses: a stream never loses data silently.
"""

from __future__ import annotations

import glob
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import braceexpand
import torch

from xpl.data.caption_sample import check_sample
from xpl.data.pseudo_sample import check_pseudo
from xpl.data.tar_records import (READ_ERROR, SHARD_KEY, TAIL_KEY, TRUNCATED, TarRecord, iter_tar_records,
                                  open_shard)
from xpl.errors import DataError

log = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


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

    Shards are read with the shared reader (`xpl.data.tar_records`) and samples checked with the
    shared check (`xpl.data.caption_sample`), so the reasons are those of pseudo-labeling. After (or
    during) iteration, `skipped` counts dropped records by reason (a shard cut short counts one
    `truncated_tar`, its remaining samples being lost; a shard that cannot be read counts one
    `read_error`), `bad_shards` lists the shards with such damage and `yielded` counts delivered
    samples. All restart with each iteration. With `pseudo`, each sample also carries `"pseudo"`
    (`xpl.data.pseudo_sample.PseudoTargets` at the decoded image's size) and samples whose pseudo.json is
    missing, malformed or without instances are skipped and counted under those reasons.
    """

    def __init__(self, urls: list[str], *, rank: int, world_size: int, image_size: int | None,
                 shuffle: int, seed: int, pseudo: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.urls, self.rank, self.world_size = urls, rank, world_size
        self.image_size, self.shuffle, self.seed, self.pseudo = image_size, shuffle, seed, pseudo
        self.skipped: Counter[str] = Counter()
        self.bad_shards: list[str] = []
        self.yielded = 0

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
        records = ((url, record) for url in urls for record in self._records(url))
        for index, (url, record) in enumerate(records):
            if by_index is not None and index % by_index[1] != by_index[0]:
                continue
            if record.error is not None:
                self._skip(url, record.key, record.error)
                continue
            checked = check_sample(record.members, image_size=self.image_size or 0)
            if checked.reason is not None:
                self._skip(url, record.key, checked.reason)
                continue
            sample = {"key": os.path.basename(record.key), "caption": checked.caption}
            if self.pseudo:
                height, width = checked.pixels.shape[:2]
                sample["pseudo"], reason = check_pseudo(record.members, width, height)
                if reason is not None:
                    self._skip(url, record.key, reason)
                    continue
            self.yielded += 1
            sample["image"] = torch.tensor(checked.pixels, dtype=torch.float32).permute(2, 0, 1).div_(255)
            yield sample

    def _records(self, url: str) -> Iterator[TarRecord]:
        """The shard's records; an I/O error ends the shard as one `read_error` record (training streams
        go on with the next shard, counting the loss)."""
        try:
            with open_shard(url) as stream:
                yield from iter_tar_records(stream)
        except OSError as exc:
            yield TarRecord(SHARD_KEY, error=f"{READ_ERROR}: {type(exc).__name__}: {exc}")

    def _skip(self, url: str, key: str, reason: str) -> None:
        kind = reason.split(":", 1)[0]
        self.skipped[kind] += 1
        if key in (SHARD_KEY, TAIL_KEY) or kind == TRUNCATED:
            if url not in self.bad_shards:
                self.bad_shards.append(url)
            log.warning("shard %s: %s; the rest of it is lost", url, reason)
        else:
            log.warning("skipping caption sample %s: %s", key, reason)


def iter_caption_samples(urls: str | list[str], *, rank: int = 0, world_size: int = 1, image_size: int | None = None,
                         shuffle: int = 0, seed: int = 0, pseudo: bool = False) -> CaptionSamples:
    """Caption samples for one rank: `{"key": str, "image": float CHW in [0, 1], "caption": str}`.

    Rank r reads shards r, r + world_size, ...; with fewer shards than ranks every rank
    reads all shards and keeps samples r, r + world_size, ... instead. `image_size` shrinks
    larger images so the longer side has that many pixels. `shuffle` > 0 shuffles the shard order and
    the samples in a buffer of that size, seeded by `seed`. `pseudo`: read pseudo-labeled shards (see
    `CaptionSamples`).
    """
    return CaptionSamples(expand_urls(urls), rank=rank, world_size=world_size, image_size=image_size,
                          shuffle=shuffle, seed=seed, pseudo=pseudo)


def _shuffled(samples: Iterator[dict[str, Any]], buffer_size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Shuffle a stream through a buffer of `buffer_size` samples, deterministic for a given seed."""
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= buffer_size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer
