"""The teacher as a Ray Data callable class: one model per actor, batches of decoded samples in.

Pending rows go through `model.regions(...)` in one call per batch and `select_regions` (each
caption word's best region); the selection travels on to the instance stage, which pastes and
encodes the masks on CPUs, so the actor's time goes to the model. Rows where no word found a region
become `no_match` here; every other row passes through. Rows the model ran on carry the actor's
Ray node id (`teacher_node`), so a run can tell which nodes did the labeling. Columns the actor does
not change are passed on without copying (image bytes included); the decoded pixels are dropped.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import ray
import torch

from xpl.pseudo.align import Word, select_regions
from xpl.pseudo.rows import NO_MATCH, PENDING, RESULT_SCHEMA, SAMPLE


class Teacher:
    """Loads the exported teacher once per actor; `__call__` handles a batch (pyarrow Table)."""

    def __init__(
        self,
        *,
        teacher: str,
        class_ids: list[int],
        class_embeddings: np.ndarray,
        score_threshold: Optional[float] = None,
        cosine: bool = False,
        grow: Sequence[float] = (),
        grow_touch: float = 0.05,
        mask_threshold: float = 0.5,
        threads: int = 0,
        use_gpu: bool = False,
    ) -> None:
        from xpl.model.checkpoint import load_model
        from xpl.runtime import apply_env_defaults

        apply_env_defaults()
        if threads > 0:
            torch.set_num_threads(threads)
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("the teacher actor was given a GPU, but torch sees no CUDA device")
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = load_model(teacher, map_location=self.device)
        self.embedding = {cid: torch.tensor(np.asarray(e), dtype=torch.float32)
                          for cid, e in zip(class_ids, class_embeddings)}
        self.score_threshold = score_threshold
        self.cosine = cosine
        self.grow = {"grow": tuple(grow), "grow_touch": grow_touch, "mask_threshold": mask_threshold}
        self.node_id = ray.get_runtime_context().get_node_id()

    def _image(self, pixels: bytes, height: int, width: int) -> torch.Tensor:
        array = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3)
        return torch.from_numpy(array.copy()).to(self.device).permute(2, 0, 1).float().div_(255)

    def select(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """New column values (status, reason, selection, timings) for pending rows."""
        if not rows:
            return []
        begin, start, cpu = time.time(), time.perf_counter(), time.thread_time()
        with torch.inference_mode():
            regions = self.model.regions([self._image(r["pixels"], r["pix_h"], r["pix_w"]) for r in rows])
            selections = []
            for row, reg in zip(rows, regions):
                words = [Word(w["category_id"], w["name"], w["phrase"], self.embedding[w["category_id"]])
                         for w in json.loads(row["words"])]
                selections.append(select_regions(words, reg, score_threshold=self.score_threshold, cosine=self.cosine,
                                                 **self.grow))
        end = time.time()
        per_row = (time.perf_counter() - start) / len(rows)
        cpu_per_row = (time.thread_time() - cpu) / len(rows)
        out = []
        for sel in selections:
            values = {"t_teacher": per_row, "t_teacher_cpu": cpu_per_row, "teacher_begin": begin, "teacher_end": end,
                      "teacher_node": self.node_id}
            if sel.words:
                values.update(status=PENDING, reason=None, selection=sel.to_bytes())
            else:
                values.update(status=NO_MATCH, reason=sel.reason, selection=None)
            out.append(values)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        kind, status = batch.column("kind").to_pylist(), batch.column("status").to_pylist()
        todo = [i for i, (k, s) in enumerate(zip(kind, status)) if k == SAMPLE and s == PENDING]
        wanted = batch.select(["pixels", "pix_h", "pix_w", "words"]).take(todo).to_pylist() if todo else []
        updates = dict(zip(todo, self.select(wanted)))
        columns = []
        for field in RESULT_SCHEMA:
            if field.name in batch.column_names and field.name not in ("status", "reason"):
                columns.append(batch.column(field.name).cast(field.type))
                continue
            base = batch.column(field.name).to_pylist() if field.name in batch.column_names else [None] * len(batch)
            values = [updates[i].get(field.name, base[i]) if i in updates else base[i] for i in range(len(batch))]
            columns.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)
