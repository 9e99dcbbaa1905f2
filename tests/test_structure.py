"""The shape of the code: the import graph of ``neuron_activity`` and ``cli`` has no circles,
and the library never imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"neuron_activity": ROOT / "neuron_activity", "nact_cli": ROOT / "cli"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (inside functions and
    TYPE_CHECKING blocks too), less a package's own submodules imported by its ``__init__``."""
    is_init = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_init else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        for target in targets:
            if target.startswith("cli."):
                target = "nact_cli." + target[4:]
            while target and target not in known:
                target = target.rpartition(".")[0]
            if not target or target == name:
                continue
            if is_init and target.startswith(name + "."):
                continue  # a package's __init__ re-exporting its submodules
            if target in PACKAGES and name.startswith(target + "."):
                continue  # the package root above a module (its version, its errors)
            out.add(target)
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circles() -> None:
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert circles(graph) == []


def test_circles_are_found() -> None:
    """The check above can fail: a circle of three is found, a chain is not."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_library_imports_neither_the_cli_nor_typer_nor_rich() -> None:
    known = modules()
    for name, path in known.items():
        if name.startswith("neuron_activity"):
            assert not any(m.startswith("nact_cli") for m in imported(name, path, known)), name
            tree = ast.parse(path.read_text())
            roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            roots |= {
                n.module.split(".")[0]
                for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module and not n.level
            }
            assert not roots & {"typer", "rich", "click"}, name


# Names that moved to modules of their own and stay importable from their old modules (as
# ``from .new import name as name``): these, and no others.
KEPT_ALIASES = {
    "neuron_activity.counting": {
        "States": "neuron_activity.counters",
        "in_ranges": "neuron_activity.cpu_counting",
        "describe_devices": "neuron_activity.devices",
        "resolve_device": "neuron_activity.devices",
        "NATIVE_PROBLEM": "neuron_activity.native",
        "describe_kernels": "neuron_activity.native",
        "fire_mask": "neuron_activity.torch_counting",
        "nan_mask": "neuron_activity.torch_counting",
    },
    "neuron_activity.scan": {"count_array": "neuron_activity.arrays", "raw_bits": "neuron_activity.arrays"},
    "neuron_activity.dtypes": {
        "as_fraction": "neuron_activity.decimals",
        "decimal_text": "neuron_activity.decimals",
        "parse_decimal": "neuron_activity.decimals",
    },
    "neuron_activity.counts_file": {
        "check_one_component": "neuron_activity.sparsity",
        "is_sparsity_file": "neuron_activity.sparsity",
        "load_sparsity": "neuron_activity.sparsity",
        "save_sparsity": "neuron_activity.sparsity",
    },
}


def test_the_names_kept_importable_from_their_old_modules_are_these_and_no_others() -> None:
    from importlib import import_module

    found: dict[str, dict[str, str]] = {}
    for name, path in modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                if alias.asname == alias.name:
                    found.setdefault(name, {})[alias.name] = source
    assert found == KEPT_ALIASES
    for old, names in KEPT_ALIASES.items():
        for moved, new in names.items():
            assert getattr(import_module(old), moved) is getattr(import_module(new), moved), f"{old}.{moved}"
