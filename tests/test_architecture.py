"""The house plan (docs/ARCHITECTURE.md): imports flow down the floors, never up, anywhere in a module."""

import ast
from pathlib import Path

XPL = Path(__file__).resolve().parents[1] / "xpl"
# Each room of the package and its floor; a module may import from its own floor and those below.
FLOORS = {
    **dict.fromkeys(("errors", "jsonfile", "words", "runtime", "config", "vocab", "text", "tracking", "plots",
                     "folder_lock", "ray_cluster"), 0),
    **dict.fromkeys(("data", "model"), 1),
    **dict.fromkeys(("pseudo", "train", "eval"), 2),
    **dict.fromkeys(("stages", "segment"), 3),
    "cli": 4,
}


def room(path: Path) -> str:
    parts = path.relative_to(XPL).with_suffix("").parts
    return parts[0]


def imported_rooms(path: Path) -> set[str]:
    """The xpl rooms a module imports, at module level or inside functions."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        rooms |= {name.split(".")[1] for name in names if name.startswith("xpl.") and name.count(".") >= 1}
    return rooms


def test_every_module_has_a_floor_and_imports_only_its_floor_and_below():
    modules = [p for p in XPL.rglob("*.py") if p.name != "__init__.py"]
    assert {room(p) for p in modules} == set(FLOORS)
    upward = {(str(p.relative_to(XPL)), r) for p in modules for r in imported_rooms(p)
              if FLOORS[r] > FLOORS[room(p)]}
    assert upward == set()
