"""The package's import direction (README "Layout"): commands -> stages ->
models, ops, data and infrastructure. Read from the source with ast, so a
lazy import inside a function counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wsss_fast"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the wsss_fast modules that ``path`` imports anywhere."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)  # "from . import x"
    return {n for n in names if n == "wsss_fast" or n.startswith("wsss_fast.")}


def modules(*exclude: str) -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if not any(p.relative_to(PACKAGE).parts[0] == part for part in exclude))


def is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_resolves_relative_imports():
    stage = PACKAGE / "stages" / "segment" / "infer.py"
    assert "wsss_fast.crf" in imported_modules(stage)  # "from ...crf import" inside a function
    assert "wsss_fast.stages.cam" in imported_modules(PACKAGE / "commands" / "make_cam.py")


@pytest.mark.parametrize("path", modules("stages", "commands"), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_below_the_stages_imports_them(path):
    offending = sorted(n for n in imported_modules(path) if is_under(n, "wsss_fast.stages"))
    assert not offending, f"{path.relative_to(PACKAGE)} imports {offending}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "stages").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_stages_do_not_import_commands(path):
    offending = sorted(n for n in imported_modules(path)
                       if is_under(n, "wsss_fast.commands") or is_under(n, "wsss_fast.cli"))
    assert not offending, f"{path.relative_to(PACKAGE)} imports {offending}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "stages").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_stage_module_says_what_it_reads_and_writes(path):
    if path.name == "__init__.py" and path.parent.name == "stages":
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "reads" in doc.lower() and "writes" in doc.lower(), f"{path.relative_to(PACKAGE)}: no reads/writes paragraph"
