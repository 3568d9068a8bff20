"""The main job's progress lines: format, and reading a stage's progress from a real MLflow store."""

import time

import mlflow

from xpl.stages.progress import StageProgress, progress_line
from xpl.tracking import find_or_create_run


def test_progress_line_shows_step_share_loss_speed_and_time_left():
    assert progress_line("teacher", 150, 600, 2.4123, 8.55, 120.0, 0.8) == (
        "[teacher] step 150/600 (25 %)  loss 2.41  8.6 images/s  2m00s in, about 6m00s left")
    assert progress_line("teacher", 10, 600, 2.4, None, 95.0) == "[teacher] step 10/600 (1 %)  loss 2.4  1m35s in"
    assert progress_line("student", 200, 200, None, None, 61.0, 1.0) == "[student] step 200/200 (100 %)  1m01s in"


def test_progress_reads_only_what_this_run_logged_and_only_when_it_advanced(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = find_or_create_run(uri, "xpl", "shapes/teacher")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({"loss": 9.0, "images_per_s": 1.0}, step=500)  # an earlier run of the stage
    time.sleep(0.01)
    with StageProgress(uri, "xpl", "shapes/teacher", "teacher", steps=600, every_s=3600) as progress:
        assert progress.poll() is None
        time.sleep(0.01)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({"loss": 2.5, "images_per_s": 8.0}, step=10)
        line = progress.poll()
        assert line is not None and line.startswith("[teacher] step 10/600 (1 %)  loss 2.5  8.0 images/s")
        assert progress.poll() is None  # nothing new since
