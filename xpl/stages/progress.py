"""One progress line per update for a training stage of the main job, read from its MLflow run.

The main job keeps the Ray workers' own output out of its console (it stays in Ray's log files), so what
the user sees of a training stage comes from the metrics its rank-0 worker logs to MLflow every
`log_every` steps: step, loss, images/s and the time left. This works wherever the workers run, since
they all log to the same tracking store.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Optional

log = logging.getLogger(__name__)


def progress_line(stage: str, step: int, steps: int, loss: Optional[float], images_per_s: Optional[float],
                  elapsed_s: float, seconds_per_step: Optional[float] = None) -> str:
    """`[stage] step 120/600 (20 %)  loss 2.41  8.6 images/s  2m00s in, about 8m00s left` (time left only
    when the pace is known)."""
    parts = [f"[{stage}] step {step}/{steps} ({100 * step // max(steps, 1)} %)"]
    if loss is not None:
        parts.append(f"loss {loss:.3g}")
    if images_per_s is not None:
        parts.append(f"{images_per_s:.1f} images/s")
    timing = f"{_clock(elapsed_s)} in"
    if seconds_per_step is not None and step < steps:
        timing += f", about {_clock(seconds_per_step * (steps - step))} left"
    return "  ".join([*parts, timing])


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


class StageProgress:
    """While the `with` block runs, print the stage's progress every `every_s` seconds when it has advanced
    (on a terminal, one line rewritten in place). The time left follows the pace since the first step seen,
    so the stage's set-up does not count as training time.

    Only metrics logged after the block began count, so an earlier run of the same stage (the MLflow run is
    kept across re-runs) does not show as progress.
    """

    def __init__(self, uri: str, experiment: str, key: str, stage: str, steps: int, every_s: float = 15.0) -> None:
        self.uri, self.experiment, self.key, self.stage, self.steps = uri, experiment, key, stage, steps
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{stage}", daemon=True)
        self._start = 0.0
        self._shown = 0
        self._first: Optional[tuple[float, int]] = None  # (time, step) of the first step seen: the pace after set-up
        self._tty = sys.stdout.isatty()

    def __enter__(self) -> "StageProgress":
        self._start = time.time()
        self._thread.start()
        return self

    def __exit__(self, kind: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s)
        if self._tty and self._shown:
            print(flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                line = self.poll()
            except Exception as exc:  # a busy or locked store must not stop the stage: say so, try again
                log.warning("progress of %s: could not read the MLflow store (%s)", self.stage, exc)
                continue
            if line is not None:
                print(f"\r{line}" if self._tty else line, end="" if self._tty else "\n", flush=True)

    def poll(self) -> Optional[str]:
        """The line to print if the stage advanced since the last one, else None."""
        from mlflow.tracking import MlflowClient

        from xpl.tracking import RUN_KEY_TAG

        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{self.key}'",
                                  max_results=1)
        if not runs:
            return None
        since_ms = int(self._start * 1000)
        losses = [m for m in client.get_metric_history(runs[0].info.run_id, "loss") if m.timestamp >= since_ms]
        if not losses:
            return None
        last = max(losses, key=lambda m: m.step)
        if last.step <= self._shown:
            return None
        self._shown = last.step
        now = time.time()
        if self._first is None:
            self._first = (now, last.step)
        pace = (now - self._first[0]) / (last.step - self._first[1]) if last.step > self._first[1] else None
        speed = [m for m in client.get_metric_history(runs[0].info.run_id, "images_per_s") if m.step == last.step]
        return progress_line(self.stage, last.step, self.steps, last.value, speed[0].value if speed else None,
                             now - self._start, pace)
