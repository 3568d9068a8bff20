"""Every third-party module that xpl/, jobs/ and benchmarks/ import is declared in pyproject.toml, and every declared
package imports: nothing arrives only because another package happens to pull it in."""

import ast
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from xpl.text import PACKAGED_MODELS

REPO = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """Normalised distribution names of the project's dependencies and the test extra (what `make setup`
    installs; the cloud extra's pins are checked against infra/Dockerfile in test_cluster_configs)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    return {_norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def imported() -> dict[str, str]:
    """Top-level third-party module -> the first file importing it, over xpl/, jobs/ and benchmarks/ (plus the packaged
    text encoders that `xpl.text` imports by name)."""
    found: dict[str, str] = {module: "xpl/text.py" for module in PACKAGED_MODELS.values()}
    for path in sorted(p for folder in ("xpl", "jobs", "benchmarks") for p in (REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "xpl":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_import_is_declared():
    providers = metadata.packages_distributions()
    wanted = declared()
    undeclared = {module: where for module, where in imported().items()
                  if not {_norm(d) for d in providers.get(module, [])} & wanted}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_declared_package_imports():
    modules_of: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(_norm(dist), set()).add(module)
    used = set(imported())
    to_import = []
    for dist in sorted(declared()):
        public = {m for m in modules_of.get(dist, set()) if not m.startswith("_")}
        assert public, f"{dist} is declared but not installed"
        main = {m for m in public if m in used or _norm(m) == dist} or {min(public)}
        to_import += sorted(main)
    result = subprocess.run([sys.executable, "-c", "\n".join(f"import {m}" for m in to_import)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
