"""The package's dependency rule (docs/design.md), checked on the source with ``ast``.

Layers, lowest first: ``kernels`` (and the native extension), ``common``, ``models``,
``method``, ``io``, ``harness``, ``cli``, and the package root (the public API, which may
import anything). A module imports only from its own layer or below, and no module reaches
itself again through its imports: imports inside functions count too."""
import ast
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = {"sls_fast": os.path.join(HERE, "..", "..", "sls_fast"),
           "sls_fast.kernels": os.path.join(HERE, "..", "..", "kernels")}
LAYERS = ["sls_fast.kernels", "sls_fast.common", "sls_fast.models", "sls_fast.method",
          "sls_fast.io", "sls_fast.harness", "sls_fast.cli"]
BOTTOM = {"sls_fast._C", "sls_fast._version"}  # the native extension, the version string


def modules() -> dict:
    """{module name: file} for every module of the package (kernels under sls_fast.kernels)."""
    found = {}
    for prefix, root in SOURCES.items():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "csrc")]
            if prefix == "sls_fast" and os.path.abspath(dirpath).startswith(
                    os.path.abspath(SOURCES["sls_fast.kernels"])):
                continue
            for f in filenames:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].replace(os.sep, ".")
                name = prefix if rel == "__init__" else (
                    f"{prefix}.{rel[:-len('.__init__')]}" if rel.endswith(".__init__") else f"{prefix}.{rel}")
                found[name] = os.path.join(dirpath, f)
    return found


def imports(name: str, path: str, known: set) -> set:
    """The package's modules that ``name`` imports anywhere in its source."""
    is_pkg = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_pkg else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known | BOTTOM else mod
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t in BOTTOM:
                out.add(t)
                continue
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                out.add(t)
    return out


def layer(name: str) -> int:
    if name in BOTTOM:
        return -1
    for i, prefix in enumerate(LAYERS):
        if name == prefix or name.startswith(prefix + "."):
            return i
    return len(LAYERS) if name in ("sls_fast", "sls_fast.__main__") else None


GRAPH = None


def graph() -> dict:
    global GRAPH
    if GRAPH is None:
        mods = modules()
        GRAPH = {m: imports(m, p, set(mods)) for m, p in mods.items()}
    return GRAPH


def test_every_module_has_a_layer():
    assert "sls_fast.method.score" in graph() and "sls_fast.kernels.tsne" in graph()
    assert [m for m in graph() if layer(m) is None] == []


def test_arrows_point_down():
    upward = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps
                    if layer(b) > layer(a))
    assert upward == [], "imports that go up a layer:\n" + "\n".join(upward)


def _cycles(g: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(graph())
    assert cycles == [], "modules that import each other (also through functions):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_function_level_imports_and_cycles():
    """The rule is only as good as its reading of the source: a function-level upward import
    and a two-module cycle must be caught."""
    assert "sls_fast.models.families" in graph()["sls_fast.models.adapters"]
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    src = "def f():\n    from sls_fast.harness import pipeline\n"
    tree_imports = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)]
    assert tree_imports and layer("sls_fast.harness.pipeline") > layer("sls_fast.models.train")
