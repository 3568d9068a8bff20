"""Which region a caption word gets, and why a pseudo-label is wrong: a study of stage 3's choice on data with truth.

    python benchmarks/region_study.py --config configs/shapes.yaml [key=value ...] [--grow 1.25 1.5] [--json PATH]

Runs the configured teacher (`pseudolabel.teacher`) over the caption shards (`pseudolabel.input`: the
training data; the val split reports results and is not for tuning) in one process, no Ray, and judges
each word's pick against the truth the shapes world's samples carry, for three ways of choosing:
`dot` (the paper's top-1 dot product), `cosine`, `vocab` (the word's log-probability under the
teacher's classifier over background and the whole vocabulary), `grow` (the dot pick grown about its
centre until its mask fits, `pseudolabel.grow`), `sides` (grown at the sides its mask crosses) and
`sides+vocab`. Also reported: how often some candidate region covers the named object at all
(box IoU >= 0.5: the ceiling of any pick) and, for wrong dot picks, whether they lie on the right object
with a bad box (`part`: box IoU 0.1-0.5 with an object of the named class) or on another object.
Prints a table per split and class and writes JSON (default `<output_dir>/region_study.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

import torch


def samples(cfg: Any, vocab: Any) -> Iterator[tuple[Any, Any]]:
    """(decoded sample, truth) of every caption sample that has pixels, matched words and truth."""
    from xpl.data.captions import expand_urls
    from xpl.data.tar_records import iter_tar_records, open_shard
    from xpl.eval.pseudo_quality import read_truth
    from xpl.pseudo.decode import decode_sample

    ids = {c.name: c.id for c in vocab.categories}
    for url in expand_urls(cfg.pseudolabel.input):
        with open_shard(url) as stream:
            for record in iter_tar_records(stream):
                if record.error is not None or "json" not in record.members:
                    continue
                decoded = decode_sample(record.members, vocab=vocab, max_pixels=cfg.pseudolabel.max_pixels,
                                        image_size=cfg.pseudolabel.image_size)
                truth = read_truth(json.loads(record.members["json"]), ids, where=f"{url}:{record.key}")
                if decoded.pixels is not None and truth is not None:
                    yield decoded, truth


def study(cfg: Any, grow: list[float], batch_size: int = 16) -> dict[str, Any]:
    """Quality of each choice rule, candidate coverage and the kinds of wrong dot picks, per split and class."""
    from xpl.eval.pseudo_quality import judge_sample, quality_report
    from xpl.model.checkpoint import load_model
    from xpl.pseudo.choice import RegionChoice, caption_words
    from xpl.pseudo.paste import build_instances
    from xpl.text import TextEncoder
    from xpl.vocab import Vocabulary

    vocab = Vocabulary.load(cfg.data.vocab)
    names = {c.id: c.name for c in vocab.categories}
    splits = {c.id: c.split for c in vocab.categories}
    class_embeddings = TextEncoder(cfg.text.model).embed(vocab.names)
    embedding = dict(zip(vocab.ids, class_embeddings))
    model = load_model(cfg.pseudolabel.teacher, map_location="cpu").eval()
    configured = RegionChoice.from_config(cfg.pseudolabel, class_embeddings, model.v2l.scale)
    dot = dataclasses.replace(configured, cosine=False, vocabulary=None, score_threshold=None, max_per_word=1,
                              grow=(), grow_sides=False)
    growth = dataclasses.replace(dot, grow=tuple(grow))
    vocabulary = {"vocabulary": class_embeddings, "logit_scale": model.v2l.scale}
    rules = {"dot": dot, "cosine": dataclasses.replace(dot, cosine=True),
             "vocab": dataclasses.replace(dot, **vocabulary), "grow": growth,
             "sides": dataclasses.replace(growth, grow_sides=True),
             "sides+vocab": dataclasses.replace(growth, grow_sides=True, **vocabulary)}
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    coverage: dict[str, Counter] = defaultdict(Counter)
    pending = list(samples(cfg, vocab))
    print(f"[region_study] {len(pending)} caption samples with truth", flush=True)
    for start in range(0, len(pending), batch_size):
        chunk = pending[start:start + batch_size]
        images = [torch.from_numpy(d.pixels.copy()).permute(2, 0, 1).float().div_(255) for d, _ in chunk]
        words = [caption_words(decoded.words, embedding) for decoded, _ in chunk]
        with torch.inference_mode():
            regions = dot.regions(model, images)
            for rule, choice in rules.items():
                for (decoded, truth), selection in zip(chunk, choice.select(words, regions)):
                    built = build_instances(selection, height=decoded.height, width=decoded.width,
                                            box_scale=decoded.scale, mask_threshold=choice.mask_threshold)
                    found = [i.to_json() for i in built.instances]
                    records[rule].append({"categories": [i["category_id"] for i in found],
                                          "align_scores": [i["align_score"] for i in found],
                                          "truth": judge_sample(found, truth)})
        for (decoded, truth), image_words, reg in zip(chunk, words, regions):
            tally_coverage(coverage, image_words, reg, decoded.scale, truth, names, splits)
    reports = {rule: quality_report(recs, names, splits) for rule, recs in records.items()}
    return {"samples": len(pending), "grow": grow,
            "rules": {rule: {"splits": r["splits"], "classes": r["classes"]} for rule, r in reports.items() if r},
            "coverage": {key: dict(c) for key, c in coverage.items()}}


def tally_coverage(coverage: dict[str, Counter], words: list[Any], reg: Any, scale: float, truth: Any,
                   names: dict[int, str], splits: dict[int, str]) -> None:
    """Per named class present: is some candidate box on it (box IoU >= 0.5), and where the dot pick lands:
    `right`, `part` (box IoU 0.1-0.5 with an object of the class), `other` (IoU >= 0.5 with another object)
    or `elsewhere`."""
    from torchvision.ops import box_iou

    boxes = reg.boxes.float() * scale
    seen: set[int] = set()
    for word in words:
        cid = word.category_id
        objects = [o.box for o in truth.objects if o.category_id == cid]
        if cid in seen or not objects or len(boxes) == 0:
            continue
        seen.add(cid)
        overlap = box_iou(boxes, torch.tensor(objects)).max(dim=1).values
        pick = int(torch.argmax(reg.embeddings.float() @ word.embedding.float()))
        others = [o.box for o in truth.objects if o.category_id != cid]
        on_other = bool(others) and float(box_iou(boxes[pick:pick + 1], torch.tensor(others)).max()) >= 0.5
        landed = ("right" if overlap[pick] >= 0.5 else "part" if overlap[pick] >= 0.1
                  else "other" if on_other else "elsewhere")
        for key in (names[cid], splits[cid]):
            coverage[key]["words"] += 1
            coverage[key]["covered"] += int(bool((overlap >= 0.5).any()))
            coverage[key][f"dot_{landed}"] += 1


def table(result: dict[str, Any]) -> str:
    rows = ["rule        split/class   precision  recall  instances"]
    for rule, report in result["rules"].items():
        for key, values in [*report["splits"].items(), *report["classes"].items()]:
            p, r = values["precision"], values["recall"]
            rows.append(f"{rule:11s} {key:12s} {p if p is None else round(p, 3)!s:>10s} "
                        f"{r if r is None else round(r, 3)!s:>7s} {values['instances']:>10d}")
    rows.append("named objects: share with some candidate box on them; where the dot pick lands")
    for key, c in result["coverage"].items():
        n = max(c["words"], 1)
        landed = "  ".join(f"{k.removeprefix('dot_')} {c.get(k, 0) / n:.2f}"
                           for k in ("dot_right", "dot_part", "dot_other", "dot_elsewhere"))
        rows.append(f"{key:12s} {c['words']:5d}  covered {c['covered'] / n:.2f}  {landed}")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--grow", type=float, nargs="*", default=None,
                        help="growth factors for the `grow` rule (default: pseudolabel.grow, else 1.25 1.5)")
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    from xpl.config import load_config
    from xpl.runtime import apply_env_defaults

    apply_env_defaults()
    cfg = load_config(args.config, args.overrides)
    grow = args.grow if args.grow is not None else (list(cfg.pseudolabel.grow) or [1.25, 1.5])
    result = study(cfg, grow)
    print(table(result))
    out = Path(args.json or Path(cfg.output_dir) / "region_study.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"[region_study] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
