"""Teacher training throughput: DeepSpeed ZeRO 0/1/2 against plain torch DDP, same config, same workers.

`python jobs/benchmark_train.py [--steps N] [--out FILE] [key=value ...]` prints a table with the
ratios to DDP and saves it as JSON. Images/s is measured over the second half of the steps (after
warm-up), from the engine's own step timing, excluding start-up and checkpointing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from xpl.cluster import connect
from xpl.config import load_config
from xpl.runtime import apply_env_defaults

VARIANTS = (("ddp", 0), ("deepspeed", 0), ("deepspeed", 1), ("deepspeed", 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="outputs/benchmarks/train.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    apply_env_defaults()

    from xpl.stages.pipeline import ensure_inputs
    from xpl.stages.teacher import run_teacher

    connect()
    rows = []
    with tempfile.TemporaryDirectory(prefix="xpl-bench-") as tmp:
        for backend, zero in VARIANTS:
            name = f"bench-{backend}-z{zero}"
            cfg = load_config(args.config, [
                *args.overrides, f"run_name={name}", f"output_dir={tmp}/{name}", "teacher.init=",
                f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"teacher.train.backend={backend}",
                f"teacher.train.zero_stage={zero}", f"teacher.train.steps={args.steps}",
                f"teacher.train.log_every={args.steps // 2}", f"teacher.train.checkpoint_every={args.steps}",
                "teacher.train.max_failures=0",
            ])
            ensure_inputs(cfg)
            result = run_teacher(cfg)
            rows.append({"backend": backend, "zero_stage": zero if backend == "deepspeed" else None,
                         "images_per_s": result["images_per_s"], "workers": cfg.teacher.train.num_workers,
                         "batch_per_worker": cfg.teacher.train.batch_size, "image_size": cfg.model.image_size,
                         "backbone": cfg.model.backbone})
    ddp = rows[0]["images_per_s"]
    print(f"\n{'variant':<16}{'images/s':>10}{'vs DDP':>9}")
    for row in rows:
        row["ratio_to_ddp"] = row["images_per_s"] / ddp
        label = "torch DDP" if row["backend"] == "ddp" else f"DeepSpeed ZeRO {row['zero_stage']}"
        print(f"{label:<16}{row['images_per_s']:>10.2f}{row['ratio_to_ddp']:>8.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
