"""docs/architecture.md's module map names every module of src/linkdns, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import linkdns

ROOT = Path(linkdns.__file__).parent
DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def _map() -> str:
    text = DOC.read_text()
    block = text.split("## Module map", 1)[1]
    return block.split("```")[1]


def _named(block: str) -> set[str]:
    """Paths the map names in its first column (``a.py, b.py`` or ``pkg/``)."""
    out: set[str] = set()
    for line in block.splitlines():
        first = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        out.update(p.strip() for p in first.split(",") if p.strip().endswith((".py", "/")))
    return out


def _modules() -> set[str]:
    """The modules at the top and in server/, and the other packages, as the map names them."""
    out = {p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"}
    out.update(f"server/{p.name}" for p in (ROOT / "server").glob("*.py")
               if p.name != "__init__.py")
    out.update(f"{p.name}/" for p in ROOT.iterdir()
               if p.is_dir() and (p / "__init__.py").exists() and p.name not in ("server",))
    return out


def test_the_module_map_names_every_module() -> None:
    named = _named(_map())
    missing = _modules() - {n for n in named if not n.startswith("plugins/<")} - {"plugins/"}
    assert sorted(missing) == []


def test_every_module_the_map_names_exists() -> None:
    named = {n for n in _named(_map()) if "<" not in n}
    assert sorted(n for n in named if not (ROOT / n).exists()) == []
