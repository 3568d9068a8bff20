"""Reading COCO instances and caption shards: formats, rank splits, and loud failures."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xpl.data import rle
from xpl.data.captions import expand_urls, iter_caption_samples
from xpl.data.coco import CocoInstances
from xpl.data.shapes import synthesize
from xpl.errors import DataError

SIZE = 64
BASE_IDS = list(range(1, 9))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return synthesize(tmp_path_factory.mktemp("world"), seed=0, train_images=10, val_images=8, caption_images=24,
                      shard_size=6, image_size=SIZE)


def _write_json(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _jpeg(width: int = 20, height: int = 10) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


# --- COCO ------------------------------------------------------------------------------------------


def test_rle_round_trip_and_other_segmentation_forms() -> None:
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:6] = True
    encoded = rle.encode(mask)
    assert encoded == {"size": [5, 7], "counts": ";23000004"}
    assert rle.area(encoded) == 8 and rle.bbox_xywh(encoded) == [2.0, 1.0, 4.0, 2.0]
    assert np.array_equal(rle.decode(encoded, 5, 7), mask)
    uncompressed = {"size": [5, 7], "counts": [11, 2, 3, 2, 3, 2, 3, 2, 7]}  # column-major runs
    assert np.array_equal(rle.decode(uncompressed, 5, 7), mask)
    assert rle.decode([[2, 1, 6, 1, 6, 3, 2, 3]], 5, 7)[1:3, 2:6].all()


def test_coco_instances_gives_torchvision_targets(world: dict) -> None:
    dataset = CocoInstances(world["val_json"])
    content = json.loads(Path(world["val_json"]).read_text())
    assert len(dataset) == 8 and dataset.image_ids == list(range(1, 9))
    assert dataset.category_ids == sorted({a["category_id"] for a in content["annotations"]})
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
    assert 0 <= image.min() and image.max() <= 1
    anns = [a for a in content["annotations"] if a["image_id"] == 1]
    n = len(anns)
    assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
    assert target["masks"].shape == (n, SIZE, SIZE) and target["masks"].dtype == torch.uint8
    assert target["labels"].dtype == torch.int64 and target["image_id"] == 1
    assert target["labels"].tolist() == [1 + dataset.category_ids.index(a["category_id"]) for a in anns]
    for box, mask, ann in zip(target["boxes"], target["masks"], anns):
        ys, xs = np.nonzero(mask.numpy())
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert np.array_equal(mask.numpy().astype(bool), rle.decode(ann["segmentation"], SIZE, SIZE))


def test_category_ids_select_and_renumber_labels(world: dict) -> None:
    dataset = CocoInstances(world["val_json"], category_ids=[9, 3])  # heart -> 1, triangle -> 2
    content = json.loads(Path(world["val_json"]).read_text())
    wanted = [a for a in content["annotations"] if a["category_id"] in (9, 3)]
    labels = torch.cat([dataset[i][1]["labels"] for i in range(len(dataset))]).tolist()
    assert sorted(labels) == sorted(1 if a["category_id"] == 9 else 2 for a in wanted)
    train = CocoInstances(world["train_json"])
    assert set(train.category_ids) <= set(BASE_IDS)


def test_crowd_degenerate_and_empty_images(tmp_path: Path) -> None:
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "b.png")
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:5] = True
    seg = rle.encode(mask)
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "segmentation": seg, "bbox": [2, 1, 3, 2], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "segmentation": seg, "bbox": [2, 1, 3, 2], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 5, "segmentation": seg, "bbox": [2, 1, 0.5, 2], "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 7, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
             "bbox": [0, 0, 4, 4], "iscrowd": 0}]
    path = _write_json(tmp_path / "instances.json", {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6},
                   {"id": 2, "file_name": "b.png", "width": 8, "height": 6}],
        "annotations": anns, "categories": [{"id": 5, "name": "x"}, {"id": 7, "name": "y"}]})
    dataset = CocoInstances(path, image_dir=tmp_path)
    _, target = dataset[0]
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[2, 1, 5, 3], [0, 0, 4, 4]]
    assert target["masks"][1].sum() > 0  # polygons decode too
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["masks"].shape == (0, 6, 8)


def test_missing_json_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="instances_nowhere.json: file not found"):
        CocoInstances(tmp_path / "instances_nowhere.json")


def test_json_without_annotations_names_file_and_key(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "instances_train.json", {"images": [], "categories": []})
    with pytest.raises(DataError, match="instances_train.json: missing key 'annotations'"):
        CocoInstances(path, image_dir=tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json: file is not valid JSON"):
        CocoInstances(tmp_path / "broken.json", image_dir=tmp_path)


def test_missing_or_unreadable_image_raises_data_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = _write_json(tmp_path / "instances.json", {
        "images": [{"id": 1, "file_name": "gone.png", "width": 4, "height": 4},
                   {"id": 2, "file_name": "bad.png", "width": 4, "height": 4}],
        "annotations": [], "categories": []})
    with pytest.raises(DataError, match="no 'info.image_dir'"):
        CocoInstances(path)
    dataset = CocoInstances(path, image_dir=tmp_path)
    with pytest.raises(DataError, match="gone.png: image not found"):
        dataset[0]
    with pytest.raises(DataError, match="bad.png: cannot read image"):
        dataset[1]


# --- caption shards --------------------------------------------------------------------------------


def test_expand_urls_handles_braces_globs_folders_and_remote(world: dict, tmp_path: Path) -> None:
    folder = Path(world["caption_shards"][0]).parent
    shards = [str(folder / f"{i:05d}.tar") for i in range(4)]
    (folder / "00000_stats.json").write_text("{}")
    (folder / "00000.parquet").write_bytes(b"")
    assert expand_urls(f"{folder}/{{00000..00003}}.tar") == shards
    assert expand_urls(f"{folder}/*") == shards
    assert expand_urls(str(folder)) == shards
    assert expand_urls([shards[2], f"{folder}/0000[01].tar"]) == [shards[2], shards[0], shards[1]]
    assert expand_urls("s3://bucket/cc3m/{00000..00002}.tar") == [
        "s3://bucket/cc3m/00000.tar", "s3://bucket/cc3m/00001.tar", "s3://bucket/cc3m/00002.tar"]
    with pytest.raises(DataError, match=r"missing/\{0\.\.3\}\.tar"):
        expand_urls(f"{tmp_path}/missing/{{0..3}}.tar")


def test_caption_samples_split_across_ranks(world: dict) -> None:
    pattern = str(Path(world["caption_shards"][0]).parent / "{00000..00003}.tar")
    everything = list(iter_caption_samples(pattern))
    keys = [s["key"] for s in everything]
    assert keys == [f"{i:09d}" for i in range(24)]
    first = everything[0]
    assert first["image"].shape == (3, SIZE, SIZE) and first["image"].dtype == torch.float32
    with tarfile.open(world["caption_shards"][0]) as tar:
        assert first["caption"] == tar.extractfile("000000000.txt").read().decode()
    for world_size in (2, 5):  # 4 shards: split by shard, then by sample index
        seen = [[s["key"] for s in iter_caption_samples(pattern, rank=r, world_size=world_size)]
                for r in range(world_size)]
        assert all(seen)
        assert sorted(k for ks in seen for k in ks) == keys
    halves = [{s["key"] for s in iter_caption_samples(pattern, rank=r, world_size=2)} for r in range(2)]
    assert halves[0].isdisjoint(halves[1])
    assert halves[0] == {f"{i:09d}" for i in (*range(0, 6), *range(12, 18))}


def test_resize_and_shuffle(world: dict) -> None:
    pattern = world["caption_shards"]
    small = next(iter(iter_caption_samples(pattern, image_size=32)))
    assert small["image"].shape == (3, 32, 32)
    order = [s["key"] for s in iter_caption_samples(pattern, shuffle=8, seed=1)]
    assert order == [s["key"] for s in iter_caption_samples(pattern, shuffle=8, seed=1)]
    assert order != sorted(order) and sorted(order) == [f"{i:09d}" for i in range(24)]


def test_bad_samples_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = _jpeg()
    shard = _tar(tmp_path / "00000.tar", {
        "000000000.jpg": good, "000000000.txt": b"a red star",
        "000000001.jpg": good[: len(good) // 3], "000000001.txt": b"a cut image",
        "000000002.jpg": b"\xff\xd8garbage", "000000002.txt": b"not an image",
        "000000003.jpg": good, "000000003.json": b"{}",
        "000000004.jpg": good, "000000004.txt": b"  \n",
        "000000005.txt": b"no image at all",
        "000000006.jpg": good, "000000006.txt": b"a wide one",
    })
    samples = iter_caption_samples(str(shard), image_size=10)
    with caplog.at_level(logging.WARNING, logger="xpl.data.captions"):
        kept = list(samples)
    assert [s["key"] for s in kept] == ["000000000", "000000006"]
    assert kept[0]["caption"] == "a red star" and kept[0]["image"].shape == (3, 5, 10)
    assert samples.yielded == 2
    assert samples.skipped == {"corrupt_image": 2, "missing_caption": 1, "empty_caption": 1, "missing_image": 1}
    assert "000000003: missing_caption" in caplog.text


@pytest.mark.parametrize("where", ["in_data", "in_header"])
def test_truncated_shard_is_counted(world: dict, tmp_path: Path, where: str) -> None:
    source = world["caption_shards"][0]
    with tarfile.open(source) as tar:
        member = tar.getmember("000000002.jpg")
    cut = member.offset_data + member.size // 2 if where == "in_data" else member.offset_data - 100
    broken = tmp_path / "00000.tar"
    broken.write_bytes(Path(source).read_bytes()[:cut])
    samples = iter_caption_samples([str(broken), world["caption_shards"][1]])
    keys = [s["key"] for s in samples]
    assert samples.skipped == {"truncated_tar": 1} and samples.bad_shards == [str(broken)]
    assert keys == ["000000000", "000000001", *(f"{i:09d}" for i in range(6, 12))]


def test_a_cut_shard_on_a_non_seekable_stream_is_counted(world: dict, stream_shard) -> None:
    """An object-store stream cannot seek to the end blocks: the reader must check them while streaming."""
    data = Path(world["caption_shards"][0]).read_bytes()
    with tarfile.open(world["caption_shards"][0]) as tar:
        cut = tar.getmember("000000003.jpg").offset  # at a member boundary: tarfile itself sees no damage
    url = stream_shard("00000.tar", data[:cut])
    samples = iter_caption_samples(url)
    assert [s["key"] for s in samples] == [f"{i:09d}" for i in range(3)]
    assert samples.skipped == {"truncated_tar": 1} and samples.bad_shards == [url]


def test_a_dropped_connection_is_counted_and_the_stream_goes_on(world: dict, stream_shard) -> None:
    data = Path(world["caption_shards"][0]).read_bytes()
    dropped = stream_shard("00000.tar", data, fail_after=len(data) // 2)
    samples = iter_caption_samples([dropped, world["caption_shards"][1]])
    keys = [s["key"] for s in samples]
    assert samples.skipped == {"read_error": 1} and samples.bad_shards == [dropped]
    assert keys[-6:] == [f"{i:09d}" for i in range(6, 12)] and len(keys) < 12


def test_shard_reader_keys_follow_webdataset_without_loading_torch() -> None:
    """The reader runs in every Ray Data read task: it splits names by webdataset's `base_plus_ext` rule
    without importing webdataset, which would load torch into each of those processes."""
    import subprocess
    import sys

    from webdataset.tariterators import base_plus_ext

    from xpl.data.tar_records import split_name

    for name in ("000000001.jpg", "dir/000123.pseudo.json", "a.b/c.txt", "README", ".hidden", "k.", "x/y"):
        key, suffix = base_plus_ext(name)
        assert split_name(name) == (key, suffix or ""), name
    probe = ("import sys, xpl.data.tar_records, xpl.data.caption_sample, xpl.pseudo.decode; "
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False", out.stderr[-1000:]


def test_decoded_images_are_as_displayed_when_exif_turns_them() -> None:
    from xpl.data.caption_sample import decode_image

    stored = np.zeros((40, 80, 3), dtype=np.uint8)  # 80 wide, 40 high as stored; a white left quarter
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # display turned 90 degrees clockwise: 40 wide, 80 high, the white band on top
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", quality=95, exif=exif)
    pixels, width, height, reason = decode_image(buffer.getvalue(), max_pixels=10**6, image_size=0)
    assert (width, height, reason) == (40, 80, None) and pixels.shape == (80, 40, 3)
    assert pixels[:16].mean() > 240 and pixels[24:].mean() < 15
    small, width, height, _ = decode_image(buffer.getvalue(), max_pixels=10**6, image_size=20)
    assert (width, height) == (40, 80) and small.shape == (20, 10, 3)
