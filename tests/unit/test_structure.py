"""The package structure as a checked contract: which side imports what, no cycles, and the picture in
docs/design.md drawn from the real imports (import-linter's layers and forbidden contracts, in one small test)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hpcrun"

# Where code runs, by package (hpcrun.<name>); modules directly under hpcrun/ count as their own package.
LOGIN = {"cli", "launch", "observe", "plan", "doctor", "__main__"}
SHARED = {"config", "rundir", "slurm", "errors", "durations", "resources", "console", "__init__"}
JOB = {"job", "script"}  # script: hpcrun.script, the API a command of the user's own calls in its processes
FRAMEWORKS = {"frameworks"}
TASKS = {"tasks"}
HEAVY = ("torch", "transformers", "accelerate", "peft", "trl", "datasets")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set:
    """Every module a file imports, at the top or inside functions (lazy imports count: they run too)."""
    tree = ast.parse(path.read_text())
    found = set()
    here = _module_name(path).split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = here[: len(here) - node.level + (1 if path.name == "__init__.py" else 0)]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph() -> dict:
    """{module: {hpcrun modules it imports}} plus {module: {third-party top-level names}}."""
    internal, external = {}, {}
    files = sorted(PACKAGE.rglob("*.py"))
    names = {_module_name(f) for f in files}
    for f in files:
        mod = _module_name(f)
        imported = _imports(f)
        internal[mod] = {m for m in imported if m in names and m != mod}
        external[mod] = {m.split(".")[0] for m in imported if not m.startswith("hpcrun")}
    return {"internal": internal, "external": external}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_edges() -> set:
    edges = set()
    for mod, targets in _graph()["internal"].items():
        for t in targets:
            a, b = _package(mod), _package(t)
            if a != b and b not in ("errors", "durations", "resources", "console", "__init__"):
                edges.add((a, b))
    return edges


def test_the_job_side_imports_nothing_of_the_login_side_nor_a_training_framework():
    g = _graph()
    for mod, targets in g["internal"].items():
        if _package(mod) in JOB:
            bad = {t for t in targets if _package(t) in LOGIN | FRAMEWORKS | TASKS}
            assert not bad, f"{mod} imports {bad}"
            assert not ({"transformers", "accelerate", "peft", "trl", "datasets"} & g["external"][mod]), mod


def test_the_login_side_never_imports_frameworks_tasks_or_torch():
    g = _graph()
    for mod, targets in g["internal"].items():
        if _package(mod) not in LOGIN:
            continue
        bad = {t for t in targets if _package(t) in FRAMEWORKS | TASKS}
        # The job side reaches the login side only through its entry points (what submitit pickles and what a local
        # run calls): hpcrun.job.entry, and hpcrun.job.probe for `hpcrun doctor`'s probe job; their imports are lazy.
        bad |= {t for t in targets if _package(t) in JOB and t not in ("hpcrun.job.entry", "hpcrun.job.probe")}
        if mod == "hpcrun.plan":  # it forecasts the built-in task: that task's model, built lazily on the meta device
            bad -= {"hpcrun.tasks.models"}
        assert not bad, f"{mod} imports {bad}"
        heavy = set(HEAVY) & g["external"][mod]
        if mod == "hpcrun.plan":  # `hpcrun plan` builds the model on the meta device: torch, lazily (docs/plan.md)
            heavy -= {"torch", "transformers"}
        assert not heavy, f"{mod} imports {heavy}"


def test_the_shared_packages_import_only_each_other():
    for mod, targets in _graph()["internal"].items():
        if _package(mod) in SHARED:
            bad = {t for t in targets if _package(t) not in SHARED}
            assert not bad, f"{mod} imports {bad}"


def test_there_is_no_cycle_between_packages():
    edges = package_edges()
    nodes = {a for a, _ in edges} | {b for _, b in edges}
    state = {}

    def visit(n, path):
        state[n] = "open"
        for a, b in sorted(edges):
            if a != n:
                continue
            assert state.get(b) != "open", f"cycle: {' -> '.join(path + [b])}"
            if b not in state:
                visit(b, path + [b])
        state[n] = "done"

    for n in sorted(nodes):
        if n not in state:
            visit(n, [n])


def test_the_picture_in_design_md_shows_exactly_the_package_arrows():
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("<!-- package-arrows -->")[1]
    drawn = set(re.findall(r"^\s*(\w+) --> (\w+)\s*$", block, re.M))
    real = {(a, b) for a, b in package_edges() if a not in ("__main__", "__init__")}
    assert drawn == real, f"docs/design.md lacks {sorted(real - drawn)}, has extra {sorted(drawn - real)}"
