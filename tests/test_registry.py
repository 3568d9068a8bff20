"""The stage registry: the main job, the `xpl` subcommands and the job entry points all come from its records."""

from pathlib import Path

from presets import SHAPES
from xpl.cli import build_parser
from xpl.config import load_config
from xpl.stages.registry import BY_NAME, STAGES

REPO = Path(__file__).resolve().parents[1]


def test_every_stage_starts_from_an_earlier_one_and_has_its_config_section():
    cfg = load_config(SHAPES)
    seen = set()
    for stage in STAGES:
        assert stage.upstream is None or stage.upstream in seen, stage.name
        assert stage.section in cfg and all(section in cfg for section in stage.reads)
        seen.add(stage.name)
    assert [s.name for s in STAGES if s.model] == ["teacher", "student", "student_plain"]


def test_subcommands_and_job_files_are_the_registrys():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for stage in STAGES:
        if stage.command:
            assert stage.command in commands
        if stage.job:
            assert f'job("{stage.name}")' in (REPO / "jobs" / f"{stage.job}.py").read_text()
    assert {p.stem for p in (REPO / "jobs").glob("*.py")} == {s.job for s in STAGES if s.job} | {"evaluate", "pipeline"}


def test_the_plain_student_is_the_student_with_the_plain_loss_in_its_own_folders(tmp_path):
    cfg = load_config(SHAPES, [f"output_dir={tmp_path}"])
    student, plain = BY_NAME["student"], BY_NAME["student_plain"]
    assert (student.label(cfg), plain.label(cfg)) == ("student", "student_plain")
    assert plain.config(cfg).student.mode == "plain" and student.config(cfg).student.mode == "expected_likelihood"
    assert plain.outputs(cfg) == [tmp_path / "student_plain", tmp_path / "ray_results" / "shapes-student_plain"]
    assert BY_NAME["pseudolabel"].outputs(cfg) == [tmp_path / "pseudo"]
