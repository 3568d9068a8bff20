"""Export and load detectors as self-describing files (architecture kwargs + weights)."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xpl.errors import XPLError
from xpl.model.detector import OpenVocabMaskRCNN

log = logging.getLogger(__name__)

FORMAT = "xpl.OpenVocabMaskRCNN/1"


def export_model(model: OpenVocabMaskRCNN, path: str | os.PathLike) -> Path:
    """Save kwargs, state dict and (if set) the class embeddings to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "kwargs": dict(model.kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if model.class_embeddings.shape[0] > 0:
        payload["class_embeddings"] = model.class_embeddings.detach().cpu()
    torch.save(payload, path)
    return path


def _read(path: str | os.PathLike, map_location: str | torch.device) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise XPLError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise XPLError(f"model file is corrupt or not a torch file: {path} ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise XPLError(f"{path} is not an xpl model export (expected format {FORMAT})")
    return payload


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> OpenVocabMaskRCNN:
    """Rebuild an exported model from its kwargs and weights; returned in eval mode."""
    payload = _read(path, map_location)
    model = OpenVocabMaskRCNN(**payload["kwargs"])
    model.load_state_dict(payload["state_dict"])
    if "class_embeddings" in payload:
        model.set_class_embeddings(payload["class_embeddings"])
    return model.to(map_location).eval()


@dataclass
class LoadReport:
    """What `load_pretrained_parts` took, and what it left out."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)


def load_pretrained_parts(
    model: OpenVocabMaskRCNN, source: str | os.PathLike | Mapping[str, torch.Tensor]
) -> LoadReport:
    """Copy every weight whose name and shape match from an export (path) or a state dict.

    Used to start the teacher from caption pretraining (backbone, box head,
    V2L) and the student from the teacher. Mismatches are reported, not fatal.
    """
    state = _read(source, "cpu")["state_dict"] if isinstance(source, (str, os.PathLike)) else source
    own = model.state_dict()
    report = LoadReport()
    usable = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif own[name].shape != tensor.shape:
            report.shape_mismatch.append(name)
        else:
            usable[name] = tensor
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = sorted(set(own) - set(usable) - set(report.shape_mismatch))
    log.info(
        "loaded %d tensors; %d missing, %d unexpected, %d shape mismatches",
        len(report.loaded), len(report.missing), len(report.unexpected), len(report.shape_mismatch),
    )
    return report
