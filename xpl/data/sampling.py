"""What each Ray Train rank trains on at each step: index batches of a map-style dataset and batches of
caption samples streamed from shards, both resumable at a step."""

from __future__ import annotations

import logging
import random
from typing import Any, Iterator

import torch

from xpl.data.captions import iter_caption_samples
from xpl.errors import DataError

log = logging.getLogger(__name__)


def rank_batches(n_items: int, batch_size: int, rank: int, world_size: int, start_step: int,
                 seed: int) -> Iterator[list[int]]:
    """Index batches for one rank: a seeded permutation per epoch, ranks interleaved, resumable at a step."""
    per_rank = n_items // world_size
    if per_rank < batch_size:
        raise ValueError(f"{n_items} items cannot fill batch_size={batch_size} on each of {world_size} workers")
    steps_per_epoch = per_rank // batch_size
    step = start_step
    while True:
        epoch, offset = divmod(step, steps_per_epoch)
        order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        mine = order[rank::world_size][:per_rank]
        yield mine[offset * batch_size : (offset + 1) * batch_size]
        step += 1


def one_caption(text: str, rng: random.Random) -> str:
    """One caption of a `.txt` that may hold several, one per line (`xpl make-shards` writes all five of a COCO
    image's): a different one may be drawn at every step, as each caption describes the whole image."""
    return rng.choice([line.strip() for line in text.splitlines() if line.strip()])


def caption_batches(urls: str | list[str], batch_size: int, *, rank: int, world_size: int, image_size: int,
                    start_step: int, seed: int, shuffle: int = 256,
                    pseudo: bool = False) -> Iterator[list[dict[str, Any]]]:
    """Endless batches of caption samples (`{"key", "image", "caption"}`) for one rank, epoch after epoch,
    shuffled with a seed that depends on the step a run (re)starts at and the epoch. Each sample's caption is
    one line of its `.txt`, drawn anew each time the sample comes round (`one_caption`). `pseudo`: samples of
    pseudo-labeled shards, with their targets (`iter_caption_samples`). Each pass's skipped samples are
    logged with their reasons.

    Raises DataError when a whole pass over the rank's shards cannot fill one batch.
    """
    epoch = 0
    while True:
        epoch_seed = seed + 1000 * start_step + epoch
        samples = iter_caption_samples(urls, rank=rank, world_size=world_size, image_size=image_size,
                                       shuffle=shuffle, seed=epoch_seed, pseudo=pseudo)
        rng = random.Random(f"captions/{epoch_seed}/{rank}")
        batch: list[dict[str, Any]] = []
        yielded = 0
        for sample in samples:
            batch.append({**sample, "caption": one_caption(sample["caption"], rng)})
            if len(batch) == batch_size:
                yield batch
                batch, yielded = [], yielded + 1
        if samples.skipped:
            log.warning("rank %d, pass %d over %s: %d samples read, skipped %s", rank, epoch, urls, samples.yielded,
                        dict(samples.skipped))
        if yielded == 0:
            raise DataError(f"{urls}: rank {rank} got fewer than batch_size={batch_size} readable caption "
                            f"samples (skipped: {dict(samples.skipped)})")
        epoch += 1
