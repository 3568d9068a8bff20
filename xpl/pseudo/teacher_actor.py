"""The teacher as a Ray Data callable class: one model per actor, blocks of decoded samples in.

Pending rows go through the teacher's candidate regions in chunks of `batch_size` images and the
`RegionChoice` (each caption word's best region; the mask head runs on the chosen regions only, for the
whole chunk at once); only the chosen regions (boxes, scores, mask tiles) leave the
actor, as Arrow columns (`xpl.pseudo.selection_columns`); the writer pastes and encodes the masks,
so the actor's time goes to the model. Rows where no word found a region become `no_match` here;
every other row passes through. Rows the model ran on carry the actor's Ray node id
(`teacher_node`), so a run can tell which nodes did the labeling. Columns the actor does not change
are passed on as they are (image bytes included); the decoded pixels are dropped. On a GPU, each
image goes through pinned host memory to the device without blocking.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from xpl.pseudo.choice import RegionChoice, Selection, caption_words
from xpl.pseudo.rows import NO_MATCH, PENDING, RESULT_SCHEMA, SAMPLE
from xpl.pseudo.selection_columns import selection_columns


class Teacher:
    """Loads the exported teacher once per actor; `__call__` handles a block (pyarrow Table)."""

    def __init__(
        self,
        *,
        teacher: str,
        class_ids: list[int],
        class_embeddings: np.ndarray,
        choice: RegionChoice,
        batch_size: int,
        threads_per_actor: int,
        use_gpu: bool = False,
    ) -> None:
        from xpl.model.checkpoint import load_model
        from xpl.runtime import apply_env_defaults

        apply_env_defaults()
        torch.set_num_threads(threads_per_actor)
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("the teacher actor was given a GPU, but torch sees no CUDA device")
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = load_model(teacher, map_location=self.device)
        self.embedding = {cid: torch.tensor(np.asarray(e), dtype=torch.float32)
                          for cid, e in zip(class_ids, class_embeddings)}
        self.batch_size, self.choice = batch_size, choice
        self.node_id = ray.get_runtime_context().get_node_id()

    def _image(self, pixels: pa.BinaryScalar, height: int, width: int) -> torch.Tensor:
        array = np.frombuffer(pixels.as_buffer(), dtype=np.uint8).reshape(height, width, 3)
        if self.device.type == "cuda":
            host = torch.empty((height, width, 3), dtype=torch.uint8, pin_memory=True)
            host.numpy()[:] = array
            image = host.to(self.device, non_blocking=True)
        else:
            image = torch.from_numpy(array.copy())
        return image.permute(2, 0, 1).float().div_(255)

    def select(self, pixels: list[tuple[pa.BinaryScalar, int, int]],
               words: list[list[dict[str, Any]]]) -> list[Selection]:
        """The selection of each image (pixels, height, width) for its caption words, `batch_size` images a model
        call: the actor's model work, called once per block (`xpl.pseudo.profile.ProfiledTeacher` times it)."""
        out: list[Selection] = []
        with torch.inference_mode():
            for at in range(0, len(pixels), self.batch_size):
                regions = self.choice.regions(self.model, [self._image(*p) for p in pixels[at:at + self.batch_size]])
                out += self.choice.select([caption_words(w, self.embedding) for w in words[at:at + self.batch_size]],
                                          regions)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        pending = pc.and_(pc.equal(batch.column("kind"), SAMPLE), pc.equal(batch.column("status"), PENDING))
        todo = np.flatnonzero(pending.to_numpy(zero_copy_only=False))
        pixels, heights, widths = batch.column("pixels"), batch.column("pix_h"), batch.column("pix_w")
        words = batch.column("words").take(todo).to_pylist()
        chosen = self.select([(pixels[int(i)], heights[int(i)].as_py(), widths[int(i)].as_py()) for i in todo], words)
        status, reason = batch.column("status").to_pylist(), batch.column("reason").to_pylist()
        selections: list[Optional[Selection]] = [None] * len(batch)
        for i, sel in zip(todo, chosen):
            if sel.words:
                selections[i] = sel
            else:
                status[i], reason[i] = NO_MATCH, sel.reason
        ran = np.zeros(len(batch), dtype=bool)
        ran[todo] = True
        new = {"status": pa.array(status, pa.string()), "reason": pa.array(reason, pa.string()),
               **selection_columns(selections),
               "teacher_node": pa.array([self.node_id if r else None for r in ran], pa.string())}
        return pa.Table.from_arrays([new[f.name] if f.name in new else batch.column(f.name) for f in RESULT_SCHEMA],
                                    schema=RESULT_SCHEMA)
