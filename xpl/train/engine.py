"""The one training engine: Ray Train `TorchTrainer` workers that drive a DeepSpeed engine
(or plain DDP, `train.backend=ddp`, the baseline DeepSpeed is benchmarked against).

Stages describe *what* to train with a `Task` (model, batches, loss, export); this module owns
*how*: distributed init, DeepSpeed ZeRO, precision, checkpoint/report every N steps, resume from
`ray.train.get_checkpoint()` (which Ray Train restores for a run re-launched with the same name and
storage path), failure retries and rank-0 MLflow logging of window means over all ranks
(`xpl.train.meter`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from xpl.config import TrainConfig
from xpl.train.ddp import DDPEngine
from xpl.train.meter import WindowMeter
from xpl.train.optim import OPTIMIZERS, build_optimizer
from xpl.train.schedule import SCHEDULES, lr_scheduler

STATE_FILE = "xpl_state.json"
MODEL_FILE = "model.pt"


class Task(Protocol):
    """What a stage trains. Must be picklable: it travels to every Ray Train worker.

    `loss` must run the model through its call (`model(...)`), so DDP sees the forward pass;
    `unused_parameters` says whether some trainable parameters get no gradient (DDP must know).
    """

    stage: str
    unused_parameters: bool

    def build_model(self) -> torch.nn.Module: ...

    def batches(self, rank: int, world_size: int, start_step: int) -> Iterator[Any]: ...

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        """Total loss, its named parts (floats; the same names at every step and rank) and the number of
        images in the batch."""
        ...

    def export(self, model: torch.nn.Module, path: Path) -> None:
        """Write the trained model as a plain file the next stage loads."""
        ...

    def param_groups(self, model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (trainable parameters only), each with its learning rate."""
        ...


@dataclass
class TrainSettings(TrainConfig):
    """The engine's knobs: a stage's `train` section (`xpl.config.TrainConfig`, the one source of their
    defaults) plus where to log."""

    tracking_uri: str = ""
    experiment: str = "xpl"
    run_name: str = "xpl"

    def __post_init__(self) -> None:
        if self.backend not in ("deepspeed", "ddp"):
            raise ValueError(f"train.backend must be deepspeed or ddp, got {self.backend!r}")
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"train.zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.precision == "bf16" and not self.use_gpu:
            raise ValueError("train.precision=bf16 needs train.use_gpu=true (bf16 Mask R-CNN fails on CPU)")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"train.lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")

    def schedule(self) -> dict[str, Any]:
        """The keywords of `xpl.train.schedule.lr_scheduler` for this stage."""
        return {"schedule": self.lr_schedule, "total_steps": self.steps, "warmup_steps": self.warmup_steps,
                "warmup_factor": self.warmup_factor, "lr_steps": tuple(self.lr_steps), "lr_gamma": self.lr_gamma}

    def optimizer_for(self, model: torch.nn.Module, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """The stage's optimizer over `groups` (`xpl.train.optim.build_optimizer`)."""
        return build_optimizer(model, groups, optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, bias_lr_factor=self.bias_lr_factor,
                               bias_weight_decay=self.bias_weight_decay)


def resolved_precision(settings: TrainSettings) -> str:
    """bf16 on GPUs that support it when precision is auto; fp32 on CPU."""
    if settings.precision != "auto":
        return settings.precision
    if settings.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def deepspeed_config(settings: TrainSettings, precision: str) -> dict[str, Any]:
    """The DeepSpeed config for one worker (the optimizer and schedule are passed as objects)."""
    return {
        "train_micro_batch_size_per_gpu": settings.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": settings.grad_clip,
        "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: DeepSpeed init, resume, step loop, checkpoint + report."""
    import deepspeed
    import ray.train
    import ray.train.torch

    from xpl.runtime import apply_env_defaults

    begun = time.perf_counter()
    apply_env_defaults()
    # DeepSpeed's ZeRO calls a torch.distributed function that torch deprecates, once per step
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    task: Task = config["task"]
    settings: TrainSettings = config["settings"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if not settings.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    deepspeed.init_distributed(dist_backend="nccl" if settings.use_gpu else "gloo")
    torch.manual_seed(settings.seed + rank)

    precision = resolved_precision(settings)
    model = task.build_model().to(device)
    optimizer = settings.optimizer_for(model, task.param_groups(model, settings.lr))
    if settings.backend == "ddp":
        scheduler = lr_scheduler(optimizer, **settings.schedule())
        engine = DDPEngine(model, optimizer, scheduler, settings.grad_clip, task.unused_parameters)
    else:
        engine, _, _, scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: lr_scheduler(opt, **settings.schedule()),
            config=deepspeed_config(settings, precision),
        )

    # DeepSpeed's bf16 mode casts the weights itself; plain DDP keeps fp32 weights under autocast.
    autocast = precision == "bf16" and settings.backend == "ddp"
    start_step = _restore(engine)
    logger = _RankZeroLogger(settings, task.stage, rank, start_step, precision, time.perf_counter() - begun)
    batches = task.batches(rank, world, start_step)
    engine.train()
    meter = WindowMeter()
    last: dict[str, float] = {}
    for step in range(start_step, settings.steps):
        clock = PhaseClock(device)
        batch = next(batches)
        clock.lap("data")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, parts, n_images = task.loss(engine, batch, device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{task.stage}: non-finite loss {loss.item()} at step {step}: {parts}")
        clock.lap("forward")
        engine.backward(loss)
        clock.lap("backward")
        engine.step()
        clock.lap("optimizer")
        meter.add(float(loss.item()), {**parts, **clock.ms}, n_images, clock.total)
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            last = {**meter.summary(device), "lr": scheduler.get_last_lr()[0]}
            if done == settings.steps:
                last["peak_memory_mb"] = peak_memory_mb(device)
            logger.log(done, last)
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            _checkpoint(engine, task, done, rank, {**last, "step": done})
    logger.close()


class PhaseClock:
    """Milliseconds of each phase of one step (`ms_<phase>`, logged as window means), so a slow stage shows
    whether data, forward, backward (with DeepSpeed's gradient reduction) or the optimizer holds it up.
    On a GPU each lap waits for the device first, so the time lands in the phase that queued the work."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ms, self.total = device, {}, 0.0
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.ms[f"ms_{phase}"] = 1000 * (now - self._last)
        self.total += now - self._last
        self._last = now


def peak_memory_mb(device: torch.device) -> float:
    """This worker's peak memory so far: the CUDA allocator's peak on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _restore(engine: Any) -> int:
    """Load the latest reported checkpoint, if any; return the step to start from."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as ckpt_dir:
        state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
        engine.load_checkpoint(ckpt_dir, tag=state["tag"])
    return int(state["step"])


def _checkpoint(engine: Any, task: Task, step: int, rank: int, metrics: dict[str, float]) -> None:
    """Every rank saves its DeepSpeed shard, rank 0 adds the exported model; then all report."""
    import ray.train

    tag = f"step{step:08d}"
    with tempfile.TemporaryDirectory(prefix="xpl-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=tag)
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps({"step": step, "tag": tag}))
            task.export(engine.module, Path(tmp) / MODEL_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class _RankZeroLogger:
    """Per-step log lines everywhere useful; MLflow metrics from rank 0 only, into the stage's run."""

    def __init__(self, settings: TrainSettings, stage: str, rank: int, start_step: int, precision: str,
                 setup_s: float) -> None:
        self.rank, self.stage, self.steps = rank, stage, settings.steps
        self.mlflow = None
        if rank == 0 and settings.tracking_uri:
            import mlflow

            from xpl.tracking import find_or_create_run, log_params_once

            run_id = find_or_create_run(settings.tracking_uri, settings.experiment, f"{settings.run_name}/{stage}")
            mlflow.start_run(run_id=run_id)
            log_params_once({f"train.{k}": v for k, v in vars(settings).items() if k != "tracking_uri"}
                            | {"train.resolved_precision": precision})
            mlflow.log_metrics({"resumed_from_step": start_step, "setup_s": setup_s}, step=start_step)
            self.mlflow = mlflow
        if rank == 0:
            print(f"[{stage}] starting at step {start_step}/{settings.steps} ({precision}) after {setup_s:.1f} s of "
                  "set-up (DeepSpeed, model, resume)", flush=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"[{self.stage}] step {step}/{self.steps} {shown}", flush=True)
        if self.mlflow is not None:
            self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()


@dataclass
class TrainResult:
    """What a finished training run leaves: the exported model and the Ray checkpoint it came from."""

    model_path: Path
    checkpoint_path: str
    metrics: dict[str, Any]


def run_folder_name(run_name: str, stage: str) -> str:
    """The Ray Train run's folder under `train.storage_path`: its checkpoints, which a re-run resumes from."""
    return f"{run_name}-{stage}"


def fit(task: Task, settings: TrainSettings, out_dir: Path) -> TrainResult:
    """Train `task` on the running Ray cluster; copy the final exported model to `out_dir/model.pt`."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from xpl.ray_cluster import require_gpus

    if settings.use_gpu:
        require_gpus(f"{task.stage}.train.use_gpu=true")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task, "settings": settings},
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.num_workers,
            use_gpu=settings.use_gpu,
            resources_per_worker=None if settings.use_gpu else {"CPU": settings.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_folder_name(settings.run_name, task.stage),
            storage_path=_storage_uri(settings.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{task.stage}: training finished without a checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    with result.checkpoint.as_directory() as ckpt_dir:
        shutil.copyfile(Path(ckpt_dir) / MODEL_FILE, model_path)
    return TrainResult(model_path, result.checkpoint.path, dict(result.metrics or {}))


def _storage_uri(path: str) -> str:
    """Ray Train needs an absolute local path or a URI (s3://, gs://, ...)."""
    return path if "://" in path else str(Path(path).resolve())
