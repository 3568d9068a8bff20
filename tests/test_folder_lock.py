"""One run per pseudo-label output folder: a second process is refused, a dead owner's lock is replaced."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from presets import SHAPES
from xpl.config import load_config
from xpl.errors import XPLError
from xpl.folder_lock import LOCK_NAME, folder_lock
from xpl.stages.pseudolabel import run_pseudolabel

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from xpl.folder_lock import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_the_same_output_is_refused_until_the_first_is_gone(shapes_world, tmp_path):
    out = tmp_path / "pseudo"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (out / "tmp").mkdir()
        (out / "tmp" / "00000.tar").write_bytes(b"half-written by the first run")
        teacher = tmp_path / "teacher.pt"
        teacher.write_bytes(b"")  # never loaded: the lock is taken before any work
        cfg = load_config(SHAPES, [f"data.root={shapes_world}", f"pseudolabel.output={out}",
                                 f"pseudolabel.teacher={teacher}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
        with pytest.raises(XPLError, match=f"in use by pid {holder.pid} on host"):
            run_pseudolabel(cfg)
        assert (out / "tmp" / "00000.tar").read_bytes() == b"half-written by the first run"
    finally:
        holder.kill()  # dies without releasing its lock
        holder.wait()
    with folder_lock(out) as path:  # the dead owner's lock is stale: taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(XPLError, match=f"in use by pid {os.getpid()}"):
            folder_lock(out).__enter__()
    assert not path.exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "created": 0, "since": 0}))
    with pytest.raises(XPLError, match=f"on host elsewhere.*delete {tmp_path / LOCK_NAME}"):
        folder_lock(tmp_path).__enter__()
