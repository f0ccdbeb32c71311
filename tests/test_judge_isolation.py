"""The held-out judges are reached from evaluation only: no training, editing, scoring,
generation or labelling module imports them, directly or through another module, at module
level or inside a function. Proved on the source (every import statement) and at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "flows", "data_schemas")
JUDGES = "pipeline.judges"
# The only module that may use the judges.
EVALUATION = {"pipeline.stages.evaluation"}
# The command line dispatches every command, `evaluate` among them, and the label report is an
# evaluation built on it; they alone may import evaluation.
EVALUATION_IMPORTERS = {"flows.cli", "pipeline.stages.label_report"}
# The in-pipeline models the judges must not lean on: they judge these models' work.
PIPELINE_SCORERS = {
    "pipeline.scoring",
    "pipeline.models.emotion",
    "pipeline.models.facemesh",
    "pipeline.models.identity",
    "pipeline.models.detector",
    "pipeline.models.attributes",
    "pipeline.models.deepface_backend",
    "pipeline.models.insightface_backend",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Project module -> project modules it imports anywhere in its source."""
    files = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets.add(base)
                targets |= {f"{base}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in files}
    return graph


def reachable(graph: dict[str, set[str]], start: str, *, avoiding: set[str] = frozenset()) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen and target not in avoiding:
                seen.add(target)
                todo.append(target)
    return seen


def is_judge(module: str) -> bool:
    return module == JUDGES or module.startswith(JUDGES + ".")


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "pipeline.stages.evaluation" in graph["flows.cli"]  # imported inside the `evaluate` command
    assert "pipeline.judges.scores" in graph["pipeline.stages.evaluation"]  # imported inside `attach_judges`
    assert {"pipeline.judges.dlib68", "pipeline.judges.pyemotion"} <= graph["pipeline.judges.scores"]


def test_only_evaluation_reaches_the_judges() -> None:
    graph = import_graph()
    for module in graph:
        if is_judge(module) or module in EVALUATION:
            continue
        leaks = {m for m in reachable(graph, module, avoiding=EVALUATION) if is_judge(m)}
        assert not leaks, f"{module} reaches the held-out judges {sorted(leaks)} without going through evaluation"


def test_evaluation_is_imported_by_the_evaluate_command_only() -> None:
    graph = import_graph()
    importers = {module for module, targets in graph.items() if targets & EVALUATION}
    assert importers <= EVALUATION_IMPORTERS


def test_only_evaluation_imports_a_judge_directly() -> None:
    graph = import_graph()
    importers = {module for module, targets in graph.items() if not is_judge(module) and any(is_judge(t) for t in targets)}
    assert importers == EVALUATION


def test_the_judges_lean_on_no_in_pipeline_scorer() -> None:
    graph = import_graph()
    for module in (m for m in graph if is_judge(m)):
        assert not reachable(graph, module) & PIPELINE_SCORERS, module


def test_running_the_pipeline_never_loads_a_judge() -> None:
    modules = ["flows.generate", "flows.discover", "flows.train_editor", "flows.deployments", "pipeline.stages.generate",
               "pipeline.edits", "pipeline.stages.train_editors", "pipeline.stages.discovery", "pipeline.scoring",
               "pipeline.editing.refine", "pipeline.editing.training"]  # fmt: skip
    code = "\n".join([*(f"import {m}" for m in modules), "import sys",
                      "print(sorted(m for m in sys.modules if m.startswith('pipeline.judges') or m == 'dlib'))"])  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
