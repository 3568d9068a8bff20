"""Seed study: the plain and the robust student on the same teacher and pseudo-labels, over several seeds and noise
conditions, each evaluated on val; the mean and spread of every AP figure, the robust - plain differences seed by
seed, and what sigma says of the pseudo labels (AUROC for wrong pixels, Spearman against mask IoU).

    python benchmarks/seed_study.py --config configs/shapes.yaml [--seeds 5] [--conditions natural,corrupt30,systematic]
                                    [--modes plain,expected_likelihood] [--systematic-class moon]
                                    [--systematic-share 0.8] [--out DIR] [key=value ...]

Conditions: `natural` (the pseudo-labels as they are), `corrupt30` (30 % of pseudo instances corrupted, every class),
`systematic` (one novel class's instances corrupted at `--systematic-share`, the others left alone); corruption is
seeded and the same for both students (`xpl.data.corrupt`). It reads the teacher and the pseudo-labels of a finished
main job (`student.init`, `student.pseudo`); students go to `<out>/<condition>_<mode>_s<seed>` (default
`<output_dir>/seed_study`), and a run already done there is reused. Writes `seed_study.md` and `seed_study.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from xpl.config import load_config
from xpl.ray_cluster import connect
from xpl.runtime import apply_env_defaults

CONDITIONS = ("natural", "corrupt30", "systematic")
MODES = ("plain", "expected_likelihood")
FIGURES = [f"{setting}.{subset}.{kind}" for setting, subsets in (("generalized", ("novel", "base", "all")),
                                                                   ("constrained", ("novel", "base")))
           for subset in subsets for kind in ("mask_AP", "mask_AP50")]
SIGMA = ("sigma.all.auroc", "sigma.novel.auroc", "sigma.all.spearman")


def condition_config(base: DictConfig, condition: str, mode: str, seed: int, out: Path, systematic: tuple[str, float]
                     ) -> DictConfig:
    """The student config of one run: its name, mode, training seed and corruption."""
    corrupt = {"natural": {"share": 0.0, "classes": {}}, "corrupt30": {"share": 0.3, "classes": {}},
               "systematic": {"share": 0.0, "classes": {systematic[0]: systematic[1]}}}[condition]
    name = f"{condition}_{'robust' if mode != 'plain' else 'plain'}_s{seed}"
    return OmegaConf.merge(base, {"output_dir": str(out), "student": {
        "name": name, "mode": mode, "corrupt": corrupt, "train": {"seed": seed}}})


def run_one(cfg: DictConfig, systematic_class: str) -> dict[str, Any]:
    """Train (or reuse) one student, evaluate it on val; its AP figures and sigma report."""
    from xpl.stages.evaluate import run_evaluate
    from xpl.stages.student import run_student

    done = Path(cfg.output_dir) / f"{cfg.student.name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    trained = run_student(cfg)
    metrics = run_evaluate(cfg, checkpoint=trained["model"], classes=[systematic_class])["metrics"]
    sigma = trained.get("sigma_report") or {}
    row = {**{k: metrics.get(k) for k in metrics}, **{key: _sigma(sigma, key) for key in SIGMA},
           "mlflow_run_id": trained["mlflow_run_id"]}
    done.write_text(json.dumps(row, indent=1))
    return row


def _sigma(report: dict[str, Any], key: str) -> Optional[float]:
    _, split, stat = key.split(".")
    return report.get("splits", {}).get(split, {}).get(stat)


def spread(values: list[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation of the defined values (None when there are none / one)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None, None
    return statistics.mean(kept), statistics.stdev(kept) if len(kept) > 1 else None


def _cell(mean: Optional[float], sd: Optional[float]) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.1f} ± {sd:.1f}" if sd is not None and abs(mean) >= 1 else \
        f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def tables(rows: dict[str, dict[str, list[dict[str, Any]]]], figures: list[str]) -> str:
    """Per condition: each mode's mean ± sd over seeds, then robust - plain (mean ± sd of the paired differences)."""
    lines = []
    for condition, by_mode in rows.items():
        lines += [f"### {condition}", "", "| student | " + " | ".join(figures) + " |", "|---" * (len(figures) + 1) + "|"]
        for mode, runs in by_mode.items():
            lines.append(f"| {mode} ({len(runs)} seeds) | " +
                         " | ".join(_cell(*spread([r.get(f) for r in runs])) for f in figures) + " |")
        if set(by_mode) == set(MODES):
            pairs = list(zip(by_mode["expected_likelihood"], by_mode["plain"]))
            diffs = [_cell(*spread([a.get(f) - b.get(f) if a.get(f) is not None and b.get(f) is not None else None
                                    for a, b in pairs])) for f in figures]
            lines.append("| robust - plain | " + " | ".join(diffs) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--systematic-class", default="moon")
    parser.add_argument("--systematic-share", type=float, default=0.8)
    parser.add_argument("--out", default=None, help="folder of the study's students (default <output_dir>/seed_study)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    conditions, modes = args.conditions.split(","), args.modes.split(",")
    for given, known, flag in ((conditions, CONDITIONS, "--conditions"), (modes, MODES, "--modes")):
        if unknown := sorted(set(given) - set(known)):
            parser.error(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    apply_env_defaults()
    connect()
    base = load_config(args.config, args.overrides)
    out = Path(args.out or Path(base.output_dir) / "seed_study")
    out.mkdir(parents=True, exist_ok=True)
    systematic = (args.systematic_class, args.systematic_share)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for condition in conditions:
        for mode in modes:
            for seed in range(args.seeds):
                cfg = condition_config(base, condition, mode, seed, out, systematic)
                rows.setdefault(condition, {}).setdefault(mode, []).append(run_one(cfg, args.systematic_class))
    figures = [*FIGURES, f"generalized.{args.systematic_class}.mask_AP", *SIGMA]
    text = (f"Seed study: {args.seeds} seeds per student; systematic = {args.systematic_class} at "
            f"{args.systematic_share:.0%}; AP in % on val (mean ± sd over seeds).\n\n" + tables(rows, figures))
    (out / "seed_study.md").write_text(text)
    (out / "seed_study.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\n{text}\nsaved {out / 'seed_study.md'}", flush=True)


if __name__ == "__main__":
    main()
