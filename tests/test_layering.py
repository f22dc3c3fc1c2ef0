"""Packages depend only downward (ARCHITECTURE.md): every `import schedctl.X` edge is checked against the table."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "schedctl"
BOTTOM = {"tokens", "files", "stats"}  # leaf modules every package may use

# package -> the packages of ours it may import (besides itself and BOTTOM)
ALLOWED: dict[str, set[str]] = {
    "tokens": set(), "files": set(), "stats": set(),
    "policies": set(),
    "bandits": set(),
    "workloads": set(),
    "sim": {"policies", "workloads"},
    "engine_adapter": {"policies", "sim", "workloads"},
    "loadgen": {"workloads", "sim.records"},  # sim.records: the record and summary formats shared with simulate
    "controller": {"policies", "bandits", "engine_adapter.base"},
    # the embedded engine behind SGLang's HTTP surface: the plugin's channel and state, the load generator's URLs
    "simserve": {"policies", "sim", "workloads", "engine_adapter", "loadgen"},
    "planner": {"policies", "sim", "workloads", "bench.sweep"},
    "settings": {"policies", "bandits", "controller", "engine_adapter", "sim", "workloads"},
    "bench": {"policies", "bandits", "sim", "workloads", "engine_adapter", "controller", "settings"},
    "cli": {"*"},
}


def package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0]  # schedctl/sim/engine.py -> "sim"; schedctl/files.py -> "files"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            out.add(f"<relative import: from {'.' * node.level}{node.module or ''}>")
        elif isinstance(node, ast.ImportFrom) and node.module == "schedctl":
            # `from schedctl import X`: the module schedctl.X (dunders such as __version__ are the package root)
            out |= {a.name for a in node.names if not a.name.startswith("__")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("schedctl."):
            out.add(node.module.removeprefix("schedctl."))
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("schedctl.") for a in node.names if a.name.startswith("schedctl.")}
    return out


def allowed(pkg: str, target: str) -> bool:
    if target.startswith("<relative import"):
        return False  # absolute imports only: the table above is checked on absolute names
    top = target.split(".")[0]
    if top == pkg or top in BOTTOM or "*" in ALLOWED[pkg]:
        return True
    return any(target == a or target.startswith(a + ".") or top == a for a in ALLOWED[pkg])


def test_every_package_imports_only_downward():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        pkg = package_of(path)
        if pkg in ("__init__", "__main__"):
            continue
        assert pkg in ALLOWED, f"{path}: package {pkg!r} is not in the layering table"
        for target in imported_modules(path):
            if not allowed(pkg, target):
                violations.append(f"{path.relative_to(ROOT.parent)} imports schedctl.{target}")
    assert not violations, "\n".join(violations)


def test_the_controller_core_imports_no_io_library():
    shell = {"service.py", "decision_log.py", "api.py"}
    io_libraries = {"httpx", "fastapi", "uvicorn", "apscheduler", "structlog", "socket", "requests", "time", "os",
                    "datetime", "random", "pathlib", "shutil", "tempfile", "subprocess", "io"}
    for path in sorted((ROOT / "controller").glob("*.py")):
        if path.name in shell:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & io_libraries, f"{path.name} imports {names & io_libraries}"
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not calls & {"open", "print", "input"}, f"{path.name} calls {calls & {'open', 'print', 'input'}}"


def test_the_import_checks_see_relative_and_package_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from . import x\nfrom .core import y\nfrom schedctl import sim, __version__\n")
    found = imported_modules(f)
    assert "sim" in found and "__version__" not in found
    assert sum(t.startswith("<relative import") for t in found) == 2
    assert not allowed("policies", "sim") and not allowed("cli", "<relative import: from .core>")
