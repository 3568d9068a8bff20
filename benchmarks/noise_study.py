"""Noise study: the plain and the robust student on the same pseudo-labels, a seeded share of whose masks is
corrupted (dilated, eroded, shifted, cut or swapped: `xpl.data.corrupt`), then both evaluated.

`python benchmarks/noise_study.py --config configs/shapes.yaml [--share 0.5] [--modes ...] [key=value ...]` reads the
teacher and pseudo-labels of a finished `make demo` (`student.init`, `student.pseudo`), prints a table (generalized
and constrained mask AP50 on novel and base, mean sigma on corrupted and clean instances) and writes it to
`<output_dir>/noise_study.{md,json}`. `--modes expected_likelihood` trains the robust student only. Runs under
`ray job submit` as well.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from xpl.config import load_config
from xpl.ray_cluster import connect
from xpl.runtime import apply_env_defaults

MODES = ("plain", "expected_likelihood")
COLUMNS = ("generalized.novel.mask_AP50", "generalized.base.mask_AP50", "constrained.novel.mask_AP50",
           "constrained.base.mask_AP50")


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--share", type=float, default=0.5, help="share of pseudo instances corrupted")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"students to train, comma-separated ({','.join(MODES)})")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := sorted(set(modes) - set(MODES)):
        parser.error(f"--modes: unknown {', '.join(unknown)} (choose from {', '.join(MODES)})")
    apply_env_defaults()

    from xpl.stages.evaluate import run_evaluate
    from xpl.stages.student import run_student

    connect()
    base = load_config(args.config, args.overrides)
    rows = {}
    for mode in modes:
        name = f"noise{round(100 * args.share)}_{'robust' if mode != 'plain' else 'plain'}"
        cfg = OmegaConf.merge(base, {"student": {"name": name, "mode": mode, "corrupt": {"share": args.share}}})
        trained = run_student(cfg)
        metrics = run_evaluate(cfg, checkpoint=trained["model"])["metrics"]
        rows[name] = {"mode": mode, **{k: metrics.get(k) for k in COLUMNS},
                      "sigma_corrupted": trained.get("sigma_corrupted"), "sigma_clean": trained.get("sigma_clean"),
                      "mlflow_run_id": trained["mlflow_run_id"]}
    header = ["student", *(c.replace(".mask_AP50", "").replace(".", " ") + " AP50" for c in COLUMNS),
              "sigma corrupted", "sigma clean"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, row in rows.items():
        cells = [name, *(_cell(row[c]) for c in COLUMNS), _cell(row["sigma_corrupted"]), _cell(row["sigma_clean"])]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join([f"Pseudo masks corrupted: {args.share:.0%} of instances (seed {base.student.corrupt.seed}).",
                       "", *lines]) + "\n"
    out = Path(base.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "noise_study.md").write_text(table)
    (out / "noise_study.json").write_text(json.dumps({"share": args.share, "rows": rows}, indent=1))
    print(f"\n{table}\nsaved {out / 'noise_study.md'}", flush=True)


if __name__ == "__main__":
    main()
