"""Feature extractors with an FPN, plus the anchors and RoI pooler that fit them.

`build_backbone(name)` returns the three parts torchvision's Mask R-CNN needs
from a backbone choice: the network (with `.out_channels`), its
`AnchorGenerator` and its box `MultiScaleRoIAlign`.

Precision: box geometry stays in fp32 when the network runs in bf16 (bf16
cannot hold pixel coordinates exactly, and torchvision's roi_align and nms
have no bf16 kernels), so the anchors and poolers here work in fp32.

Normalisation: training runs with about 2 images per worker, too few for
BatchNorm statistics, so randomly initialised bodies use GroupNorm. ImageNet
weights come with BatchNorm statistics, so a pretrained ResNet-50 uses
torchvision's FrozenBatchNorm2d (the standard detection recipe).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.poolers import _setup_scales

from xpl.errors import XPLError
from xpl.model.roi_pool import boxes_to_rois, pool_levels

BACKBONES = ("tiny", "r50_fpn")
# Parts of each backbone a stage may freeze by name (`OpenVocabMaskRCNN.freeze`): parameter-name prefixes.
BACKBONE_PARTS = {
    "r50_fpn": {"stem": ("body.conv1.", "body.bn1."), "res2": ("body.layer1.",), "res3": ("body.layer2.",),
                "res4": ("body.layer3.",), "res5": ("body.layer4.",), "fpn": ("fpn.",)},
    "tiny": {"stem": ("stem.",), "fpn": ("fpn.",)},
}
NORMS = ("group", "frozen_bn")
_ASPECT_RATIOS = (0.5, 1.0, 2.0)


class Fp32AnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator, with fp32 anchors whatever the feature dtype."""

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        # Only the maps' sizes, dtype and device are read: pass empty fp32 stand-ins.
        shapes = [torch.empty((0, 0, *f.shape[-2:]), dtype=torch.float32, device=f.device) for f in feature_maps]
        return super().forward(image_list, shapes)


class Fp32MultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign that pools in fp32 and returns the features' dtype.

    On the CPU all levels are pooled in one tap gather (`xpl.model.roi_pool`): the same numbers,
    several times faster to train through.
    """

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        dtype = x[self.featmap_names[0]].dtype
        maps = {k: x[k].float() for k in self.featmap_names}
        boxes = [b.float() for b in boxes]
        if maps[self.featmap_names[0]].device.type != "cpu" or self.sampling_ratio <= 0:
            return super().forward(maps, boxes, image_shapes).to(dtype)
        levels_maps = list(maps.values())
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                levels_maps, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = boxes_to_rois(boxes)
        levels = self.map_levels(boxes) if len(levels_maps) > 1 else torch.zeros(len(rois), dtype=torch.long)
        return pool_levels(levels_maps, rois, levels, self.scales, self.output_size, self.sampling_ratio).to(dtype)


def _conv_gn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(8, cout),
        nn.ReLU(inplace=True),
    )


class TinyFPNBackbone(nn.Module):
    """A few GroupNorm conv blocks at strides 4, 8, 16 and a 3-level FPN.

    Sized for 64-256 px images on CPU; it trains from random weights in minutes.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), out_channels: int = 64) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(_conv_gn(3, 16, 2), _conv_gn(16, w1, 2), _conv_gn(w1, w1, 1))
        self.layer2 = nn.Sequential(_conv_gn(w1, w2, 2), _conv_gn(w2, w2, 1))
        self.layer3 = nn.Sequential(_conv_gn(w2, w3, 2), _conv_gn(w3, w3, 1))
        self.fpn = FeaturePyramidNetwork([w1, w2, w3], out_channels)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is None:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c2 = self.stem(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return self.fpn(OrderedDict([("0", c2), ("1", c3), ("2", c4)]))


def _load_imagenet_resnet50(path: str, norm_layer: type[nn.Module]) -> nn.Module:
    """A torchvision ResNet-50 with weights read from a local file (never downloaded)."""
    file = Path(path)
    if not file.is_file():
        raise XPLError(f"pretrained backbone weights not found: {file} (weights are never downloaded)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    body = resnet50(weights=None, norm_layer=norm_layer)
    try:
        body.load_state_dict(state)
    except RuntimeError as err:
        raise XPLError(f"{file} is not a torchvision ResNet-50 state dict: {err}") from err
    return body


def _r50_fpn(pretrained_path: str | None, norm: str) -> nn.Module:
    if norm == "frozen_bn":
        if pretrained_path is None:
            body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        else:
            body = _load_imagenet_resnet50(pretrained_path, FrozenBatchNorm2d)
    else:
        if pretrained_path is not None:
            raise XPLError("ImageNet weights carry BatchNorm statistics: use norm='frozen_bn' with them")
        body = resnet50(weights=None, norm_layer=lambda c: nn.GroupNorm(32, c))
    return _resnet_fpn_extractor(body, trainable_layers=5)  # what trains is each stage's `freeze` list


def resolve_norm(name: str, pretrained_path: str | None, norm: str | None) -> str:
    """The normalisation a backbone gets: GroupNorm unless ImageNet weights ask for frozen BN."""
    if norm is None:
        norm = "frozen_bn" if pretrained_path is not None else "group"
    if norm not in NORMS:
        raise XPLError(f"unknown backbone norm {norm!r}; choose one of {NORMS}")
    if name == "tiny" and norm != "group":
        raise XPLError("the tiny backbone uses GroupNorm only")
    return norm


def build_backbone(
    name: str, *, pretrained_path: str | None = None, norm: str | None = None
) -> tuple[nn.Module, Fp32AnchorGenerator, Fp32MultiScaleRoIAlign]:
    """Build a backbone with its anchors and box RoI pooler.

    Args:
        name: "tiny" (random init, for 64-256 px images) or "r50_fpn".
        pretrained_path: local file with torchvision ImageNet ResNet-50 weights
            (r50_fpn only). Missing files raise `XPLError`; nothing is downloaded.
        norm: "group" or "frozen_bn"; None picks frozen_bn with pretrained
            weights and GroupNorm otherwise.
    """
    if name not in BACKBONES:
        raise XPLError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    norm = resolve_norm(name, pretrained_path, norm)
    if name == "tiny":
        if pretrained_path is not None:
            raise XPLError("the tiny backbone has no pretrained weights")
        # Objects of ~10-60 px in 128 px images.
        sizes: tuple[tuple[int, ...], ...] = ((12, 16), (24, 32), (48, 64))
        pool = Fp32MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2, canonical_scale=64)
        network: nn.Module = TinyFPNBackbone()
    else:
        sizes = ((32,), (64,), (128,), (256,), (512,))
        pool = Fp32MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
        network = _r50_fpn(pretrained_path, norm)
    anchors = Fp32AnchorGenerator(sizes, (_ASPECT_RATIOS,) * len(sizes))
    return network, anchors, pool
