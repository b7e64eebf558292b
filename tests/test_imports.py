"""The package's own imports form no cycle.

A cycle closed by an import inside a function works at runtime but hides the real layering; this test
parses every module with `ast` (no jax import) and counts imports at module level and inside functions
alike. Imports that exist only under `if TYPE_CHECKING:` are left out.
"""
import ast
from pathlib import Path

PACKAGE = "magnet_jax"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _module_files():
    """{dotted module name: path}; a package is named by its directory and stands for its `__init__.py`."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree):
    """Every Import / ImportFrom node, skipping the bodies of `if TYPE_CHECKING:` (but not their `else`)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name, modules):
    """The nearest module in the package that `name` names (a module, or the package holding it)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph():
    modules = _module_files()
    graph = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module
                # `from a.b import c` imports a.b.c when that is a module, else a.b
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    resolved = _resolve(target, modules)
                    if resolved and resolved != mod:
                        edges.add(resolved)
        graph[mod] = edges
    return graph


def find_cycles(graph):
    """One cycle per strongly connected component with more than one module (Tarjan + a path inside it)."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sccs:
        start = min(comp)
        # breadth-first search inside the component for the shortest path back to `start`
        prev, frontier, found = {start: None}, [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        cycles.append(list(reversed(path)) + [start])
    return cycles


def _component(graph, start):
    """The modules that both reach and are reached from `start`."""
    def reach(edges):
        seen, todo = {start}, [start]
        while todo:
            for w in edges(todo.pop()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen
    return reach(lambda v: graph[v]) & reach(lambda v: {u for u in graph if v in graph[u]})


def test_graph_sees_the_package():
    graph = import_graph()
    assert f"{PACKAGE}.pipeline" in graph and f"{PACKAGE}.train.trainer" in graph
    assert any(graph.values())
    # `from magnet_jax import hub` is the submodule, not the package's __init__
    parts = graph[f"{PACKAGE}.pretrained_parts"]
    assert f"{PACKAGE}.hub" in parts and PACKAGE not in parts


def test_the_detector_finds_cycles_and_skips_type_checking_imports():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nelse:\n    import y\n"
                     "def f():\n    import z\n")
    assert sorted(n.names[0].name for n in _import_nodes(tree)) == ["TYPE_CHECKING", "y", "z"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    lines = []
    for cycle in cycles:
        comp = _component(graph, cycle[0])
        lines.append(" -> ".join(cycle))
        lines += [f"    {v} -> {w}" for v in sorted(comp) for w in sorted(graph[v] & comp)]
    msg = "\n".join(lines)
    if cycles:
        print("import cycles:\n" + msg)
    assert not cycles, "import cycles:\n" + msg
