"""Open-vocabulary Mask R-CNN: losses, vocabulary swap, regions, grid embeddings, export."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from xpl.errors import XPLError
from xpl.model.backbones import build_backbone
from xpl.model.checkpoint import export_model, load_model, load_pretrained_parts
from xpl.model.detector import OpenVocabMaskRCNN, grid_boxes, map_cells, mirror_boxes
from xpl.model.heads import weighted_fastrcnn_loss

D = 16
SIZE = 64
LOSS_NAMES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def make_model(**kwargs) -> OpenVocabMaskRCNN:
    torch.manual_seed(0)
    model = OpenVocabMaskRCNN(embed_dim=D, image_size=SIZE, **kwargs)
    model.set_class_embeddings(vocabulary(4))
    return model


def vocabulary(c: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(c)
    return F.normalize(torch.randn(c, D, generator=g), dim=1)


def batch(size: int = SIZE) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images with hand-made boxes, labels and rectangle masks."""
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, size, size, generator=g) for _ in range(2)]
    boxes = [
        torch.tensor([[4.0, 6.0, 30.0, 28.0], [34.0, 30.0, 60.0, 62.0]]),
        torch.tensor([[10.0, 10.0, 50.0, 40.0]]),
    ]
    targets = []
    for b, labels in zip(boxes, [torch.tensor([1, 3]), torch.tensor([4])]):
        masks = torch.zeros(len(b), size, size, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, b.int().tolist()):
            m[y0:y1, x0:x1] = 1
        targets.append({"boxes": b, "labels": labels, "masks": masks})
    return images, targets


def test_train_forward_gives_finite_losses_and_gradients():
    model = make_model()
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == LOSS_NAMES
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.v2l.proj.weight.grad.abs().sum() > 0


# Recorded with torch 2.14.1 / torchvision 0.29.1 on CPU (1 and 2 threads agree to 1e-7).
GOLDEN = {
    "loss_classifier": 1.6083061,
    "loss_box_reg": 0.0042868,
    "loss_mask": 1.3656752,
    "loss_objectness": 0.6943934,
    "loss_rpn_box_reg": 0.0009024,
}


def test_golden_losses():
    """Seeded forward of the tiny model: a refactor must not silently change the math."""
    model = make_model()
    images, targets = batch()
    torch.manual_seed(2)  # proposal sampling
    losses = {k: v.item() for k, v in model(images, targets).items()}
    assert set(GOLDEN) == LOSS_NAMES
    for name, value in GOLDEN.items():
        assert losses[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_bf16_weights_keep_box_math_and_losses_in_fp32():
    model = make_model().to(torch.bfloat16)
    images, targets = batch()  # fp32 images: the model casts them
    torch.manual_seed(2)
    losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_classifier"].item() == pytest.approx(GOLDEN["loss_classifier"], rel=0.02)
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert detections[0]["boxes"].dtype == torch.float32 and len(detections[0]["boxes"]) > 0
    assert model.regions(images)[0].embeddings.dtype == torch.float32


def test_weighted_fastrcnn_loss_matches_hand_computation():
    logits = [[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [1.0, 1.0, 1.0], [-0.5, 2.0, 0.0]]
    labels = [0, 2, 1, 0]
    deltas = [[0.1, -0.2, 0.3, 0.0], [0.5, 0.05, -0.1, 0.2], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    targets = [[0.0, 0.0, 0.0, 0.0], [0.4, 0.0, 0.0, 0.0], [0.2, -0.01, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]
    bg_weight = 0.2

    def ce(row, y):
        return math.log(sum(math.exp(x) for x in row)) - row[y]

    def smooth_l1(x, beta=1 / 9):
        return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta

    weights = [bg_weight if y == 0 else 1.0 for y in labels]
    expected_cls = sum(w * ce(r, y) for w, r, y in zip(weights, logits, labels)) / sum(weights)
    expected_box = sum(
        smooth_l1(d - t) for dr, tr, y in zip(deltas, targets, labels) if y > 0 for d, t in zip(dr, tr)
    ) / len(labels)

    cls, box = weighted_fastrcnn_loss(
        torch.tensor(logits),
        torch.tensor(deltas),
        [torch.tensor(labels[:2]), torch.tensor(labels[2:])],
        [torch.tensor(targets[:2]), torch.tensor(targets[2:])],
        bg_weight=bg_weight,
    )
    assert cls.item() == pytest.approx(expected_cls, rel=1e-6)
    assert box.item() == pytest.approx(expected_box, rel=1e-6)
    unweighted, _ = weighted_fastrcnn_loss(
        torch.tensor(logits), torch.tensor(deltas), [torch.tensor(labels)], [torch.tensor(targets)], bg_weight=1.0
    )
    assert unweighted.item() == pytest.approx(F.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item())


def test_unannotated_classes_compete_on_annotated_objects_only():
    logits = [[2.0, 0.5, -1.0, 0.7], [0.1, 0.3, 0.2, 1.5]]  # classes 0 (background), 1, 2, 3
    labels = [0, 2]

    def ce(row, y):
        return math.log(sum(math.exp(x) for x in row)) - row[y]

    # class 3 may lie unannotated in the image: the background RoI's softmax leaves it out
    expected = (0.2 * ce(logits[0][:3], 0) + ce(logits[1], 2)) / 1.2
    zeros = torch.zeros(2, 4)
    cls, _ = weighted_fastrcnn_loss(torch.tensor(logits), zeros, [torch.tensor(labels)], [zeros], bg_weight=0.2,
                                    unannotated=torch.tensor([False, False, False, True]))
    assert cls.item() == pytest.approx(expected, rel=1e-6)


def test_bg_weight_reaches_the_model_loss():
    images, targets = batch()
    values = []
    for bg_weight in (0.2, 1.0):
        model = make_model(bg_weight=bg_weight)
        torch.manual_seed(2)
        values.append(model(images, targets)["loss_classifier"].item())
    assert values[0] != pytest.approx(values[1])


@pytest.mark.parametrize("num_classes", [3, 5])
def test_any_vocabulary_at_inference(num_classes):
    model = make_model().eval()
    model.set_class_embeddings(vocabulary(num_classes))
    images, _ = batch()
    with torch.no_grad():
        detections = model(images)
        logits, deltas = model.roi_heads.box_predictor(torch.randn(7, 256))
    assert logits.shape == (7, num_classes + 1) and deltas.shape == (7, 4)
    assert torch.equal(logits[:, 0], torch.zeros(7))
    for det in detections:
        n = len(det["boxes"])
        assert 0 < n <= 10
        assert det["labels"].min() >= 1 and det["labels"].max() <= num_classes
        assert det["masks"].shape == (n, 1, SIZE, SIZE)


def test_classifying_without_vocabulary_is_an_error():
    model = OpenVocabMaskRCNN(embed_dim=D, image_size=SIZE).eval()
    with pytest.raises(RuntimeError, match="set_class_embeddings"):
        model(batch()[0])
    with pytest.raises(ValueError, match="class embeddings must be"):
        model.set_class_embeddings(torch.zeros(3, D + 1))


def test_regions_are_in_original_image_coordinates():
    model = make_model().eval()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 96, 144, generator=g), torch.rand(3, SIZE, SIZE, generator=g)]
    regions = model.regions(images, max_regions=20, nms_thresh=0.6)
    for reg, img in zip(regions, images):
        h, w = img.shape[-2:]
        r = len(reg.boxes)
        assert 0 < r <= 20
        assert reg.image_size == (h, w)
        assert reg.embeddings.shape == (r, D) and reg.scores.shape == (r,)
        assert reg.mask_probs.shape[0] == r and reg.mask_probs.shape[1] == reg.mask_probs.shape[2]
        assert reg.mask_probs.min() >= 0 and reg.mask_probs.max() <= 1
        assert (reg.scores >= 0).all() and (reg.scores <= 1).all()
        assert (reg.boxes >= 0).all() and (reg.boxes[:, 2] <= w).all() and (reg.boxes[:, 3] <= h).all()
        assert (reg.boxes[:, 2:] > reg.boxes[:, :2]).all()
    # The 96x144 image is resized to 43x64 inside: boxes must come back scaled up.
    assert regions[0].boxes[:, 2].max() > SIZE
    with pytest.raises(RuntimeError, match="eval"):
        model.train().regions(images)


def test_the_mask_head_on_chosen_boxes_gives_the_masks_regions_computes_for_all():
    model = make_model().eval()
    g = torch.Generator().manual_seed(4)
    images = [torch.rand(3, 96, 144, generator=g), torch.rand(3, SIZE, SIZE, generator=g),
              torch.rand(3, SIZE, SIZE, generator=g)]
    eager = model.regions(images, max_regions=20, nms_thresh=0.6)
    lazy = model.regions(images, max_regions=20, nms_thresh=0.6, masks=False)
    assert all(r.mask_probs is None for r in lazy) and len(lazy[1].boxes) >= 4
    for a, b in zip(eager, lazy):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.embeddings, b.embeddings)
        torch.testing.assert_close(b.masks_in(b.boxes), a.mask_probs, atol=1e-5, rtol=0)
    # one call for requests on several images, two on one image, none on the third, in request order
    batch = lazy[0].masks_in.batch
    got = batch([(1, lazy[1].boxes[2:4]), (0, lazy[0].boxes), (1, lazy[1].boxes[:2])])
    for probs, want in zip(got, [eager[1].mask_probs[2:4], eager[0].mask_probs, eager[1].mask_probs[:2]]):
        torch.testing.assert_close(probs, want, atol=1e-5, rtol=0)


def test_mirror_boxes_known_values_and_twice_is_the_identity():
    boxes = torch.tensor([[10.0, 2.0, 30.0, 8.0], [0.0, 0.0, 100.0, 50.0]])
    assert mirror_boxes(boxes, 100.0).tolist() == [[70.0, 2.0, 90.0, 8.0], [0.0, 0.0, 100.0, 50.0]]
    assert torch.equal(mirror_boxes(mirror_boxes(boxes, 64.0), 64.0), boxes)


def test_flip_averages_each_region_embedding_and_mask_with_its_mirror_on_the_mirrored_image():
    model = make_model().eval()
    g = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 96, 144, generator=g), torch.rand(3, SIZE, SIZE, generator=g)]
    plain = model.regions(images, max_regions=20, nms_thresh=0.6)
    flipped = model.regions(images, max_regions=20, nms_thresh=0.6, flip=True)
    lazy = model.regions(images, max_regions=20, nms_thresh=0.6, flip=True, masks=False)
    for a, b, c, img in zip(plain, flipped, lazy, images):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
        mirrored = mirror_boxes(a.boxes, img.shape[-1])
        embedding = model.box_embeddings(img.flip(-1), mirrored).float()
        torch.testing.assert_close(b.embeddings, (a.embeddings + embedding) / 2, atol=1e-4, rtol=0)
        assert not torch.allclose(a.embeddings, b.embeddings, atol=1e-3)
        mask = model.regions([img.flip(-1)], masks=False)[0].masks_in(mirrored).flip(-1)
        torch.testing.assert_close(b.mask_probs, (a.mask_probs + mask) / 2, atol=1e-5, rtol=0)
        torch.testing.assert_close(c.masks_in(c.boxes), b.mask_probs, atol=1e-5, rtol=0)


def test_grid_embeddings_shape_and_gradients():
    model = make_model()
    images, _ = batch()
    emb, valid = model.grid_embeddings(images, grid=4, max_cells=10, generator=torch.Generator().manual_seed(0))
    assert emb.shape == (2, 10, D) and bool(valid.all())
    assert model.grid_embeddings(images, grid=3)[0].shape == (2, 9, D)
    emb.square().sum().backward()
    assert model.backbone.stem[0][0].weight.grad.abs().sum() > 0
    assert model.v2l.proj.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_head.fc6.weight.grad.abs().sum() > 0


def test_grid_zero_grounds_every_cell_of_the_last_map():
    model = make_model()
    wide, tall = torch.rand(3, 48, 64), torch.rand(3, 64, 32)  # resized to 48x64 and 64x32 of a 64x64 padded batch
    emb, valid = model.grid_embeddings([wide, tall], grid=0, max_cells=100)
    assert valid.sum(1).tolist() == [12, 8] and emb.shape == (2, 12, D)  # the last tiny map is stride 16
    assert emb[1, 8:].abs().sum() == 0
    few, valid = model.grid_embeddings([wide], grid=0, max_cells=5, generator=torch.Generator().manual_seed(0))
    assert few.shape == (1, 5, D) and bool(valid.all())


def test_map_cells_cover_the_image_cut_at_its_border():
    cells = map_cells(40, 50, 32)
    expected = [[0, 0, 32, 32], [32, 0, 50, 32], [0, 32, 32, 40], [32, 32, 50, 40]]
    torch.testing.assert_close(cells, torch.tensor(expected, dtype=torch.float32))


def test_grid_boxes_tile_the_image():
    cells = grid_boxes(40, 60, 2)
    expected = [[0, 0, 30, 20], [30, 0, 60, 20], [0, 20, 30, 40], [30, 20, 60, 40]]
    torch.testing.assert_close(cells, torch.tensor(expected, dtype=torch.float32))


def test_freeze_named_parts():
    r50 = OpenVocabMaskRCNN(embed_dim=D, image_size=64, backbone="r50_fpn")
    r50.freeze(["stem", "res2", "rpn"])
    frozen = {n for n, p in r50.named_parameters() if not p.requires_grad}
    assert "backbone.body.conv1.weight" in frozen and "backbone.body.layer1.0.conv1.weight" in frozen
    assert "rpn.head.conv.0.0.weight" in frozen and "backbone.body.layer2.0.conv1.weight" not in frozen
    assert not any(n.startswith(("roi_heads", "backbone.fpn")) for n in frozen)
    with pytest.raises(XPLError, match="unknown part.*'res2'.*tiny"):
        make_model().freeze(["res2"])
    model = make_model()
    model.freeze(["v2l"])
    assert not any(p.requires_grad for p in model.v2l.parameters())
    images, targets = batch()
    sum(model(images, targets).values()).backward()
    assert all(p.grad is None for p in model.v2l.parameters())
    assert model.roi_heads.box_head.fc7.weight.grad is not None


def test_export_load_round_trip(tmp_path):
    model = make_model().eval()
    path = export_model(model, tmp_path / "model.pt")
    loaded = load_model(path)
    assert loaded.kwargs == model.kwargs
    torch.testing.assert_close(loaded.class_embeddings, model.class_embeddings)
    images, _ = batch()
    with torch.no_grad():
        for a, b in zip(model(images), loaded(images)):
            for key in ("boxes", "labels", "scores", "masks"):
                assert torch.equal(a[key], b[key]), key
    for a, b in zip(model.regions(images), loaded.regions(images)):
        assert torch.equal(a.embeddings, b.embeddings) and torch.equal(a.boxes, b.boxes)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(XPLError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(XPLError, match="garbage.pt"):
        load_model(bad)
    truncated = tmp_path / "truncated.pt"
    export_model(make_model(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(XPLError, match="truncated.pt"):
        load_model(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("just words\n")
    with pytest.raises(XPLError, match=r"notes.txt: not an xpl model file, or a corrupt one") as err:
        load_model(text)
    assert "\n" not in str(err.value)


def test_load_pretrained_parts_loads_all_or_fails_naming_the_keys(tmp_path):
    source = make_model()
    export_model(source, tmp_path / "pre.pt")
    torch.manual_seed(5)
    target = OpenVocabMaskRCNN(embed_dim=D, image_size=SIZE)
    before = {k: v.clone() for k, v in target.state_dict().items()}

    state = dict(source.state_dict())
    state["extra.weight"] = torch.zeros(1)
    state["roi_heads.box_predictor.bbox_pred.weight"] = torch.zeros(1, 1)
    with pytest.raises(XPLError) as err:
        load_pretrained_parts(target, state)
    message = str(err.value)
    assert "roi_heads.box_predictor.bbox_pred.weight [1, 1] vs [4, 256]" in message and "extra.weight" in message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items()), "nothing may be loaded"

    other = export_model(OpenVocabMaskRCNN(embed_dim=D, image_size=SIZE, representation_size=32), tmp_path / "o.pt")
    with pytest.raises(XPLError, match="o.pt: weights do not fit this model.*box_head.fc6.weight"):
        load_pretrained_parts(target, other)

    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("roi_heads.mask_")}
    with pytest.raises(XPLError, match="missing from the file: roi_heads.mask_head"):
        load_pretrained_parts(target, partial)
    report = load_pretrained_parts(target, partial, allow_missing=("roi_heads.mask_",))
    assert report.missing and all(k.startswith("roi_heads.mask_") for k in report.missing)
    assert torch.equal(target.v2l.proj.weight, source.v2l.proj.weight)
    assert load_pretrained_parts(target, tmp_path / "pre.pt").missing == []


def test_ddp_state_loads_with_weights_only_and_refuses_other_pickles(tmp_path):
    from xpl.train.ddp import load_state, save_state
    from xpl.train.schedule import lr_scheduler

    def parts(seed):
        torch.manual_seed(seed)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        return model, optimizer, lr_scheduler(optimizer, schedule="cosine", total_steps=10, warmup_steps=2,
                                              warmup_factor=0.0)

    model, optimizer, scheduler = parts(0)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    save_state(tmp_path / "state.pt", "step00000001", model, optimizer, scheduler)
    again = parts(1)
    assert load_state(tmp_path / "state.pt", *again) == "step00000001"
    assert torch.equal(again[0].weight, model.weight) and again[2].last_epoch == scheduler.last_epoch
    torch.save({"tag": "x", "model": XPLError("not a tensor")}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_state(tmp_path / "evil.pt", *parts(2))


def test_r50_loads_local_imagenet_weights_with_frozen_bn(tmp_path):
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    network, anchors, pool = build_backbone("r50_fpn", pretrained_path=str(path))
    body = network.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    torch.testing.assert_close(body.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert body.conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad  # stages freeze parts
    assert network.out_channels == 256 and len(anchors.sizes) == 5 and pool.featmap_names == ["0", "1", "2", "3"]
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(XPLError, match="resnet50.pth"):
        build_backbone("r50_fpn", pretrained_path=str(path))


def test_backbone_errors():
    with pytest.raises(XPLError, match="unknown backbone"):
        build_backbone("vgg")
    with pytest.raises(XPLError, match="not found"):
        build_backbone("r50_fpn", pretrained_path="/nonexistent/resnet50.pth")
