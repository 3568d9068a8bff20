"""Benchmark pseudo-labeling: the teacher alone vs the Ray Data pipeline with 1 and 2 actors.

    python benchmarks/pseudolabel.py [--config FILE] [key=value ...] [--actors 1 2] [--json PATH]
        [--gpu-images-per-s 260] [--gpus-per-node 1 8] [--node-cpus 8 16 32 64]

On the configured caption shards (`pseudolabel.input`) and teacher (`pseudolabel.teacher`; a freshly
initialised one from the `model` section is exported if the file does not exist):
(a)  the teacher alone in a plain single-process batched loop over pre-decoded images, with the
     torch threads of one actor (the compute limit), run before and after the pipelines (the
     reference is their mean: the machine may be shared): `model.regions` only (the paper's
     reference: the mask head on every candidate) and `model.regions(masks=False)` + `select_batch`
     (exactly the actor's model work: the mask head on the chosen regions and their grown boxes only);
     (a') regions with all cores;
(b)  the full pipeline (read, decode, teacher, paste, encode, judge, write) with 1 actor; (c) with 2,
     profiled (`xpl.pseudo.profile`: the timing layer `pseudolabel.profile` turns on).
Pipeline images/s are given three ways: end to end (with Ray Data start-up and actor model loading),
while the teacher runs (first batch in to last batch out) and steady (the same without the first
quarter of the shards, which carries the start-up of every stage's worker processes).
CPU per image by role, from the CPU seconds of every process of the local Ray cluster: model (the
actor thread's CPU inside regions + select), teacher actor other (the rest of the actor process:
Ray, Arrow), tasks (read + decode workers), writer (paste, encode, judge, write), driver (Ray Data's
executor), system (raylet, GCS, ...). "steady" takes the actors' CPU from the profiled timings of the
shards finished after the first quarter (each actor call's process CPU, spread over its rows) and the
other processes' CPU from then to the end, over those shards' images; "total" includes start-up.
Per-image stage seconds (read, decode, teacher, writer: paste, encode, judge and write as one stage,
assemble: the driver joining parts and writing manifests) are the profiled timings, summed over every shard.
Peak memory is the sampled peak of the proportional set size (PSS) over this process and its
children (the local Ray cluster).
Projection: images/s of a GPU node from the measured steady CPU cost outside the model, for a
given GPU model speed (`--gpu-images-per-s`, the README's H200 figure for the tiny backbone by
default): per node min(GPUs x GPU speed, CPUs x 1000 / CPU ms per image outside the model).
Assumptions: the teacher's host-side CPU work on a GPU is part of the GPU speed (measured there
in a plain loop), per-image CPU costs do not change with the node (same image size, same code),
and every CPU of the node can be given to the pipeline. Prints a table and writes JSON.
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
from typing import Optional


class PeakMemory:
    """Samples the PSS of this process and all its descendants every `interval` seconds."""

    def __init__(self, interval: float = 0.25) -> None:
        import psutil

        self.psutil, self.interval, self.peak, self._stop = psutil, interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.own_cpu = 0.0  # CPU seconds this sampler spent in the driver (left out of the driver's figure)

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
            cpu = time.thread_time()
            self.peak = max(self.peak, self.sample())
            self.own_cpu += time.thread_time() - cpu
            time.sleep(self.interval)

    def cpu_seconds(self) -> dict[int, tuple[str, float]]:
        """pid -> (role, CPU seconds so far) of this process and its descendants; the driver's without what
        this sampler (its thread and these readings) spent."""
        start = time.thread_time()
        me = self.psutil.Process()
        out: dict[int, tuple[str, float]] = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                times, name = proc.cpu_times(), " ".join(proc.cmdline()[:1]) if proc.pid != me.pid else "driver"
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            role = ("driver" if name == "driver" else "teacher actor" if "Teacher" in name
                    else "writer" if "ShardWriter" in name
                    else "tasks" if name.startswith("ray::") and "_StatsActor" not in name
                    else "system")
            out[proc.pid] = (role, times.user + times.system)
        self.own_cpu += time.thread_time() - start
        out[me.pid] = ("driver", out[me.pid][1] - self.own_cpu)
        return out

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def predecoded(shards, vocab, image_size: int, max_pixels: int) -> tuple[list, list]:
    """The images the teacher would see (pending samples only), decoded once, as float CHW tensors,
    and their caption words."""
    import numpy as np
    import torch

    from xpl.pseudo.decode import decode_sample
    from xpl.pseudo.source import read_shard

    images, words = [], []
    for shard in shards:
        for block in read_shard(shard):
            for row in block.to_pylist():
                if row["kind"] != "sample" or row["status"] != "pending":
                    continue
                members = {"txt": row["txt"], row["image_name"]: row["image"]}
                d = decode_sample(members, vocab=vocab, max_pixels=max_pixels, image_size=image_size)
                if d.pixels is not None:
                    images.append(torch.from_numpy(np.array(d.pixels)).permute(2, 0, 1).float() / 255)
                    words.append(d.words)
    return images, words


def bench_plain(teacher: str, images: list, batch_size: int, threads: int, select: Optional[dict] = None) -> dict:
    """(a): model.regions over batches in this process (or, when `select` holds the words, class
    embeddings and the `RegionChoice`, the actor's work: the choice's regions and selection per batch);
    model loading is not timed."""
    import torch

    from xpl.model.checkpoint import load_model
    from xpl.pseudo.choice import caption_words

    def run(batch: list, first: int) -> None:
        if select is None:
            model.regions(batch)
        else:
            words = select["words"][first:first + len(batch)]
            choice = select["choice"]
            choice.select([caption_words(w, select["embedding"]) for w in words], choice.regions(model, batch))

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = load_model(teacher)
    with torch.inference_mode():
        run(images[:batch_size], 0)  # warm-up
        with PeakMemory() as mem:
            start, cpu = time.perf_counter(), time.thread_time()
            for i in range(0, len(images), batch_size):
                run(images[i:i + batch_size], i)
            seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu
    torch.set_num_threads(old)
    return {"images": len(images), "threads": threads, "select": select is not None, "seconds": seconds,
            "images_per_s": len(images) / seconds, "cpu_ms_per_image": 1000 * cpu_seconds / len(images),
            "peak_pss_mb": mem.peak / 2**20}


def _cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role between two readings (processes started since count from zero)."""
    cpu: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        cpu[role] = cpu.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return cpu


def cpu_ms_per_image(cpu: dict[str, float], model_seconds: float, images: int) -> dict[str, float]:
    """CPU ms per image by role; the teacher actor's process split into the model and the rest."""
    ms = {role: 1000 * seconds / images for role, seconds in cpu.items()}
    ms["model"] = 1000 * model_seconds / images
    ms["teacher actor other"] = ms.pop("teacher actor", 0.0) - ms["model"]
    ms["outside model"] = sum(v for k, v in ms.items() if k != "model")
    return {k: round(v, 2) for k, v in ms.items()}


def bench_pipeline(shards, output: Path, settings, **kwargs) -> dict:
    """(b)/(c): the whole pipeline into a fresh output folder."""
    from collections import Counter

    from xpl.pseudo import manifest
    from xpl.pseudo.dataflow import run_shards
    from xpl.pseudo.profile import ms_per_image

    shutil.rmtree(output, ignore_errors=True)
    manifest.prepare_output(output)
    samples = labeled = 0
    timings: Counter[str] = Counter()
    begins, ends, finished = [], [], []
    skip = max(1, len(shards) // 4)  # the first quarter of the shards carries every stage's start-up
    mark, steady_images = None, 0
    steady = dict.fromkeys(("t_teacher_cpu", "t_teacher_process_cpu", "t_writer_process_cpu"), 0.0)
    with PeakMemory(interval=1.0) as mem:
        cpu_before = mem.cpu_seconds()
        cpu_seen = dict(cpu_before)
        start = time.perf_counter()
        for row in run_shards(shards, output=str(output), settings=settings, profile=True, **kwargs):
            samples += row["samples"]
            labeled += row["labeled"]
            timings.update(row["timings"])
            if row["teacher_begin"] is not None:
                begins.append(row["teacher_begin"])
                ends.append(row["teacher_end"])
                finished.append((row["teacher_end"], row["samples"]))
            cpu_seen.update(mem.cpu_seconds())  # the last reading of every process, also of those gone since
            if mark is not None:
                steady_images += row["samples"]
                for k in steady:
                    steady[k] += row["timings"][k]
            elif len(finished) >= skip:
                mark = dict(cpu_seen)
        wall = time.perf_counter() - start
    window = max(ends) - min(begins)
    # steady state: leave out the first quarter of the shards (by when the teacher finished them)
    finished.sort()
    steady_rate = 0.0
    if len(finished) > skip:
        steady_rate = sum(n for _, n in finished[skip:]) / (finished[-1][0] - finished[skip - 1][0])
    ms = ms_per_image(timings, samples)
    cpu_total = _cpu_by_role(cpu_before, cpu_seen)
    result = {"actors": settings.num_actors, "threads_per_actor": settings.threads_per_actor, "samples": samples,
              "labeled": labeled, "wall_s": wall,
              "images_per_s_end_to_end": samples / wall, "teacher_window_s": window,
              "images_per_s": samples / window, "images_per_s_steady": steady_rate, "startup_and_tail_s": wall - window,
              "ms_per_image": ms, "overhead_ms_per_image": sum(v for k, v in ms.items() if not k.startswith("teacher")),
              "actor_utilisation": timings.get("t_teacher", 0.0) / (window * settings.num_actors),
              "cpu_seconds_by_role": {k: round(v, 2) for k, v in cpu_total.items()},
              "cpu_ms_per_image_total": cpu_ms_per_image(cpu_total, timings.get("t_teacher_cpu", 0.0), samples),
              "peak_pss_mb": mem.peak / 2**20}
    if steady_images:
        # the actors' CPU from their rows (exactly the steady shards' images); the rest from the processes
        steady_cpu = _cpu_by_role(mark, cpu_seen)
        steady_cpu.update({"teacher actor": steady["t_teacher_process_cpu"], "writer": steady["t_writer_process_cpu"]})
        result["steady_images"] = steady_images
        result["cpu_ms_per_image_steady"] = cpu_ms_per_image(steady_cpu, steady["t_teacher_cpu"], steady_images)
    return result


def projection(outside_ms: float, gpu_images_per_s: float, gpus_per_node: list[int], node_cpus: list[int]) -> dict:
    """Images/s per GPU node: min(GPUs x GPU speed, CPUs x 1000 / CPU ms per image outside the model)."""
    cpu_bound = {c: c * 1000 / outside_ms for c in node_cpus}
    return {"gpu_images_per_s": gpu_images_per_s, "outside_model_cpu_ms_per_image": outside_ms,
            "cpus_per_gpu_needed": gpu_images_per_s * outside_ms / 1000,
            "nodes": [{"gpus": g, "cpus": c, "images_per_s": round(min(g * gpu_images_per_s, cpu_bound[c]), 1),
                       "bound": "gpu" if g * gpu_images_per_s <= cpu_bound[c] else "cpu"}
                      for g in gpus_per_node for c in node_cpus]}


def main(argv: list[str] | None = None) -> int:
    from xpl.runtime import apply_env_defaults

    apply_env_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=None,
                        help="where to save the results (default: <output_dir>/benchmark_pseudolabel.json)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="feed the pipelines every shard this many times (longer runs: steadier figures)")
    parser.add_argument("--gpu-images-per-s", type=float, default=260.0,
                        help="GPU model speed for the projection (README: H200, tiny backbone, regions())")
    parser.add_argument("--gpus-per-node", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--node-cpus", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import dataclasses

    import ray
    import torch

    from xpl.ray_cluster import start_local_ray
    from xpl.config import load_config
    from xpl.data.captions import expand_urls
    from xpl.pseudo import manifest
    from xpl.pseudo.choice import RegionChoice
    from xpl.pseudo.dataflow import Settings
    from xpl.pseudo.source import ShardTask
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
    threads = settings.threads_per_actor
    images, words = predecoded(shards, vocab, settings.image_size, settings.max_pixels)
    class_embeddings = TextEncoder(cfg.text.model).embed(vocab.names)
    embeddings = class_embeddings.numpy()
    choice = RegionChoice.from_config(pl, class_embeddings, cfg.model.logit_scale)
    select = {"words": words, "embedding": dict(zip(vocab.ids, class_embeddings)), "choice": choice}
    results = {"load_average": list(os.getloadavg()), "device": "cpu", "cpus": torch.get_num_threads(),
               "shards": len(shards), "repeat": args.repeat,
               "batch_size": settings.batch_size, "image_size": settings.image_size, "teacher": str(teacher),
               "model": dict(cfg.model)}
    results["a_plain"] = bench_plain(str(teacher), images, settings.batch_size, threads)
    results["a_select"] = bench_plain(str(teacher), images, settings.batch_size, threads, select)
    results["a_plain_all_cores"] = bench_plain(str(teacher), images, settings.batch_size, torch.get_num_threads())
    start_local_ray(num_cpus=int(torch.get_num_threads()), include_dashboard=False)
    scratch = Path(tempfile.mkdtemp(prefix="xpl-bench-"))
    try:
        total = float(torch.get_num_threads())
        for n in args.actors:
            # each actor reserves the CPUs its torch threads use, as far as that leaves one CPU to the
            # read/decode/instance/writer tasks (on 2 CPUs: 1 actor 1.0, 2 actors 0.5 each)
            cpus = min(float(threads), max(0.25, (total - 1) / n))
            run = dataclasses.replace(settings, num_actors=n, num_cpus_per_actor=cpus, threads_per_actor=threads)
            repeated = [ShardTask(s.url, f"{s.name}-{i}") for i in range(args.repeat) for s in shards]
            results[f"pipeline_{n}_actor"] = bench_pipeline(
                repeated, scratch / f"out{n}", run, teacher=str(teacher), vocab=vocab, class_embeddings=embeddings,
                choice=choice)
            results[f"pipeline_{n}_actor"]["cpus_per_actor"] = cpus
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        ray.shutdown()
    # (a) again after the pipelines: the machine may be shared, so the reference is the mean of both
    results["a_plain_repeat"] = bench_plain(str(teacher), images, settings.batch_size, threads)
    results["a_select_repeat"] = bench_plain(str(teacher), images, settings.batch_size, threads, select)
    a = (results["a_plain"]["images_per_s"] + results["a_plain_repeat"]["images_per_s"]) / 2
    a_select = (results["a_select"]["images_per_s"] + results["a_select_repeat"]["images_per_s"]) / 2
    results["a_images_per_s"], results["a_select_images_per_s"] = a, a_select
    one = results.get("pipeline_1_actor")
    two = results.get("pipeline_2_actor")
    if one:
        results["efficiency_1_actor_steady"] = one["images_per_s_steady"] / a
        results["efficiency_1_actor_steady_vs_select"] = one["images_per_s_steady"] / a_select
        results["efficiency_1_actor"] = one["images_per_s"] / a
        results["efficiency_1_actor_end_to_end"] = one["images_per_s_end_to_end"] / a
        if "cpu_ms_per_image_steady" in one:
            results["projection"] = projection(one["cpu_ms_per_image_steady"]["outside model"], args.gpu_images_per_s,
                                               args.gpus_per_node, args.node_cpus)
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
             f"load average before {r['load_average'][0]:.2f}, after {r['load_average_after'][0]:.2f}"]
    for key in ("a_plain", "a_plain_repeat", "a_select", "a_select_repeat", "a_plain_all_cores"):
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
        lines.append(f"      stage seconds per image (ms): {stages}; "
                     f"actor busy {100 * x['actor_utilisation']:.1f} % of the teacher window")
        for which in ("steady", "total"):
            if f"cpu_ms_per_image_{which}" in x:
                roles = ", ".join(f"{k} {v:.2f}" for k, v in x[f"cpu_ms_per_image_{which}"].items())
                lines.append(f"      CPU ms per image, {which}: {roles}")
    ratios = ("efficiency_1_actor_steady", "efficiency_1_actor_steady_vs_select", "efficiency_1_actor",
              "efficiency_1_actor_end_to_end", "scaling_2_over_1_steady", "scaling_2_over_1",
              "scaling_2_over_1_end_to_end")
    for key in ratios:
        if key in r:
            lines.append(f"  {key:<38} {r[key]:.3f}")
    if "projection" in r:
        p = r["projection"]
        lines.append(f"  projection at {p['gpu_images_per_s']:.0f} img/s per GPU, "
                     f"{p['outside_model_cpu_ms_per_image']:.2f} CPU ms per image outside the model "
                     f"({p['cpus_per_gpu_needed']:.2f} CPUs per GPU):")
        lines.append("    " + "; ".join(f"{n['gpus']} GPU {n['cpus']} CPU: {n['images_per_s']:.0f} img/s ({n['bound']})"
                                       for n in p["nodes"]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
