"""The package's import graph: no import circle, and no arrow up between the layers the README's
"Architecture" section names (a module imports only from its own layer or the layers below).

Every ``import`` counts, at module level or inside a function, so a deferred import cannot hide a
circle. The layers, bottom first, are read from the README so that the README and this test cannot
drift apart.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "icl_lens"


def readme_layers() -> list[list[str]]:
    """The layers of the README's architecture table, bottom first: each a list of module names
    relative to ``icl_lens`` (``models`` is the subpackage and everything in it)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if match:
            layers.append((int(match.group(1)), re.findall(r"`([\w.]+)`", match.group(2))))
    assert layers, "the README's Architecture section has no layer table"
    return [names for _, names in sorted(layers)]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The ``icl_lens`` modules ``path`` imports anywhere in its body (``from icl_lens import x``
    counts as importing ``icl_lens.x``)."""
    this = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("icl_lens"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = this.split(".")[: len(this.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith("icl_lens"):
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if _exists(candidate) else target)
    found.discard(this)
    return found


def _exists(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    """The layer of ``icl_lens.<name>...``: the longest README entry that is the module or a package
    above it."""
    relative = module.removeprefix("icl_lens").removeprefix(".")
    best: tuple[int, int] | None = None
    for index, names in enumerate(layers):
        for name in names:
            if relative == name or relative.startswith(name + "."):
                if best is None or len(name) > best[1]:
                    best = (index, len(name))
    return None if best is None else best[0]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    layers = readme_layers()
    unplaced = [module for module in import_graph() if module != "icl_lens" and layer_of(module, layers) is None]
    assert not unplaced, f"modules the README's Architecture table does not place: {unplaced}"


def test_no_import_circle():
    """A package's ``__init__`` importing its own modules (and they it) is a package, not a circle:
    only circles between modules of different packages or between sibling modules count."""
    graph = import_graph()
    without_inits = {
        module: {t for t in targets if not module.startswith(t + ".")} for module, targets in graph.items()
    }
    assert circles(without_inits) == []


def test_no_arrow_points_up():
    layers = readme_layers()
    graph = import_graph()
    up: dict[str, list[str]] = defaultdict(list)
    for module, targets in graph.items():
        if module == "icl_lens":  # the package's public namespace sits above every layer
            continue
        source = layer_of(module, layers)
        for target in targets:
            if target.startswith(module + "."):  # a package's namespace names its own submodules
                continue
            if target == "icl_lens":
                up[module].append(target)
                continue
            destination = layer_of(target, layers)
            if source is not None and destination is not None and destination > source:
                up[module].append(f"{target} (layer {destination} above {source})")
    assert not up, f"imports that point up a layer: {dict(up)}"


def test_no_private_name_used_outside_its_module():
    used: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("icl_lens"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        used.append(f"{module_name(path)} imports {node.module}.{alias.name}")
    assert not used, used


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_circle_finder_on_hand_made_graphs(graph, expected):
    assert circles(graph) == expected


def test_layer_lookup_takes_the_most_specific_entry():
    layers = [["errors", "models.tokenizers"], ["models"], ["reporting"]]
    assert layer_of("icl_lens.models.tokenizers", layers) == 0
    assert layer_of("icl_lens.models.loading", layers) == 1
    assert layer_of("icl_lens.reporting.findings", layers) == 2
    assert layer_of("icl_lens.cli", layers) is None
