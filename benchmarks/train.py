"""Training throughput. Teacher: DeepSpeed ZeRO 0/1/2 against plain torch DDP. Student (`--student`): the
robust mask loss with T = 1, 5, 10 Monte-Carlo samples against the plain loss. Same config, same workers.

`python benchmarks/train.py [--student] [--steps N] [--out FILE] [key=value ...]` prints a table with the
ratios to the first variant and saves it as JSON. Images/s is measured over the second half of the steps
(after warm-up), from the engine's own step timing, excluding start-up and checkpointing; peak memory is
rank 0's (peak RSS on CPU, the CUDA allocator's peak on GPU). The student variants read the teacher and the
pseudo-labeled shards of a finished `make demo` (`student.init`, `student.pseudo`: override to point elsewhere).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from xpl.ray_cluster import connect
from xpl.config import load_config
from xpl.runtime import apply_env_defaults

VARIANTS = (("ddp", 0), ("deepspeed", 0), ("deepspeed", 1), ("deepspeed", 2))
STUDENT_VARIANTS = (("plain", 1), ("expected_likelihood", 1), ("expected_likelihood", 5), ("expected_likelihood", 10))


def teacher_rows(args: argparse.Namespace, tmp: str) -> list[dict]:
    from xpl.stages.pipeline import ensure_inputs
    from xpl.stages.teacher import run_teacher

    rows = []
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
        label = "torch DDP" if backend == "ddp" else f"DeepSpeed ZeRO {zero}"
        rows.append({"variant": label, "backend": backend, "zero_stage": zero if backend == "deepspeed" else None,
                     "images_per_s": result["images_per_s"], "peak_memory_mb": result.get("peak_memory_mb"),
                     "workers": cfg.teacher.train.num_workers, "batch_per_worker": cfg.teacher.train.batch_size,
                     "image_size": cfg.model.image_size, "backbone": cfg.model.backbone})
    return rows


def student_rows(args: argparse.Namespace, tmp: str) -> list[dict]:
    from xpl.stages.student import run_student

    base = load_config(args.config, args.overrides)  # the demo's output_dir, before it is replaced below
    rows = []
    for mode, samples in STUDENT_VARIANTS:
        name = f"bench-student-{mode}-t{samples}"
        cfg = load_config(args.config, [
            f"student.init={base.student.init}", f"student.pseudo={base.student.pseudo}", *args.overrides,
            f"run_name={name}", f"output_dir={tmp}/{name}", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            f"student.mode={mode}", f"student.samples={samples}", f"student.train.steps={args.steps}",
            f"student.train.log_every={args.steps // 2}", f"student.train.checkpoint_every={args.steps}",
            "student.train.max_failures=0",
        ])
        result = run_student(cfg)
        label = "plain BCE" if mode == "plain" else f"robust T={samples}"
        rows.append({"variant": label, "mode": mode, "samples": samples, "images_per_s": result["images_per_s"],
                     "peak_memory_mb": result.get("peak_memory_mb"), "workers": cfg.student.train.num_workers,
                     "batch_per_worker": cfg.student.train.batch_size + cfg.student.pseudo_batch_size,
                     "image_size": cfg.model.image_size, "backbone": cfg.model.backbone})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--student", action="store_true", help="benchmark the student's mask losses instead")
    parser.add_argument("--out", default=None, help="default: outputs/benchmarks/{train,student}.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    apply_env_defaults()

    connect()
    with tempfile.TemporaryDirectory(prefix="xpl-bench-") as tmp:
        rows = student_rows(args, tmp) if args.student else teacher_rows(args, tmp)
    first = rows[0]["images_per_s"]
    print(f"\n{'variant':<18}{'images/s':>10}{'step time':>11}{'peak MiB':>10}")
    for row in rows:
        row["step_time_ratio"] = first / row["images_per_s"]
        memory = f"{row['peak_memory_mb']:.0f}" if row["peak_memory_mb"] is not None else "n/a"
        print(f"{row['variant']:<18}{row['images_per_s']:>10.2f}{row['step_time_ratio']:>10.2f}x{memory:>10}")
    out = Path(args.out or f"outputs/benchmarks/{'student' if args.student else 'train'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
