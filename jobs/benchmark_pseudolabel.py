"""Benchmark pseudo-labeling: the teacher alone vs the Ray Data pipeline with 1 and 2 actors.

    python jobs/benchmark_pseudolabel.py [--config FILE] [key=value ...] [--actors 1 2] [--json PATH]

On the configured caption shards (`pseudolabel.input`) and teacher (`pseudolabel.teacher`; a freshly
initialised one from the `model` section is exported if the file does not exist):
(a)  the teacher alone: `model.regions` in a plain single-process batched loop over pre-decoded
     images, with the torch threads of one actor (the compute limit), run before and after the
     pipelines (the reference is their mean: the machine may be shared); (a') with all cores;
(b)  the full pipeline (read, decode, teacher, align, encode, write) with 1 actor; (c) with 2.
Pipeline images/s are given three ways: end to end (with Ray Data start-up and actor model loading),
while the teacher runs (first batch in to last batch out) and steady (the same without the first
quarter of the shards, which carries the start-up of every stage's worker processes).
Per-image stage costs (read, decode, align, encode, write) are summed from every row. Peak memory
is the sampled peak of the proportional set size (PSS) summed over this process and its children
(the local Ray cluster). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path


class PeakMemory:
    """Samples the PSS of this process and all its descendants every `interval` seconds."""

    def __init__(self, interval: float = 0.25) -> None:
        import psutil

        self.psutil, self.interval, self.peak, self._stop = psutil, interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        me = self.psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            time.sleep(self.interval)

    def cpu_seconds(self) -> dict[int, tuple[str, float]]:
        """pid -> (role, CPU seconds so far) of this process and its descendants."""
        me = self.psutil.Process()
        out: dict[int, tuple[str, float]] = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                times, name = proc.cpu_times(), " ".join(proc.cmdline()[:1]) if proc.pid != me.pid else "driver"
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            role = ("driver" if name == "driver" else "teacher actors" if "Teacher" in name
                    else "writer actor" if "ShardWriter" in name else "task workers" if name.startswith("ray::")
                    else "ray system")
            out[proc.pid] = (role, times.user + times.system)
        return out

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def predecoded(shards, vocab, image_size: int, max_pixels: int) -> list:
    """The images the teacher would see (pending samples only), decoded once, as float CHW tensors."""
    import numpy as np
    import torch

    from xpl.pseudo.decode import decode_sample
    from xpl.pseudo.source import read_shard

    images = []
    for shard in shards:
        for block in read_shard(shard):
            for row in block.to_pylist():
                if row["kind"] != "sample" or row["status"] != "pending":
                    continue
                members = {"txt": row["txt"], row["image_name"]: row["image"]}
                d = decode_sample(members, vocab=vocab, max_pixels=max_pixels, image_size=image_size)
                if d.pixels is not None:
                    images.append(torch.from_numpy(np.array(d.pixels)).permute(2, 0, 1).float() / 255)
    return images


def bench_plain(teacher: str, images: list, batch_size: int, threads: int) -> dict:
    """(a): model.regions over batches in this process; model loading is not timed."""
    import torch

    from xpl.model.checkpoint import load_model

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = load_model(teacher)
    with torch.inference_mode():
        model.regions(images[:batch_size])  # warm-up
        with PeakMemory() as mem:
            start, cpu = time.perf_counter(), time.thread_time()
            for i in range(0, len(images), batch_size):
                model.regions(images[i:i + batch_size])
            seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu
    torch.set_num_threads(old)
    return {"images": len(images), "threads": threads, "seconds": seconds, "images_per_s": len(images) / seconds,
            "cpu_ms_per_image": 1000 * cpu_seconds / len(images),
            "peak_pss_mb": mem.peak / 2**20}


def bench_pipeline(shards, output: Path, settings, **kwargs) -> dict:
    """(b)/(c): the whole pipeline into a fresh output folder."""
    from xpl.pseudo import manifest
    from xpl.pseudo.dataflow import run_shards

    shutil.rmtree(output, ignore_errors=True)
    manifest.prepare_output(output)
    samples = labeled = 0
    timings: dict[str, float] = {}
    begins, ends, finished = [], [], []
    with PeakMemory(interval=1.0) as mem:
        cpu_before = mem.cpu_seconds()
        cpu_seen = dict(cpu_before)
        start = time.perf_counter()
        for row in run_shards(shards, output=str(output), settings=settings, **kwargs):
            samples += row["samples"]
            labeled += row["labeled"]
            for k, v in row["timings"].items():
                timings[k] = timings.get(k, 0.0) + v
            if row["teacher_begin"] is not None:
                begins.append(row["teacher_begin"])
                ends.append(row["teacher_end"])
                finished.append((row["teacher_end"], row["samples"]))
            cpu_seen.update(mem.cpu_seconds())  # the last reading of every process, also of those gone since
        wall = time.perf_counter() - start
    cpu: dict[str, float] = {}
    for pid, (role, seconds) in cpu_seen.items():
        cpu[role] = round(cpu.get(role, 0.0) + seconds - cpu_before.get(pid, (role, 0.0))[1], 2)
    window = max(ends) - min(begins)
    # steady state: leave out the first quarter of the shards (by when the teacher finished them),
    # which carries the start-up of the workers of every stage
    finished.sort()
    skip = max(1, len(finished) // 4)
    steady = 0.0
    if len(finished) > skip:
        steady = sum(n for _, n in finished[skip:]) / (finished[-1][0] - finished[skip - 1][0])
    ms = {k.removeprefix("t_"): 1000 * v / samples for k, v in timings.items()}
    return {"actors": settings.num_actors, "threads_per_actor": settings.torch_threads, "samples": samples,
            "labeled": labeled, "wall_s": wall,
            "images_per_s_end_to_end": samples / wall, "teacher_window_s": window,
            "images_per_s": samples / window, "images_per_s_steady": steady, "startup_and_tail_s": wall - window,
            "ms_per_image": ms, "overhead_ms_per_image": sum(v for k, v in ms.items() if not k.startswith("teacher")),
            "actor_utilisation": timings.get("t_teacher", 0.0) / (window * settings.num_actors),
            "cpu_seconds_by_role": cpu, "peak_pss_mb": mem.peak / 2**20}


def main(argv: list[str] | None = None) -> int:
    from xpl.runtime import apply_env_defaults

    apply_env_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=None,
                        help="where to save the results (default: <output_dir>/benchmark_pseudolabel.json)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import dataclasses

    import ray
    import torch

    from xpl.ray_cluster import start_local_ray
    from xpl.config import load_config
    from xpl.data.captions import expand_urls
    from xpl.pseudo import manifest
    from xpl.pseudo.dataflow import Settings
    from xpl.text import TextEncoder
    from xpl.vocab import Vocabulary

    cfg = load_config(args.config, args.overrides)
    pl = cfg.pseudolabel
    teacher = Path(pl.teacher)
    if not teacher.is_file():
        from xpl.model.checkpoint import export_model
        from xpl.model.detector import OpenVocabMaskRCNN

        torch.manual_seed(0)
        export_model(OpenVocabMaskRCNN.from_config(cfg.model, TextEncoder(cfg.text.model).dim), teacher)
        print(f"exported a freshly initialised teacher to {teacher}")
    vocab = Vocabulary.load(cfg.data.vocab)
    shards = manifest.plan_shards(expand_urls(pl.input))
    settings = Settings.from_config(pl)
    threads = settings.torch_threads
    images = predecoded(shards, vocab, settings.image_size, settings.max_pixels)
    results = {"load_average": list(os.getloadavg()), "device": "cpu", "cpus": torch.get_num_threads(),
               "shards": len(shards),
               "batch_size": settings.batch_size, "image_size": settings.image_size, "teacher": str(teacher),
               "model": dict(cfg.model)}
    results["a_plain"] = bench_plain(str(teacher), images, settings.batch_size, threads)
    results["a_plain_all_cores"] = bench_plain(str(teacher), images, settings.batch_size, torch.get_num_threads())
    embeddings = TextEncoder(cfg.text.model).embed(vocab.names).numpy()
    start_local_ray(num_cpus=int(torch.get_num_threads()), include_dashboard=False)
    scratch = Path(tempfile.mkdtemp(prefix="xpl-bench-"))
    try:
        total = float(torch.get_num_threads())
        for n in args.actors:
            # each actor reserves the CPUs its torch threads use, as far as that leaves one CPU to the
            # read/decode/instance/writer tasks (on 2 CPUs: 1 actor 1.0, 2 actors 0.5 each)
            cpus = min(float(threads), max(0.25, (total - 1) / n))
            run = dataclasses.replace(settings, num_actors=n, num_cpus_per_actor=cpus, threads_per_actor=threads)
            results[f"pipeline_{n}_actor"] = bench_pipeline(
                shards, scratch / f"out{n}", run, teacher=str(teacher), vocab=vocab, class_embeddings=embeddings)
            results[f"pipeline_{n}_actor"]["cpus_per_actor"] = cpus
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        ray.shutdown()
    # (a) again after the pipelines: the machine may be shared, so the reference is the mean of both
    results["a_plain_repeat"] = bench_plain(str(teacher), images, settings.batch_size, threads)
    a = (results["a_plain"]["images_per_s"] + results["a_plain_repeat"]["images_per_s"]) / 2
    results["a_images_per_s"] = a
    one = results.get("pipeline_1_actor")
    two = results.get("pipeline_2_actor")
    if one:
        results["efficiency_1_actor_steady"] = one["images_per_s_steady"] / a
        results["efficiency_1_actor"] = one["images_per_s"] / a
        results["efficiency_1_actor_end_to_end"] = one["images_per_s_end_to_end"] / a
    if one and two:
        results["scaling_2_over_1_steady"] = two["images_per_s_steady"] / one["images_per_s_steady"]
        results["scaling_2_over_1"] = two["images_per_s"] / one["images_per_s"]
        results["scaling_2_over_1_end_to_end"] = two["images_per_s_end_to_end"] / one["images_per_s_end_to_end"]
    results["load_average_after"] = list(os.getloadavg())
    print(report(results))
    path = Path(args.json or Path(cfg.output_dir) / "benchmark_pseudolabel.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"saved {path}")
    return 0


def report(r: dict) -> str:
    lines = [f"{r['a_plain']['images']} images, batch {r['batch_size']}, {r['image_size']} px, "
             f"{r['cpus']} CPU threads, "
             f"load average before {r['load_average'][0]:.2f}"]
    for key in ("a_plain", "a_plain_repeat", "a_plain_all_cores"):
        x = r[key]
        lines.append(f"  {key:<22} {x['images_per_s']:7.2f} img/s   ({x['threads']} threads, "
                     f"{1000 / x['images_per_s']:.1f} ms per image, main thread CPU {x['cpu_ms_per_image']:.1f} ms)"
                     f"   peak PSS {x['peak_pss_mb']:.0f} MB")
    for key in [k for k in r if k.startswith("pipeline_")]:
        x = r[key]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in x["ms_per_image"].items())
        lines.append(f"  {key:<22} {x['images_per_s_steady']:7.2f} img/s steady, "
                     f"{x['images_per_s']:.2f} while the teacher runs, "
                     f"{x['images_per_s_end_to_end']:.2f} end to end (wall {x['wall_s']:.1f} s, start-up + tail "
                     f"{x['startup_and_tail_s']:.1f} s)   peak PSS {x['peak_pss_mb']:.0f} MB")
        lines.append(f"      ms per image: {stages}; overhead (all but teacher) {x['overhead_ms_per_image']:.2f}; "
                     f"actor busy {100 * x['actor_utilisation']:.1f} % of the teacher window")
        roles = ", ".join(f"{k} {v:.1f}" for k, v in x["cpu_seconds_by_role"].items())
        lines.append(f"      CPU seconds by role (start-up included): {roles}")
    ratios = ("efficiency_1_actor_steady", "efficiency_1_actor", "efficiency_1_actor_end_to_end",
              "scaling_2_over_1_steady", "scaling_2_over_1", "scaling_2_over_1_end_to_end")
    for key in ratios:
        if key in r:
            lines.append(f"  {key:<30} {r[key]:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
