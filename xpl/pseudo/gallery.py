"""An HTML page that shows, per class, how right the pseudo-labels are: the quality table, the
threshold curve and example images with each pseudo mask, its word and score, marked right or wrong.

Opened straight from disk (`<output>/report/gallery.html`); the pictures sit beside it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Iterable, Optional

from xpl.pseudo.visualize import draw_pseudo


def verdicts(record: dict[str, Any]) -> Optional[list[bool]]:
    """Right (True) / wrong (False) per pseudo instance of a manifest record, if it was judged."""
    truth = record.get("truth")
    if not truth or "error" in truth:
        return None
    return [bool(j[0]) for j in truth["judged"]]


def _cell(value: Optional[float]) -> str:
    """A table cell shaded from red (0) to green (1)."""
    if value is None:
        return "<td>-</td>"
    red, green = int(230 - 150 * value), int(120 + 110 * value)
    return f'<td style="background: rgb({red},{green},110)">{value:.2f}</td>'


def _table(quality: dict[str, Any]) -> str:
    head = "<tr><th></th><th>split</th><th>instances</th><th>precision</th><th>recall</th><th>chance</th>" \
           "<th>mask IoU</th></tr>"
    rows = [(name, name, quality["splits"][name]) for name in ("novel", "base", "all")]
    rows += [(name, v["split"], v) for name, v in quality["classes"].items()]
    body = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{split}</td><td>{v['instances']}</td>{_cell(v['precision'])}"
        f"{_cell(v['recall'])}{_cell(v['chance'])}{_cell(v['mask_iou'])}</tr>"
        for name, split, v in rows
    )
    return f"<table>{head}{body}</table>"


def write_gallery(report: Path, quality: dict[str, Any], samples: Iterable[tuple[str, bytes, dict[str, Any],
                  dict[str, Any]]], *, per_class: int = 6, curve: Optional[str] = None) -> Path:
    """Write `report/gallery.html` and its pictures under `report/gallery/`.

    `samples`: (key, image bytes, pseudo.json, manifest record) of labeled samples, read until
    every class of `quality` has `per_class` examples (or the samples run out).
    """
    folder = report / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {name: per_class for name in quality["classes"]}
    shown: dict[str, list[str]] = {name: [] for name in wanted}
    for key, image, pseudo, record in samples:
        marks = verdicts(record)
        if marks is None:
            continue
        names = [inst["name"] for inst in pseudo["instances"]]
        needed = [n for n in dict.fromkeys(names) if wanted.get(n, 0) > 0]
        if not needed:
            if not any(wanted.values()):
                break
            continue
        picture = f"{key.replace('/', '_')}.png"
        draw_pseudo(image, pseudo, verdicts=marks).save(folder / picture)
        for name in needed:
            wanted[name] -= 1
            parts = [f"{'right' if ok else 'WRONG'}: {html.escape(i['phrase'])} {i['align_score']:.2f}"
                     for i, ok in zip(pseudo["instances"], marks) if i["name"] == name]
            title = html.escape(pseudo["caption"])
            shown[name].append(f'<figure><img src="gallery/{picture}" title="{title}">'
                               f'<figcaption>{"<br>".join(parts)}</figcaption></figure>')
    sections = []
    for name, figures in shown.items():
        v = quality["classes"][name]
        precision = "-" if v["precision"] is None else f"{v['precision']:.2f}"
        recall = "-" if v["recall"] is None else f"{v['recall']:.2f}"
        sections.append(f"<h2>{html.escape(name)} ({v['split']}): precision {precision}, recall {recall}, "
                        f"{v['instances']} instances</h2><div class=row>{''.join(figures) or 'no examples'}</div>")
    curve_html = f'<p><img src="{curve}" alt="threshold curve"></p>' if curve else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>XPL pseudo-label quality</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}} .row{{display:flex;flex-wrap:wrap;gap:10px}}
figure{{margin:0;font-size:12px;max-width:260px}} img{{image-rendering:pixelated}}</style></head><body>
<h1>Pseudo-label quality</h1>
<p>{quality['samples']} caption samples judged against their truth. A pseudo instance is <b>right</b> when an
object of the named class has box IoU &ge; 0.5 with it (green outline), otherwise <b>wrong</b> (red). Recall counts
the objects that are in the image and mentioned by its caption; chance is the precision of picking a random
object of the image for each word.</p>
{_table(quality)}
{curve_html}
{''.join(sections)}
</body></html>
"""
    page_path = report / "gallery.html"
    page_path.write_text(page, encoding="utf-8")
    return page_path
