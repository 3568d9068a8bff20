"""Open-vocabulary Mask R-CNN: torchvision's Mask R-CNN with a V2L classifier.

One model class serves every stage: caption pretraining (`grid_embeddings`),
the teacher and the student (`forward`, torchvision conventions) and
pseudo-labeling (`regions`). The vocabulary is not part of the weights: set it
with `set_class_embeddings` (any C) before classifying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from xpl.errors import XPLError
from xpl.model.backbones import BACKBONE_PARTS, Fp32MultiScaleRoIAlign, build_backbone, resolve_norm
from xpl.model.heads import Fp32RPNHead, OpenVocabRoIHeads, V2LPredictor
from xpl.model.roi_pool import roi_align
from xpl.model.v2l import V2L

_MASK_HEAD_DEPTH = {"tiny": 2, "r50_fpn": 4}
# Parts of the detector a stage may freeze by name (`OpenVocabMaskRCNN.freeze`): parameter-name prefixes.
MODEL_PARTS = {
    "backbone": ("backbone.",),
    "rpn": ("rpn.",),
    "box_head": ("roi_heads.box_head.",),
    "v2l": ("roi_heads.box_predictor.v2l.",),
    "box_regression": ("roi_heads.box_predictor.bbox_pred.",),
    "mask_head": ("roi_heads.mask_head.", "roi_heads.mask_predictor."),
}


@dataclass
class Regions:
    """One image's candidate regions for pseudo-labeling.

    boxes: [R, 4] xyxy in original image pixels. embeddings: [R, D] V2L
    embeddings of the refined boxes. scores: [R] RPN objectness probability of
    the proposal each box was refined from (vocabulary-free, unlike
    1 - p(background), which depends on the class list). mask_probs: [R, M, M]
    class-agnostic mask probabilities inside each box, not pasted (None when
    `regions(masks=False)` left them to `masks_in`). image_size: (H, W) of the
    original image. masks_in: the mask head on other boxes of this image ([K, 4]
    original pixels -> [K, M, M] probabilities), e.g. a chosen box grown until
    its object fits (`xpl.pseudo.choice.grow_selections`); its `batch` runs
    requests for several images of the same `regions()` call at once.
    """

    boxes: torch.Tensor
    embeddings: torch.Tensor
    scores: torch.Tensor
    mask_probs: Optional[torch.Tensor]
    image_size: tuple[int, int]
    masks_in: Optional["ImageMasks"] = None


class BatchMasks:
    """The mask head on the images of one `regions()` call, for boxes in their original pixels: one
    call runs the requests (image index, [K, 4] boxes) of any of its images, so choosing and growing
    boxes for a whole batch costs one mask-head pass per step, not one per image. With the mirrored
    images' features (`regions(flip=True)`) each mask is averaged with its mirror image's."""

    def __init__(self, model: "OpenVocabMaskRCNN", features: dict[str, torch.Tensor], sizes: list[tuple[int, int]],
                 originals: list[tuple[int, int]], mirrored: Optional[dict[str, torch.Tensor]] = None) -> None:
        self.heads, self.features, self.sizes, self.originals = model.roi_heads, features, sizes, originals
        self.mirrored = mirrored

    @torch.no_grad()
    def probabilities(self, boxes: list[torch.Tensor]) -> torch.Tensor:
        """[sum K_i, M, M] mask probabilities of each image's boxes (transformed-image coordinates)."""
        probs = self.heads.mask_logits(self.features, boxes, self.sizes).float().sigmoid()[:, 0]
        if self.mirrored is None:
            return probs
        mirrored = [mirror_boxes(b, size[1]) for b, size in zip(boxes, self.sizes)]
        mirror_probs = self.heads.mask_logits(self.mirrored, mirrored, self.sizes).float().sigmoid()[:, 0]
        return (probs + mirror_probs.flip(-1)) / 2

    def __call__(self, requests: list[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
        """[K, M, M] mask probabilities per request."""
        device = next(iter(self.features.values())).device
        per_image: list[list[torch.Tensor]] = [[] for _ in self.sizes]
        for index, boxes in requests:
            per_image[index].append(resize_boxes(boxes.to(device).float(), self.originals[index], self.sizes[index]))
        boxes = [torch.cat(b) if b else torch.zeros(0, 4, device=device) for b in per_image]
        probs = self.probabilities(boxes)
        chunks, taken, out = probs.split([len(b) for b in boxes]), [0] * len(self.sizes), []
        for index, box in requests:  # each image's requests in the order they were concatenated
            out.append(chunks[index][taken[index]:taken[index] + len(box)])
            taken[index] += len(box)
        return out


class ImageMasks:
    """Image `index`'s `masks_in`: [K, 4] boxes (original pixels) -> [K, M, M] probabilities."""

    def __init__(self, batch: BatchMasks, index: int) -> None:
        self.batch, self.index = batch, index

    def __call__(self, boxes: torch.Tensor) -> torch.Tensor:
        return self.batch([(self.index, boxes)])[0]


def grid_boxes(height: int, width: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """[grid*grid, 4] xyxy boxes tiling a height x width image, row-major."""
    ys = torch.linspace(0, height, grid + 1, device=device)
    xs = torch.linspace(0, width, grid + 1, device=device)
    y0, x0 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    y1, x1 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")
    return torch.stack([x0, y0, x1, y1], dim=-1).reshape(-1, 4)


def map_cells(height: int, width: int, stride: float, device: torch.device | None = None) -> torch.Tensor:
    """[rows*cols, 4] xyxy boxes of the `stride`-pixel cells of a feature map over a height x width image
    (the last row and column cut at the image's border), row-major."""
    ys = torch.arange(0, height, stride, device=device, dtype=torch.float32)
    xs = torch.arange(0, width, stride, device=device, dtype=torch.float32)
    y0, x0 = torch.meshgrid(ys, xs, indexing="ij")
    y1, x1 = (y0 + stride).clamp(max=height), (x0 + stride).clamp(max=width)
    return torch.stack([x0, y0, x1, y1], dim=-1).reshape(-1, 4)


def per_image_padded(embeddings: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[sum counts, D] rows, `counts[i]` of them image i's -> ([B, max count, D] zero-padded, [B, max] validity)."""
    padded = embeddings.new_zeros(len(counts), max(1, max(counts, default=0)), embeddings.shape[-1])
    valid = torch.zeros(padded.shape[:2], dtype=torch.bool, device=padded.device)
    for i, part in enumerate(embeddings.split(counts)):
        padded[i, : len(part)] = part
        valid[i, : len(part)] = True
    return padded, valid


def mirror_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """[N, 4] xyxy boxes mirrored left-right in an image `width` pixels wide."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


class OpenVocabMaskRCNN(MaskRCNN):
    """Mask R-CNN whose classifier is V2L logits against class-name embeddings.

    All arguments are plain keywords (`from_config` maps the `model` config
    section to them); `self.kwargs` records them to rebuild this architecture
    (see `xpl.model.checkpoint`). Images are resized
    so the shorter side is `min_size` unless the longer side would exceed
    `max_size` (torchvision's rule; both default to `image_size`, which makes
    the longer side `image_size`; detection on COCO uses 800 / 1333). Box regression and masks are
    class-agnostic; the background class weighs `bg_weight` in the
    classification cross-entropy. `pretrained_backbone` is a local ImageNet
    ResNet-50 file (r50_fpn only), read once at construction.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        image_size: int,
        backbone: str = "tiny",
        box_batch_size_per_image: int = 64,
        box_positive_fraction: float = 0.25,
        rpn_pre_nms_top_n_train: int = 200,
        rpn_post_nms_top_n_train: int = 100,
        rpn_pre_nms_top_n_test: int = 100,
        rpn_post_nms_top_n_test: int = 50,
        detections_per_img: int = 10,
        bg_weight: float = 0.2,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        representation_size: int = 256,
        logit_scale: float = 1.0,
        pretrained_backbone: Optional[str] = None,
        backbone_norm: Optional[str] = None,
        min_size: Optional[int] = None,
        max_size: Optional[int] = None,
    ) -> None:
        arguments = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        norm = resolve_norm(backbone, pretrained_backbone, backbone_norm)
        body, anchors, box_pool = build_backbone(backbone, pretrained_path=pretrained_backbone, norm=norm)
        channels = body.out_channels
        pool_size = box_pool.output_size[0]
        box_head = TwoMLPHead(channels * pool_size * pool_size, representation_size)
        predictor = V2LPredictor(representation_size, embed_dim, scale=logit_scale)
        mask_pool = Fp32MultiScaleRoIAlign(
            box_pool.featmap_names, 14, 2, canonical_scale=box_pool.canonical_scale
        )
        mask_head = MaskRCNNHeads(channels, (channels,) * _MASK_HEAD_DEPTH[backbone], 1)
        mask_predictor = MaskRCNNPredictor(channels, channels, 1)
        super().__init__(
            body,
            num_classes=None,
            min_size=min_size or image_size,
            max_size=max_size or image_size,
            rpn_anchor_generator=anchors,
            rpn_head=Fp32RPNHead(channels, anchors.num_anchors_per_location()[0]),
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_roi_pool=box_pool,
            box_head=box_head,
            box_predictor=predictor,
            mask_roi_pool=mask_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        # Swap torchvision's RoIHeads for the open-vocabulary one, same parts.
        self.roi_heads = OpenVocabRoIHeads(
            box_pool,
            box_head,
            predictor,
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction,
            bbox_reg_weights=None,
            score_thresh=box_score_thresh,
            nms_thresh=box_nms_thresh,
            detections_per_img=detections_per_img,
            mask_roi_pool=mask_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
            bg_weight=bg_weight,
        )
        # The arguments that rebuild this architecture (`xpl.model.checkpoint`): the weights come from the state
        # dict then, so no weights file, and the normalisation as resolved.
        self.kwargs: dict[str, Any] = {**arguments, "pretrained_backbone": None, "backbone_norm": norm}

    @property
    def v2l(self) -> V2L:
        """The vision-to-language projection (lives in the box predictor)."""
        return self.roi_heads.box_predictor.v2l

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], embed_dim: int) -> "OpenVocabMaskRCNN":
        """The detector from the `model` config section (its keys are this class's keywords) and the text
        encoder's embedding size."""
        return cls(embed_dim=embed_dim, **dict(model_cfg))

    @property
    def class_embeddings(self) -> torch.Tensor:
        """[C, D] embeddings of the current vocabulary (C = 0 before `set_class_embeddings`)."""
        return self.roi_heads.box_predictor.class_embeddings

    def set_class_embeddings(self, embeddings: torch.Tensor) -> None:
        """Set the vocabulary: [C, D] class-name embeddings; labels 1..C index its rows."""
        dim = self.v2l.embed_dim
        if embeddings.dim() != 2 or embeddings.shape[1] != dim:
            raise ValueError(f"class embeddings must be [C, {dim}], got {list(embeddings.shape)}")
        weight = self.v2l.proj.weight
        self.roi_heads.box_predictor.class_embeddings = embeddings.detach().to(weight.device, torch.float32)

    def embed_names(self, encoder: Any, names: Sequence[str]) -> torch.Tensor:
        """[C, D] embeddings of `names` by `encoder` (a `xpl.text.TextEncoder`); XPLError when the encoder's space
        is not the one this model classifies in."""
        embeddings = encoder.embed(list(names))
        if embeddings.shape[1] != self.v2l.embed_dim:
            raise XPLError(f"the model classifies in a {self.v2l.embed_dim}-d text space but text.model={encoder.model} "
                           f"gives {embeddings.shape[1]}-d embeddings: use the text encoder the model was trained with")
        return embeddings

    def set_class_names(self, encoder: Any, names: Sequence[str]) -> None:
        """Make `names` the classes (labels 1..C in this order), embedded by `encoder` (`embed_names`)."""
        self.set_class_embeddings(self.embed_names(encoder, names))

    def freeze(self, parts: Sequence[str]) -> None:
        """Stop training the named parts (a stage's `freeze` list): their parameters get no gradient.

        Parts: `MODEL_PARTS` and the backbone's own (`xpl.model.backbones.BACKBONE_PARTS`: stem, res2..res5,
        fpn for r50_fpn). An unknown name is an XPLError that lists the choices."""
        prefixes = dict(MODEL_PARTS)
        for part, names in BACKBONE_PARTS[self.kwargs["backbone"]].items():
            prefixes[part] = tuple(f"backbone.{n}" for n in names)
        unknown = [p for p in parts if p not in prefixes]
        if unknown:
            raise XPLError(f"freeze: unknown part(s) {unknown} for backbone {self.kwargs['backbone']}; "
                           f"choose from {', '.join(prefixes)}")
        frozen = tuple(prefix for part in parts for prefix in prefixes[part])
        for name, param in self.named_parameters():
            if name.startswith(frozen):
                param.requires_grad_(False)

    def _cast(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Images in the weights' dtype, so bf16 weights take fp32 images."""
        dtype = next(self.backbone.parameters()).dtype
        return [img.to(dtype) for img in images]

    def forward(
        self, images: list[torch.Tensor], targets: Optional[list[dict[str, torch.Tensor]]] = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """torchvision conventions: training -> dict of 5 fp32 losses; eval -> per-image detections
        (boxes, labels 1..C into the current vocabulary, scores, masks [n, 1, H, W])."""
        return super().forward(self._cast(images), targets)

    @torch.no_grad()
    def detect_each(self, images: list[torch.Tensor],
                    vocabularies: Sequence[torch.Tensor]) -> list[list[dict[str, torch.Tensor]]]:
        """Detections of `images` (eval mode, as `forward`) under each vocabulary ([C_k, D] class embeddings), one
        backbone and RPN pass serving them all: evaluation scores a model in several settings at once. The
        current class embeddings are kept."""
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, features = self._features(images)
        proposals, _ = self.rpn(image_list, features)
        kept = self.class_embeddings
        out = []
        try:
            for embeddings in vocabularies:
                self.set_class_embeddings(embeddings)
                detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
                out.append(self.transform.postprocess(detections, image_list.image_sizes, original_sizes))
        finally:
            self.roi_heads.box_predictor.class_embeddings = kept
        return out

    def _features(self, images: list[torch.Tensor]) -> tuple[ImageList, dict[str, torch.Tensor]]:
        image_list, _ = self.transform(self._cast(images))
        return image_list, self.backbone(image_list.tensors)

    def grid_embeddings(
        self,
        images: list[torch.Tensor],
        *,
        grid: int,
        max_cells: int = 100,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, N, D] V2L embeddings of grid cells, [B, N] validity), up to `max_cells` cells per image.

        Each resized image is tiled into `grid` x `grid` cells, or with `grid` 0 into the cells of
        the last backbone map itself (one per map pixel, as OVR-CNN grounds every cell of its last
        map); up to `max_cells` are sampled (by `generator`, a CPU generator). Cells are pooled from
        the last (coarsest) map: its wide receptive field sees whole objects, where the size-based
        level choice of the box pooler would pick the finest map for small cells and see only local
        texture and colour. The pooled cells then pass the detector's own box head and V2L, so
        caption pretraining trains the path the detector classifies with.
        """
        image_list, features = self._features(images)
        device = image_list.tensors.device
        padded_width = image_list.tensors.shape[-1]
        if grid > 0:
            cells = [grid_boxes(h, w, grid, device) for h, w in image_list.image_sizes]
        else:
            last = features[self.roi_heads.box_roi_pool.featmap_names[-1]]
            stride = padded_width / last.shape[-1]
            cells = [map_cells(h, w, stride, device) for h, w in image_list.image_sizes]
        cells = [c[torch.randperm(len(c), generator=generator)[:max_cells].to(device)] if len(c) > max_cells else c
                 for c in cells]
        embeddings = self._last_map_embeddings(features, cells, padded_width)
        return per_image_padded(embeddings.float(), [len(c) for c in cells])

    def _last_map_embeddings(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                             padded_width: int) -> torch.Tensor:
        """V2L embeddings of boxes (transformed coordinates) pooled from the last backbone map."""
        pooler = self.roi_heads.box_roi_pool
        last = features[pooler.featmap_names[-1]]
        # One sample per output bin: grid cells are about one map pixel wide, so more samples only
        # repeat the same bilinear interpolation, and roi_align's backward pass costs per sample.
        pooled = roi_align(last.float(), [b.float() for b in boxes], output_size=pooler.output_size,
                           spatial_scale=last.shape[-1] / padded_width, sampling_ratio=1, aligned=False)
        return self.v2l(self.roi_heads.box_head(pooled.to(last.dtype)))

    @torch.no_grad()
    def box_embeddings(self, image: torch.Tensor, boxes: torch.Tensor, *, last_map: bool = False) -> torch.Tensor:
        """[N, D] V2L embeddings of given boxes (original image coordinates) of one image.

        `last_map=False` pools as the detector does (FPN level by box size); `last_map=True` pools
        from the last map, as caption pretraining does.
        """
        image_list, targets = self.transform([image], [{"boxes": boxes}])
        features = self.backbone(image_list.tensors)
        scaled = [targets[0]["boxes"]]
        if last_map:
            return self._last_map_embeddings(features, scaled, image_list.tensors.shape[-1])
        return self.v2l(self.roi_heads.box_features(features, scaled, image_list.image_sizes))

    def _proposals_with_objectness(
        self, image_list: ImageList, features: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """RPN proposals and their objectness probabilities (torchvision's RPN returns boxes only)."""
        rpn = self.rpn
        maps = list(features.values())
        objectness, deltas = rpn.head(maps)
        anchors = rpn.anchor_generator(image_list, maps)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        return rpn.filter_proposals(proposals, objectness, image_list.image_sizes, per_level)

    @torch.no_grad()
    def _candidate_boxes(
        self, image_list: ImageList, features: dict[str, torch.Tensor], *, nms_thresh: float, max_regions: int,
        min_box_size: float,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: RPN proposals refined by the class-agnostic box regression, clipped, boxes smaller
        than `min_box_size` dropped, NMS at `nms_thresh` over objectness, top `max_regions` kept;
        and their objectness. Transformed-image coordinates."""
        sizes = image_list.image_sizes
        proposals, objectness = self._proposals_with_objectness(image_list, features)
        heads = self.roi_heads
        deltas = heads.box_predictor.bbox_pred(heads.box_features(features, proposals, sizes)).float()
        refined = heads.box_coder.decode(deltas, proposals).reshape(-1, 4)
        boxes, scores = [], []
        for img_boxes, img_scores, size in zip(refined.split([len(p) for p in proposals]), objectness, sizes):
            img_boxes = box_ops.clip_boxes_to_image(img_boxes, size)
            keep = box_ops.remove_small_boxes(img_boxes, min_box_size)
            img_boxes, img_scores = img_boxes[keep], img_scores[keep]
            keep = box_ops.nms(img_boxes, img_scores, nms_thresh)[:max_regions]
            boxes.append(img_boxes[keep])
            scores.append(img_scores[keep])
        return boxes, scores

    def candidate_embeddings(
        self, images: list[torch.Tensor], *, max_regions: int = 32, nms_thresh: float = 0.5, min_box_size: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, K, D] V2L embeddings, [B, K] validity) of each image's candidate regions, found as
        `regions()` finds them (boxes without gradient) and embedded with gradient, so a caption-
        grounding loss trains the very path pseudo-labeling aligns words with."""
        image_list, features = self._features(images)
        return self.candidate_embeddings_of(image_list, features, max_regions=max_regions, nms_thresh=nms_thresh,
                                            min_box_size=min_box_size)

    def candidate_embeddings_of(
        self, image_list: ImageList, features: dict[str, torch.Tensor], *, max_regions: int = 32,
        nms_thresh: float = 0.5, min_box_size: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`candidate_embeddings` on images already through the transform and backbone (a caller that has
        their features, e.g. the student's pseudo branch, does not run the backbone twice)."""
        boxes, _ = self._candidate_boxes(image_list, features, nms_thresh=nms_thresh, max_regions=max_regions,
                                         min_box_size=min_box_size)
        embeddings = self.v2l(self.roi_heads.box_features(features, boxes, image_list.image_sizes)).float()
        return per_image_padded(embeddings, [len(b) for b in boxes])

    def _mirror_embeddings(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                           sizes: list[tuple[int, int]]) -> torch.Tensor:
        """[sum R_i, D] V2L embeddings of `boxes` (transformed-image coordinates) mirrored, pooled from the
        mirrored images' `features` (the transform resizes an image and its mirror alike)."""
        mirrored = [mirror_boxes(b, size[1]) for b, size in zip(boxes, sizes)]
        return self.v2l(self.roi_heads.box_features(features, mirrored, sizes)).float()

    @torch.no_grad()
    def regions(
        self,
        images: list[torch.Tensor],
        *,
        nms_thresh: float = 0.5,
        max_regions: int = 50,
        min_box_size: float = 1.0,
        masks: bool = True,
        flip: bool = False,
    ) -> list[Regions]:
        """Candidate regions of each image for pseudo-labeling (call in eval mode).

        RPN proposals are refined by the class-agnostic box regression, clipped,
        boxes smaller than `min_box_size` (resized-image pixels) dropped, NMS at
        `nms_thresh` over objectness, top `max_regions` kept. Embeddings and
        mask probabilities are computed on the refined boxes (pooled again).
        `masks=False` leaves the mask head to `masks_in` (for the few regions a
        caller picks: the mask head on every candidate is a large share of the
        call). `flip` averages each region's embedding and mask with those of its
        mirror image on the mirrored image (a flip test: one more backbone pass;
        docs/pseudo-labels.md).
        """
        if self.training:
            raise RuntimeError("regions() runs the test-time RPN: call model.eval() first")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, features = self._features(images)
        sizes = image_list.image_sizes
        boxes, scores = self._candidate_boxes(image_list, features, nms_thresh=nms_thresh, max_regions=max_regions,
                                              min_box_size=min_box_size)
        heads = self.roi_heads
        embeddings = self.v2l(heads.box_features(features, boxes, sizes)).float()
        mirrored = self._features([image.flip(-1) for image in images])[1] if flip else None
        if mirrored is not None:
            embeddings = (embeddings + self._mirror_embeddings(mirrored, boxes, sizes)) / 2
        counts = [len(b) for b in boxes]
        batch = BatchMasks(self, features, sizes, original_sizes, mirrored)
        mask_probs = batch.probabilities(boxes).split(counts) if masks else [None] * len(boxes)
        return [
            Regions(resize_boxes(b, size, orig), e, s, m, orig, ImageMasks(batch, i))
            for i, (b, e, s, m, size, orig) in enumerate(zip(
                boxes, embeddings.split(counts), scores, mask_probs, sizes, original_sizes
            ))
        ]
