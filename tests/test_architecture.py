"""docs/ARCHITECTURE.md against the tree.

- Every source file (src/*.h, src/*.cpp, rwkv.h, rwkv.cpp,
  python/rwkv_cpp/*.py, python/rwkv_cpp/server/*.py, convert/*.py) is in a row of a layer table (a
  table headed ``| layer | files | uses | owns |``), once per table.
- Every ``#include "..."`` (C++) and every import (Python, read by
  test_imports.import_graph, deferred ones too) goes from a file to its own
  layer or to one its layer may use: those of its "uses" column, and theirs,
  transitively.  ``rwkv.h`` is the exception the page states: any layer may
  include it for its types (tests/test_layers.py checks that none calls its
  functions).
- A "uses" column names only layers of earlier rows (tables run bottom to
  top), so the layers have no cycle.
- Every path the page names in backticks exists (``{a,b}`` expands, ``*``
  globs; a name with ``<`` is a placeholder), and every bench, tools, docs
  and test-helper file is named.
- The paths of README.md's "Layout" table exist.
"""

import os
import re
from pathlib import Path

from test_imports import import_graph, module_files

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
TABLE_HEADER = "| layer | files | uses | owns |"
#: included everywhere for its types; only rwkv.cpp implements it
PUBLIC_HEADER = "rwkv.h"
PATH_START = re.compile(r"(?:src|python|convert|bench|tests|tools|docs|examples|demo|ggml|\.ci)/")
ROOT_FILES = {"rwkv.h", "rwkv.cpp", "CMakeLists.txt", "pyproject.toml", "README.md"}
BARE_FILE = re.compile(r"[\w.-]+\.(?:h|cpp|c|py|md|cmake|toml)")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
SKIP_DIRS = {".git", ".venv", "build", "_skbuild", "dist", "__pycache__", ".pytest_cache"}


def rel(path):
    return path.relative_to(ROOT).as_posix()


def expand(token):
    """``src/a.{h,cpp}`` -> ``["src/a.h", "src/a.cpp"]`` (nested groups too)."""
    m = re.search(r"\{([^{}]*)\}", token)
    if not m:
        return [token]
    return [x for alt in m.group(1).split(",") for x in expand(token[:m.start()] + alt + token[m.end():])]


def code_spans(text):
    return re.findall(r"`([^`\n]+)`", text)


def named_paths(text):
    """The repository paths in the backticked spans of text, expanded."""
    found = []
    for span in code_spans(text):
        for piece in span.split():
            piece = piece.rstrip(",;:)")
            if "<" in piece:
                continue
            if PATH_START.match(piece) or piece in ROOT_FILES:
                found += expand(piece)
    return found


def tree_files():
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        files += [rel(Path(folder) / name) for name in names]
    return files


def source_files():
    paths = [ROOT / "rwkv.h", ROOT / "rwkv.cpp"]
    paths += sorted((ROOT / "src").glob("*.h")) + sorted((ROOT / "src").glob("*.cpp"))
    paths += sorted((ROOT / "python" / "rwkv_cpp").glob("*.py")) + sorted((ROOT / "convert").glob("*.py"))
    paths += sorted((ROOT / "python" / "rwkv_cpp" / "server").glob("*.py"))
    return [rel(p) for p in paths]


def layer_tables():
    """``[(title, [(layer, files, uses)])]``, one per layer table; a folder
    (``convert/``) stands for its source files."""
    tables, title, rows = [], None, None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
        if line.strip() == TABLE_HEADER:
            rows = []
            tables.append((title, rows))
            continue
        if rows is None:
            continue
        if not line.startswith("|"):
            rows = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set(cells[0]) <= set("- "):  # the separator row
            continue
        assert len(cells) == 4, line
        files = []
        for token in code_spans(cells[1]):
            assert "*" not in token and "<" not in token, "name every file of a layer: %r" % token
            for path in expand(token):
                if path.endswith("/"):
                    files += [rel(p) for p in sorted((ROOT / path).glob("*")) if p.suffix in (".py", ".h", ".cpp")]
                else:
                    files.append(path)
        uses = [u.strip() for u in cells[2].split(",") if u.strip() not in ("", "-")]
        rows.append((cells[0], files, uses))
    return tables


def dependencies():
    """``{file: set of files it includes or imports}`` for the source files."""
    deps = {}
    for path in source_files():
        if path.endswith((".h", ".cpp")):
            found = set()
            for name in INCLUDE.findall((ROOT / path).read_text(encoding="utf-8")):
                for candidate in ("src/" + name, name):
                    if (ROOT / candidate).is_file():
                        found.add(candidate)
                        break
            deps[path] = found
    paths = {name: rel(path) for name, path in module_files().items()}
    for name, imported in import_graph().items():
        deps[paths[name]] = {paths[m] for m in imported}
    return deps


def closure(layer, uses):
    """The layers ``layer`` may use: its own and, transitively, its "uses"."""
    seen, todo = {layer}, [layer]
    while todo:
        for used in uses[todo.pop()]:
            if used not in seen:
                seen.add(used)
                todo.append(used)
    return seen


def test_page_has_the_three_layer_tables():
    titles = [title for title, _ in layer_tables()]
    assert len(titles) == 3, titles
    for title, rows in layer_tables():
        assert rows, title


def test_expand():
    assert expand("src/a.{h,cpp}") == ["src/a.h", "src/a.cpp"]
    assert expand("x_{a,b}.{h,c}") == ["x_a.h", "x_a.c", "x_b.h", "x_b.c"]


def test_uses_name_earlier_layers():
    for title, rows in layer_tables():
        earlier = set()
        for layer, _, uses in rows:
            assert layer not in earlier, "%s: layer %r twice" % (title, layer)
            unknown = [u for u in uses if u not in earlier]
            assert not unknown, "%s: %r uses %s, not a layer below it" % (title, layer, unknown)
            earlier.add(layer)


def test_every_source_file_has_a_layer():
    in_tables = set()
    for title, rows in layer_tables():
        files = [f for _, layer_files, _ in rows for f in layer_files]
        twice = sorted({f for f in files if files.count(f) > 1})
        assert not twice, "%s: in two layers: %s" % (title, twice)
        missing = [f for f in files if not (ROOT / f).is_file()]
        assert not missing, "%s: no such file: %s" % (title, missing)
        in_tables.update(files)
    absent = [f for f in source_files() if f not in in_tables]
    assert not absent, "not in any layer table of docs/ARCHITECTURE.md: %s" % absent


def test_includes_and_imports_follow_the_layers():
    deps = dependencies()
    wrong = []
    for title, rows in layer_tables():
        uses = {layer: layer_uses for layer, _, layer_uses in rows}
        layer_of = {f: layer for layer, files, _ in rows for f in files}
        for path, layer in layer_of.items():
            allowed = closure(layer, uses)
            for dep in sorted(deps.get(path, ())):
                if dep == PUBLIC_HEADER or dep not in layer_of:
                    continue
                if layer_of[dep] not in allowed:
                    wrong.append("%s (%s) -> %s (%s)" % (path, layer, dep, layer_of[dep]))
    assert not wrong, "against the layers of docs/ARCHITECTURE.md: " + "; ".join(wrong)


def test_dependencies_are_read():
    deps = dependencies()
    assert "src/rwkv_model.h" in deps["src/rwkv_graph_v4.cpp"]
    assert "rwkv.h" in deps["src/rwkv_common.h"]
    assert "python/rwkv_cpp/_lib.py" in deps["python/rwkv_cpp/_model.py"]
    assert "convert/legacy_bin.py" in deps["python/rwkv_cpp/legacy.py"]


def test_named_paths_exist():
    text = DOC.read_text(encoding="utf-8")
    missing = []
    for path in named_paths(text):
        if "*" in path:
            ok = any(ROOT.glob(path))
        elif path.endswith("/"):
            ok = (ROOT / path).is_dir()
        else:
            ok = (ROOT / path).is_file()
        if not ok:
            missing.append(path)
    names = {Path(f).name for f in tree_files()}
    for span in code_spans(text):
        if BARE_FILE.fullmatch(span) and span not in names:
            missing.append(span)
    assert not missing, "named in docs/ARCHITECTURE.md, absent from the tree: %s" % missing


def test_tools_bench_docs_and_test_helpers_are_named():
    named = set(named_paths(DOC.read_text(encoding="utf-8")))
    expected = [rel(p) for p in sorted((ROOT / "bench").glob("*.py")) + sorted((ROOT / "bench").glob("*.c"))]
    expected += [rel(p) for p in sorted((ROOT / "tools").glob("*.py")) + sorted((ROOT / "docs").glob("*.md"))]
    expected += [rel(p) for p in sorted((ROOT / "tests").glob("*.py")) if not p.name.startswith("test_")]
    absent = [f for f in expected if f not in named]
    assert not absent, "not named in docs/ARCHITECTURE.md: %s" % absent


def test_readme_layout_paths_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in layout.splitlines() if line.startswith("| `")]
    assert rows
    missing = [p for row in rows for p in named_paths(row.split("|")[1]) if not (ROOT / p).exists()]
    assert not missing, "README.md's Layout table names absent paths: %s" % missing
