"""The package's structure: import contracts, no cycles, no reaching into private names, short
functions, self-contained references, and notebooks that end with their experiment's check."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "saetools"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 80
MAX_TOP_LEVEL_MODULES = 10


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every import in ``path`` (relative imports resolved)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                pkg = _module_name(path).split(".")
                pkg = pkg if path.name == "__init__.py" else pkg[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + [node.module])
            out.append((base, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
    return out


def test_import_contracts_hold():
    """Layers (core < tasks / models / saes < circuits < dictionaries / diagnostics / lminfinite <
    experiments < tooling), and the forbidden imports declared in ``pyproject.toml``."""
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports; "
            "raise SystemExit(lint_imports(config_filename='pyproject.toml'))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_no_import_cycle_between_modules():
    """Direct imports between saetools modules (lazy ones inside functions included) form no cycle."""
    modules = {_module_name(p): p for p in SOURCES}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for mod, names, _ in _imports(path):
            for target in [f"{mod}.{n}" for n in names] + [mod]:
                if target in modules and target != name:
                    deps.add(target)
                    break
        graph[name] = deps
    # a package's __init__ re-exports its submodules: that edge is not a cycle
    graph = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_few_modules_loose_at_the_top():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= MAX_TOP_LEVEL_MODULES, loose


def test_the_word_lists_and_the_ioi_task_do_not_load_sae_lens():
    code = (
        "import sys, saetools.data, saetools.tasks.ioi, saetools; "
        "assert 'sae_lens' not in sys.modules and 'transformer_lens' not in sys.modules, 'loaded'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]


def test_public_surface_is_eight_names_that_resolve():
    import saetools
    from saetools.splicing import splice

    assert len(saetools.__all__) == 8 and set(saetools.__all__) <= set(dir(saetools))
    assert saetools.splice is splice  # the function, never the module of the same role
    for name in saetools.__all__:
        assert getattr(saetools, name).__name__ == name


def test_no_module_imports_a_private_name_of_another():
    """``from saetools.x import _y`` never; sae-lens internals only in ``saetools.sae_lens_compat``."""
    bad = []
    for path in SOURCES:
        for mod, names, line in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if mod.startswith("saetools") and private and mod != _module_name(path):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {private} from {mod}")
            if mod.startswith("sae_lens") and path.name != "sae_lens_compat.py":
                internal = private or mod.startswith(("sae_lens.registry", "sae_lens.analysis"))
                if internal:
                    bad.append(f"{path.relative_to(ROOT)}:{line} reaches into {mod} ({names})")
    assert not bad, "\n".join(bad)


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                        f"({node.end_lineno - start + 1} lines)"
                    )
    assert not long, "\n".join(long)


def _user_facing_texts() -> list[Path]:
    return (
        SOURCES
        + sorted((ROOT / "notebooks").glob("*.ipynb"))
        + sorted((ROOT / "docs").rglob("*.md"))
        + sorted(PACKAGE.rglob("*.md"))
        + [ROOT / "README.md"]
    )


def test_references_stay_inside_the_repository():
    """No citation of notes that ship elsewhere; every ``docs/...md`` cited exists."""
    outside = re.compile(r"NOTES ?§|NOTES\.md|ECOSYSTEM\.md|STYLE\.md|shared/papers|\bSTYLE:")
    cited = re.compile(r"docs/([A-Za-z0-9_]+\.md)")
    bad = []
    for path in _user_facing_texts():
        text = path.read_text()
        bad += [f"{path.relative_to(ROOT)}: {m.group(0)!r}" for m in outside.finditer(text)]
        bad += [
            f"{path.relative_to(ROOT)}: docs/{m.group(1)} does not exist"
            for m in cited.finditer(text)
            if not (ROOT / "docs" / m.group(1)).is_file()
        ]
    assert not bad, "\n".join(bad)


def test_user_facing_text_speaks_of_the_project_not_of_a_tracker():
    tracker = re.compile(r"\b[Ii]ssues? ?#?\d+|issue's target|\b[Tt]he issue\b")
    bad = [
        f"{p.relative_to(ROOT)}: {m.group(0)!r}"
        for p in _user_facing_texts()
        for m in tracker.finditer(p.read_text())
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_ends_with_its_experiments_check(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    last = "".join(cells[-1]["source"])
    call = re.search(r"^(?:claims = )?(\w+)\.check\(result(?:, expected_failures=expected)?\)$", last, re.M)
    assert call, f"{path.name}: the last code cell does not call <experiment>.check(result)"
    imports = "".join("".join(c["source"]) for c in cells)
    assert re.search(rf"from saetools\.experiments import \w+(?: as {call.group(1)})?", imports), path.name
    after = last[call.end() :].strip().splitlines()
    assert all(line.startswith(("print(", "display(claims)")) for line in after), f"{path.name}: work after the check: {after}"
