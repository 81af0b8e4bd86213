"""The module graph of kiwi/ runs one way (cli -> commands -> features -> runtime -> store/syscalls):
no module imports one that imports it back, not even through a function-level (lazy) import."""

import ast
from pathlib import Path

import kiwi

PACKAGE = Path(kiwi.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["kiwi", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST):
    """Every import statement, at any depth, except those only a type checker reads."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and is_type_checking(node.test):
            yield from (n for child in node.orelse for n in import_nodes_of(child))
            continue
        yield from import_nodes_of(node)


def import_nodes_of(node: ast.AST):
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from import_nodes(node)


def imported(module: str, is_package: bool, node, modules) -> set[str]:
    """The kiwi modules an import statement makes Python load."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    source = node.module if node.level == 0 else ".".join(p for p in (base, node.module) if p)
    names = {f"{source}.{alias.name}" for alias in node.names}
    return {source} | (names & modules.keys())


def with_packages(target: str, importer: str) -> set[str]:
    """Loading kiwi.a.b runs kiwi/a/__init__.py too, unless the importer lives inside kiwi.a
    (then that package is already loaded: `from . import x` does not import it again)."""
    parts = target.split(".")
    loaded = (".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return {name for name in loaded if not importer.startswith(name + ".")}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for node in import_nodes(tree):
            for target in imported(module, path.name == "__init__.py", node, modules):
                targets |= with_packages(target, module)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    inside = set(component)
    edges = [f"{m} -> {t}" for m in component for t in sorted(graph[m] & inside)]
    return "; ".join(edges)


def test_the_graph_sees_lazy_relative_and_package_imports():
    graph = import_graph()
    assert "kiwi.runtime" in graph["kiwi.commands"]  # a function-level `from . import runtime`
    assert "kiwi.sessions.proto" in graph["kiwi.sessions.client"]  # `from . import proto` in a package
    assert "kiwi.errors" in graph["kiwi.sessions.client"]  # `from ..errors import ...`
    assert "kiwi.sessions" in graph["kiwi.commands"]


def test_cycle_finder_finds_a_cycle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph) for c in found)
