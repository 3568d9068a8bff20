"""COCO images + captions json -> caption shards in the img2dataset layout (`xpl make-shards`).

Every image with at least one caption becomes one sample: `<key>.jpg` (the file's bytes,
unchanged; `.png` etc. for other files), `<key>.txt` (all captions of the image, one per line)
and `<key>.json` (url, caption, captions, key, status, width, height, COCO image id, file name).
Beside each `NNNNN.tar` come `NNNNN_stats.json` and `NNNNN.parquet`, as img2dataset writes them;
the readers ignore them.
Shards are written to a temporary name and renamed, so an interrupted run leaves no partial tar.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from xpl.data.tar_writer import AtomicTar
from xpl.errors import DataError
from xpl.jsonfile import read_json


def _load_captions(path: Path) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    data = read_json(path, "captions json")
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise DataError(f"{path}: expected a COCO captions json with 'images' and 'annotations'")
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        text = str(ann.get("caption", "")).strip()
        if text:
            captions[ann["image_id"]].append(text)
    return sorted(data["images"], key=lambda im: im["id"]), captions


def write_shard(out: Path, shard: int, samples: list[dict[str, Any]]) -> None:
    """`out/NNNNN.tar` with its `.parquet` and `_stats.json`, as img2dataset writes them. Each sample has
    `key`, `suffix` (of the image), `image` (bytes) and `meta` (the `.json`, whose `captions` list becomes
    the `.txt`, one per line)."""
    name = f"{shard:05d}"
    with AtomicTar(out / f"{name}.tar") as tar:
        for s in samples:
            tar.write(s["key"], {s["suffix"]: s["image"], "json": json.dumps(s["meta"]).encode(),
                                 "txt": "\n".join(s["meta"]["captions"]).encode()})
    columns = ("key", "url", "caption", "status", "width", "height")
    pq.write_table(pa.Table.from_pylist([{k: s["meta"][k] for k in columns} for s in samples]), out / f"{name}.parquet")
    stats = {"count": len(samples), "successes": len(samples), "failed_to_download": 0, "failed_to_resize": 0,
             "status_dict": {"success": len(samples)}}
    (out / f"{name}_stats.json").write_text(json.dumps(stats, indent=1))


def make_coco_caption_shards(images: Path, captions: Path, out: Path, *, shard_size: int = 1000,
                             limit: Optional[int] = None) -> dict[str, Any]:
    """Write shards of COCO `images` (a folder) with their `captions` (captions_*.json) into `out`.

    Returns counts: samples written, shards, images without captions and caption images whose file
    is missing from the folder (both skipped). `limit` keeps the first images (by id).
    """
    images, captions, out = Path(images), Path(captions), Path(out)
    if not images.is_dir():
        raise DataError(f"{images}: image folder not found")
    if shard_size < 1:
        raise DataError(f"shard_size must be at least 1, got {shard_size}")
    entries, by_image = _load_captions(captions)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"samples": 0, "shards": 0, "no_caption": 0, "missing_file": 0}
    batch: list[dict[str, Any]] = []
    for entry in entries[:limit] if limit is not None else entries:
        texts = by_image.get(entry["id"], [])
        if not texts:
            counts["no_caption"] += 1
            continue
        path = images / entry["file_name"]
        if not path.is_file():
            counts["missing_file"] += 1
            continue
        key = f"{counts['samples']:09d}"
        meta = {"url": entry.get("coco_url") or entry["file_name"], "caption": texts[0], "captions": texts,
                "key": key, "status": "success", "error_message": None, "width": entry.get("width"),
                "height": entry.get("height"), "original_width": entry.get("width"),
                "original_height": entry.get("height"), "image_id": entry["id"], "file_name": entry["file_name"]}
        suffix = path.suffix.lower().lstrip(".") or "jpg"
        batch.append({"key": key, "suffix": suffix, "image": path.read_bytes(), "meta": meta})
        counts["samples"] += 1
        if len(batch) == shard_size:
            write_shard(out, counts["shards"], batch)
            counts["shards"] += 1
            batch = []
    if batch:
        write_shard(out, counts["shards"], batch)
        counts["shards"] += 1
    return {**counts, "out": str(out), "pattern": str(out / f"{{00000..{max(0, counts['shards'] - 1):05d}}}.tar")}
