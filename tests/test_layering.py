"""The package's imports run one way: no import cycle, and no module reads another's private names.

The graph is read from the source (ast), so it holds every ``import`` and ``from ... import`` at any
nesting level, those inside functions included (a lazy import still ties two modules together),
and the modules of a package's lazy names (the table given to ``lazy_exports``: reading the name
imports the module). Only the bodies of ``if TYPE_CHECKING:`` blocks are left out: they never run.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_unlearnable"


@dataclasses.dataclass(frozen=True)
class Import:
    """One import in ``source`` (a module name) of ``target`` (a module of the package), at ``line``;
    ``name``: the attribute taken from ``target`` (``from target import name``); ``bound``: the local
    name that refers to ``target`` itself (``from package import target``, ``import target as bound``)."""

    source: str
    target: str
    line: int
    name: str | None = None
    bound: str | None = None


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the package folder ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those inside the body of an ``if TYPE_CHECKING:`` (its ``else`` runs)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is a module of the package (None outside it)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def absolute(package: str, level: int, name: str | None) -> str:
    """The module ``from <level dots><name> import ...`` names inside ``package``."""
    if not level:
        return name or ""
    base = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join([*base, *([name] if name else [])])


def lazy_tables(tree: ast.Module) -> list[ast.Dict]:
    """The ``{name: ".module"}`` tables a module passes to ``lazy_exports`` (inline, or by a module-level name)."""
    assigned = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    tables = []
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "lazy_exports":
            table = node.args[1] if len(node.args) > 1 else None
            table = assigned.get(table.id) if isinstance(table, ast.Name) else table
            if isinstance(table, ast.Dict):
                tables.append(table)
    return tables


def module_imports(module: str, modules: dict[str, Path]) -> list[Import]:
    """The package modules ``module`` imports at run time, and what it takes from each."""
    path = modules[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for table in lazy_tables(tree):
        for key, value in zip(table.keys, table.values):
            if isinstance(key, ast.Constant) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                dots = len(value.value) - len(value.value.lstrip("."))
                target = owning_module(absolute(package, dots, value.value[dots:] or None), modules)
                if target is not None:
                    found.append(Import(module, target, value.lineno, key.value))
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = owning_module(alias.name, modules)
                if target is not None:
                    found.append(
                        Import(module, target, node.lineno, bound=alias.asname if target == alias.name else None)
                    )
        elif isinstance(node, ast.ImportFrom):
            origin = absolute(package, node.level, node.module)
            if owning_module(origin, modules) is None:
                continue
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                if submodule in modules:  # from package import module
                    found.append(Import(module, submodule, node.lineno, bound=alias.asname or alias.name))
                else:
                    found.append(Import(module, owning_module(origin, modules), node.lineno, alias.name))
    return [found_import for found_import in found if found_import.target != module]


def import_graph(root: Path) -> dict[str, list[Import]]:
    """Each module of the package under ``root`` -> its imports of other modules of the package."""
    modules = package_modules(root)
    return {module: module_imports(module, modules) for module in modules}


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for edge in graph[module]:
            if edge.target not in index:
                visit(edge.target)
                lowest[module] = min(lowest[module], lowest[edge.target])
            elif edge.target in stack:
                lowest[module] = min(lowest[module], index[edge.target])
        if lowest[module] == index[module]:
            component = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def describe_cycles(graph: dict[str, list[Import]]) -> str:
    """Each cycle with the imports that close it (module:line -> module), for the failure message."""
    lines = []
    for component in cycles(graph):
        lines.append("cycle: " + ", ".join(component))
        members = set(component)
        lines += sorted(
            {
                f"  {edge.source}:{edge.line} -> {edge.target}"
                for module in component
                for edge in graph[module]
                if edge.target in members
            }
        )
    return "\n".join(lines)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(root: Path) -> list[str]:
    """``module:line takes NAME from other.module`` for each underscore name a module imports from another
    module of the package, or reads off another module it imported (``from . import checks; checks._x``)."""
    modules = package_modules(root)
    found = set()
    for module, edges in import_graph(root).items():
        found |= {
            f"{module}:{edge.line} takes {edge.name} from {edge.target}"
            for edge in edges
            if edge.name is not None and is_private(edge.name)
        }
        bound = {edge.bound: edge.target for edge in edges if edge.bound}  # local name -> the module it names
        for node in runtime_nodes(ast.parse(modules[module].read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and is_private(node.attr)
                and bound[node.value.id] != module
            ):
                found.add(f"{module}:{node.lineno} takes {node.attr} from {bound[node.value.id]}")
    return sorted(found)


# ------------------------------------------------------------------------------------ the package
def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert len(graph) > 40 and any(graph.values())  # the walk found the package and its imports
    assert not cycles(graph), (
        "modules that import each other (drop or move one import of each cycle):\n" + describe_cycles(graph)
    )


def test_no_private_names_across_modules():
    found = private_imports(PACKAGE)
    assert not found, "a name another module uses is public (no underscore):\n" + "\n".join(found)


# ------------------------------------------------------------------------------------ the checks themselves
def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "from .a import f\n",
            "a.py": "def f():\n    from .sub.b import g\n    return g\n",
            "sub/__init__.py": "",
            "sub/b.py": "import typing\nfrom .. import f as g\n",
        },
    )
    assert cycles(import_graph(package)) == [["pkg", "pkg.a", "pkg.sub.b"]]
    assert "pkg.sub.b:2 -> pkg" in describe_cycles(import_graph(package))


def test_a_cycle_through_a_lazy_name_is_found(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "from .lazy import lazy_exports\n_PUBLIC = {'Thing': '.thing'}\n"
            "__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())\nVERSION = 1\n",
            "lazy.py": "def lazy_exports(package, exports, namespace):\n    return None, None\n",
            "thing.py": "from . import VERSION\n",
        },
    )
    graph = import_graph(package)
    assert Import("pkg", "pkg.thing", 2, "Thing") in graph["pkg"]
    assert cycles(graph) == [["pkg", "pkg.thing"]]


def test_type_checking_imports_are_not_edges(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from . import b\n",
            "b.py": "import typing\nif typing.TYPE_CHECKING:\n    from .a import X\nelse:\n    import pkg.c\n",
            "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n",
        },
    )
    graph = import_graph(package)
    assert cycles(graph) == []
    assert [(edge.target, edge.line) for edge in graph["pkg.b"]] == [("pkg.c", 5)]


def test_a_private_name_from_another_module_is_found(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "__version__ = '1'\n",
            "a.py": "_HIDDEN = 1\n_used_here = _HIDDEN\n",
            "b.py": "from . import __version__\nfrom .a import _HIDDEN\n",
            "c.py": "def f():\n    from . import a\n    return a._HIDDEN\n",
            "d.py": "import pkg.a as alias\nvalue = alias._HIDDEN\n",
        },
    )
    assert private_imports(package) == [
        "pkg.b:2 takes _HIDDEN from pkg.a",
        "pkg.c:3 takes _HIDDEN from pkg.a",
        "pkg.d:2 takes _HIDDEN from pkg.a",
    ]
