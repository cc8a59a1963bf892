"""The import graph of the package has no cycle: layers import only layers
below them.

Every ``import`` and ``from ... import`` statement of every module is read
with ``ast`` (those inside functions too: a deferred import is still a
dependency, and a cycle hidden in a function is still a cycle).  The modules
are those of the installed layout (pyproject.toml): ``python/rwkv_cpp`` is
``rwkv_cpp`` and ``convert/`` is ``rwkv_cpp.convert``.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
#: package name -> source folder, as in pyproject.toml's wheel.packages
PACKAGES = {"rwkv_cpp": ROOT / "python" / "rwkv_cpp", "rwkv_cpp.convert": ROOT / "convert",
            "rwkv_cpp.server": ROOT / "python" / "rwkv_cpp" / "server"}
CONVERT = "rwkv_cpp.convert"


def module_files():
    """``{module name: path}`` of every module of the packages."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else "%s.%s" % (package, path.stem)
            modules[name] = path
    return modules


def imported_modules(name, path, known):
    """The modules of ``known`` that module ``name`` (file ``path``) imports."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import sub" imports the module pkg.sub when there is one
            targets = ["%s.%s" % (base, alias.name) if "%s.%s" % (base, alias.name) in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # "import a.b.c" of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph():
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph):
    """One cycle (a list of modules, first == last) per strongly connected
    component of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(cycle_in(graph, component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycle_in(graph, component):
    """A path that goes round within ``component`` (strongly connected)."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        succ = min(s for s in graph[path[-1]] if s in component)
        if succ in seen:
            return path[path.index(succ):] + [succ]
        path.append(succ)
        seen.add(succ)


def describe(found):
    return "; ".join(" -> ".join(cycle) for cycle in found)


def in_convert(module):
    return module == CONVERT or module.startswith(CONVERT + ".")


def test_graph_is_read():
    """The parser sees the imports the test relies on, deferred ones included."""
    graph = import_graph()
    assert "rwkv_cpp._lib" in graph["rwkv_cpp._model"]
    assert "rwkv_cpp.convert.legacy_bin" in graph["rwkv_cpp.legacy"]  # into the subpackage
    assert "rwkv_cpp.generation" in graph["rwkv_cpp.model"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_python_package_has_no_import_cycle():
    found = [c for c in cycles(import_graph()) if not all(in_convert(m) for m in c)]
    assert not found, "import cycles: " + describe(found)


def test_low_layer_imports_no_higher_layer():
    """Model and Context know nothing of generation, embeddings, state files
    or the command line."""
    graph = import_graph()
    higher = {"rwkv_cpp.%s" % m for m in ("model", "generate", "embedding", "state_file", "sidecar", "chat",
                                          "_cli", "tokenizers", "sampling")}
    assert not graph["rwkv_cpp._model"] & higher


def test_convert_has_no_import_cycle():
    found = [c for c in cycles(import_graph()) if all(in_convert(m) for m in c)]
    assert not found, "import cycles: " + describe(found)


def test_convert_imports_at_module_top():
    """The converter imports at the top of its modules: no import hidden in
    a function (where the old cycle hid)."""
    hidden = []
    for name, path in module_files().items():
        if not in_convert(name):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += ["%s:%d" % (path.name, n.lineno) for n in ast.walk(node)
                           if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not hidden, "imports inside functions: " + ", ".join(hidden)


@pytest.mark.parametrize("program", ["generate", "chat", "perplexity", "compare", "embed_stats", "quantize",
                                     "convert", "convert.random_model", "server"])
def test_program_not_imported_by_the_package(program):
    """``import rwkv_cpp`` imports no program module, so ``python -m
    rwkv_cpp.X`` runs it once (no runpy RuntimeWarning)."""
    res = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "rwkv_cpp." + program, "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "RuntimeWarning" not in res.stderr
