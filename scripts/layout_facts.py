"""The package's shape as a reviewer counts it: import circles, imports against the layers, the biggest modules and
the longest functions.

    .venv/bin/python scripts/layout_facts.py            # the table; exit 1 when a floor is broken
    .venv/bin/python scripts/layout_facts.py --top 10   # more of the biggest modules and longest functions
    .venv/bin/python scripts/layout_facts.py --root DIR # another checkout (its own process: grimp imports by name)

The layers are import-linter's contract (pyproject.toml's [tool.importlinter], `make check`); this script adds what the
linter does not count: circles at MODULE level (a package's ``__init__`` and one of its own modules importing each
other is a circle too; the linter's acyclic_siblings contract looks at siblings only), modules over
:data:`MAX_MODULE_LINES` lines and functions over :data:`MAX_FUNCTION_LINES` (decorators, signature and docstring
included; :data:`DECISION_TABLES` may exceed it). Imports inside functions and under ``TYPE_CHECKING`` count: a
reviewer drawing the graph draws them.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter's own dependency there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "offline_embft"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# Functions allowed past MAX_FUNCTION_LINES because they are tables (one row a line), not steps: "module:qualname".
DECISION_TABLES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Facts:
    """What the script counts; each list empty on a tree that keeps its floors."""

    circles: list[list[str]]  # strongly connected groups of modules (imports both ways, directly or around)
    wrong_way: list[tuple[str, str]]  # (importer, imported) against the layers, sibling stages included
    big_modules: list[tuple[int, str]]  # (lines, module), every module, biggest first
    long_functions: list[tuple[int, str]]  # (lines, "module:qualname"), every function, longest first

    def broken(self) -> list[str]:
        """One line per broken floor (none: the tree keeps them all)."""
        lines = [f"import circle: {' <-> '.join(group)}" for group in self.circles]
        lines += [f"wrong-way import: {a} -> {b}" for a, b in self.wrong_way]
        lines += [
            f"module over {MAX_MODULE_LINES} lines: {m} ({n})" for n, m in self.big_modules if n > MAX_MODULE_LINES
        ]
        lines += [
            f"function over {MAX_FUNCTION_LINES} lines: {f} ({n})"
            for n, f in self.long_functions
            if n > MAX_FUNCTION_LINES and f not in DECISION_TABLES
        ]
        return lines


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[int, str]]:
    """(lines, qualified name) of every function and method, nested ones included."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            found.append((node.end_lineno - start + 1, prefix + node.name))
            found += _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            found += _functions(node, f"{prefix}{node.name}.")
    return found


def sizes(root: Path = REPO) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines, module) of every module and (lines, "module:qualname") of every function, biggest first."""
    modules, functions = [], []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = _module_name(path, root)
        modules.append((len(text.splitlines()), name))
        functions += [(n, f"{name}:{qualname}") for n, qualname in _functions(ast.parse(text))]
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def _layers(root: Path) -> tuple[list[list[str]], list[bool]]:
    """The layers contract of pyproject.toml, top first: each layer's full module names, and whether its members are
    independent (``|``) or may import each other (``:``)."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    (container,) = contract["containers"]
    members = [
        [f"{container}.{tail.strip().strip('()')}" for tail in layer.replace(":", "|").split("|")]
        for layer in contract["layers"]
    ]
    return members, [":" not in layer for layer in contract["layers"]]


def _place(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """(layer index, the layer member holding ``module``), or None for a module outside every layer."""
    for index, members in enumerate(layers):
        for member in members:
            if module == member or module.startswith(member + "."):
                return index, member
    return None


def _strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the groups of two or more nodes that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def facts(root: Path = REPO) -> Facts:
    """Count the package under ``root`` (grimp, the graph builder import-linter uses, reads the imports)."""
    import grimp

    loaded = sys.modules.get(PACKAGE)
    if loaded is not None and Path(loaded.__file__).resolve().parents[1] != root.resolve():
        # grimp finds the package by import machinery, which answers from sys.modules once it is imported.
        raise RuntimeError(f"{PACKAGE} is imported from elsewhere: count {root} in a process of its own (--root)")
    sys.path.insert(0, str(root))
    try:
        graph = grimp.build_graph(PACKAGE, cache_dir=None)
    finally:
        sys.path.remove(str(root))
    nodes = set(graph.modules)
    edges = {module: set(graph.find_modules_directly_imported_by(module)) & nodes for module in nodes}
    layers, independent = _layers(root)
    wrong_way = []
    for importer in sorted(nodes):
        for imported in sorted(edges[importer]):
            here, there = _place(importer, layers), _place(imported, layers)
            if here is None or there is None:
                continue
            upward = there[0] < here[0]
            sibling = there[0] == here[0] and independent[here[0]] and there[1] != here[1]
            if upward or sibling:
                wrong_way.append((importer, imported))
    big_modules, long_functions = sizes(root)
    return Facts(_strongly_connected(nodes, edges), wrong_way, big_modules, long_functions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=3, help="how many of the biggest modules and longest functions")
    parser.add_argument("--root", type=Path, default=REPO, help="the checkout to count (default: this one)")
    args = parser.parse_args()
    found = facts(args.root)
    print(f"import circles (module level): {len(found.circles)}")
    for group in found.circles:
        print(f"  {' <-> '.join(group)}")
    print(f"imports against the layers (sibling stages included): {len(found.wrong_way)}")
    for importer, imported in found.wrong_way:
        print(f"  {importer} -> {imported}")
    print(f"modules over {MAX_MODULE_LINES} lines: {sum(n > MAX_MODULE_LINES for n, _ in found.big_modules)}")
    for lines, module in found.big_modules[: args.top]:
        print(f"  {lines:5d}  {module}")
    over = [(n, f) for n, f in found.long_functions if n > MAX_FUNCTION_LINES and f not in DECISION_TABLES]
    print(f"functions over {MAX_FUNCTION_LINES} lines (outside decision tables): {len(over)}")
    for lines, function in found.long_functions[: args.top]:
        print(f"  {lines:5d}  {function}")
    broken = found.broken()
    print("floors kept" if not broken else f"{len(broken)} floors broken:")
    for line in broken:
        print(f"  {line}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
