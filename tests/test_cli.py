"""The `xpl` command: config display and one-line errors without tracebacks."""

import subprocess
import sys


def xpl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xpl.cli", *args], capture_output=True, text=True, timeout=120)


def test_config_show_prints_the_resolved_config():
    out = xpl("config", "show", "teacher.train.steps=9", "data.root=/x")
    assert out.returncode == 0, out.stderr
    assert "train_json: /x/annotations/instances_train2017_base48.json" in out.stdout
    assert "steps: 9" in out.stdout


def test_version_and_help_say_what_the_commands_do():
    from importlib import metadata

    assert xpl("--version").stdout.strip() == f"xpl {metadata.version('xpl')}"
    demo = " ".join(xpl("demo", "--help").stdout.split())
    assert "results.md" in demo and "minutes on 2 CPU cores" in demo and "resumes" in demo
    evaluate = " ".join(xpl("evaluate", "--help").stdout.split())
    assert "(--checkpoint CHECKPOINT | --predictions PREDICTIONS)" in evaluate and "metrics.json" in evaluate


def test_user_mistakes_are_one_line_errors(tmp_path):
    for args, expected in [
        (("config", "show", "model.backbonez=tiny"), "model.backbonez"),
        (("config", "show", "--config", str(tmp_path / "nope.yaml")), "nope.yaml: config file not found"),
    ]:
        out = xpl(*args)
        assert out.returncode == 2
        assert out.stderr.strip().startswith("xpl: error:") and expected in out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
