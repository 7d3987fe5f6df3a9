"""The repository's layers, checked from the source so a newcomer can trust them (issue #37).

* ``bench/`` holds performance benchmarks only: at most 1,500 lines, no product privates, no ``sys.path``
  into ``tests/``. Experiments live in ``research/`` under the same rules (public APIs only).
* The import graph of ``synth`` and ``classifier`` (module-level imports, read with ``ast``):
  generator and inference share one diffusers-pipeline module instead of importing each other; ``classifier``
  uses only synth's core; ``synth.ablation`` may use ``classifier``, never the reverse; no cycles.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("synth", "classifier")
BENCH_MAX_LINES = 1500

#: The part of ``synth`` that ``classifier`` may use: data model, IO, process state and small utilities.
#: Everything else (generator, inference, filtering, ablation, commands, phantom, ...) sits above it.
SYNTH_CORE = (
    "synth.cache_checksum",
    "synth.config",
    "synth.config_errors",
    "synth.csv_files",
    "synth.distributed",
    "synth.errors",
    "synth.hashing",
    "synth.image_datasets",
    "synth.io",
    "synth.manifest",
    "synth.model_card",
    "synth.model_files",
    "synth.output_folder",
    "synth.progress",
    "synth.provenance",
    "synth.taxonomy",
    "synth.training",
)


#: The layers of ``synth/__init__.py``'s docstring, bottom to top: a module imports nothing from a layer above its
#: own (the longest matching prefix decides a module's layer; ``synth`` itself holds only ``__version__``).
LAYERS = (
    ("synth",) + SYNTH_CORE,
    ("synth.readers", "synth.splits", "synth.stats", "synth.prompts", "synth.cooccurrence", "synth.text_encoder"),
    ("synth.diffusion",),
    ("synth.phantom", "synth.prepare", "synth.prepare_images", "synth.generator", "synth.finetune", "synth.inference"),
    ("classifier",),
    ("synth.filtering",),
    ("synth.ablation",),
    ("synth.commands", "synth.cli", "synth.__main__", "synth.inference.__main__"),
)


def _py_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py")) if (REPO / folder).is_dir() else []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    if not level:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(tree: ast.Module, importer: str, is_package: bool, top_level_only: bool):
    """(imported module, imported names, node) for every import; ``top_level_only`` skips function bodies."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node
        elif isinstance(node, ast.ImportFrom):
            yield _resolve(node.module, node.level, importer, is_package), tuple(a.name for a in node.names), node
        elif top_level_only and isinstance(node, (ast.If, ast.Try, ast.With)):
            # module-level ``if``/``try`` blocks run at import time (TYPE_CHECKING blocks never do)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                stack.extend(node.orelse)
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []))
        elif top_level_only and isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)


@lru_cache(maxsize=None)
def _product_modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for pkg in PRODUCT:
        for path in _py_files(pkg):
            out[_module_name(path)] = (path, path.name == "__init__.py")
    return out


def _target(name: str, names: tuple[str, ...], modules) -> list[str]:
    """The product modules an import statement depends on: ``from pkg import mod`` needs ``pkg.mod`` (and ``pkg``
    only for names that are not submodules: a package's own submodule importing a sibling is no cycle)."""
    found = [f"{name}.{n}" for n in names if f"{name}.{n}" in modules]
    needs_package = name in modules and (not names or len(found) < len(names))
    return found + ([name] if needs_package else [])


@lru_cache(maxsize=None)
def import_graph(top_level_only: bool = True) -> dict[str, set[str]]:
    modules = _product_modules()
    graph: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        deps = set()
        for name, names, _ in _imports(tree, mod, is_pkg, top_level_only):
            deps.update(t for t in _target(name, names, modules) if t != mod)
        graph[mod] = deps
    return graph


def _within(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


# ----------------------------------------------------------------------------- bench/ and research/


#: Scripts in bench/ that are not benchmarks: the results renderer belongs with the results store (issue #37 item 2)
#: and leaves bench/ with it. Nothing else may join this list.
NOT_BENCHMARKS = {"phantom_cpu_table.py"}


def test_bench_holds_benchmarks_only():
    others = [p.name for p in _py_files("bench") if not p.name.startswith("bench_") and p.name not in NOT_BENCHMARKS]
    assert not others, f"bench/ holds performance benchmarks (bench_*.py) only; move {others} to research/"


def test_bench_is_small():
    lines = sum(len(p.read_text().splitlines()) for p in _py_files("bench") if p.name not in NOT_BENCHMARKS)
    assert lines <= BENCH_MAX_LINES, f"bench/ has {lines} lines of benchmarks (at most {BENCH_MAX_LINES})"


@pytest.mark.parametrize("folder", ["bench", "research"])
def test_scripts_use_public_product_names_only(folder):
    modules = _product_modules()
    bad = []
    for path in _py_files(folder):
        tree = ast.parse(path.read_text(), str(path))
        product_aliases = set()
        for name, names, node in _imports(tree, "", False, top_level_only=False):
            if name.split(".")[0] not in PRODUCT:
                continue
            if any(part.startswith("_") and part != "__future__" for part in name.split(".")):
                bad.append(f"{path.name}:{node.lineno} imports {name}")
            bad += [f"{path.name}:{node.lineno} imports {name}.{n}" for n in names if n.startswith("_")]
            if isinstance(node, ast.Import):
                product_aliases.update(a.asname or a.name.split(".")[0] for a in node.names)
            else:
                product_aliases.update(a.asname or a.name for a in node.names if f"{name}.{a.name}" in modules)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in product_aliases:
                    bad.append(f"{path.name}:{node.lineno} uses {ast.unparse(node)}")
    assert not bad, f"{folder}/ uses product privates (make them public API or do without): {bad}"


@pytest.mark.parametrize("folder", ["bench", "research"])
def test_scripts_do_not_reach_into_tests(folder):
    bad = []
    for path in _py_files(folder):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and "sys.path" in ast.unparse(node.func) and "tests" in ast.unparse(node):
                bad.append(f"{path.name}:{node.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n == "tests" or n.startswith("tests.") for n in names):
                    bad.append(f"{path.name}:{node.lineno}")
    assert not bad, f"{folder}/ reaches into tests/ (use product APIs): {bad}"


# ----------------------------------------------------------------------------- product layers


def test_generator_and_inference_do_not_import_each_other():
    graph = import_graph(top_level_only=False)
    bad = [
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if (_within(a, "synth.generator") and _within(b, "synth.inference"))
        or (_within(a, "synth.inference") and _within(b, "synth.generator"))
    ]
    assert not bad, f"generator and inference import each other (share a module below both instead): {bad}"


def test_classifier_uses_only_synth_core():
    graph = import_graph(top_level_only=False)
    bad = sorted(
        (a, b)
        for a, deps in graph.items()
        if _within(a, "classifier")
        for b in deps
        if _within(b, "synth") and b != "synth" and not any(_within(b, core) for core in SYNTH_CORE)
    )
    assert not bad, f"classifier imports synth beyond its core {SYNTH_CORE}: {bad}"


def _layer(mod: str) -> int | None:
    matches = [(len(p), i) for i, layer in enumerate(LAYERS) for p in layer if mod == p or _within(mod, p)]
    return max(matches)[1] if matches else None


def test_every_module_has_a_layer_and_imports_none_above_it():
    graph = import_graph(top_level_only=False)
    unplaced = sorted(m for m in graph if _layer(m) is None)
    assert not unplaced, f"modules in no layer of LAYERS (place them, and in synth/__init__.py's map): {unplaced}"
    upward = sorted((a, b) for a, deps in graph.items() for b in deps if _layer(b) > _layer(a))
    assert not upward, f"imports from a higher layer (see synth/__init__.py): {upward}"


def test_synth_core_does_not_import_upper_layers():
    graph = import_graph(top_level_only=False)
    bad = sorted(
        (a, b)
        for a, deps in graph.items()
        if any(_within(a, core) for core in SYNTH_CORE)
        for b in deps
        if _within(b, "classifier") or (_within(b, "synth") and not any(_within(b, c) for c in SYNTH_CORE))
    )
    assert not bad, f"synth's core imports a layer above it: {bad}"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the cycle it closes (empty: the graph is acyclic)."""
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    return cycles


def test_cycle_finder_finds_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph(top_level_only=True))
    assert not cycles, "module-level import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_one_hashing_helper():
    """Every cache key, fingerprint and checksum goes through ``synth.hashing`` (explicit algorithm and length), so
    two modules cannot hash the same thing two ways; ``hashlib`` is imported nowhere else in the product."""
    bad = []
    for mod, (path, is_pkg) in _product_modules().items():
        if mod == "synth.hashing":
            continue
        tree = ast.parse(path.read_text(), str(path))
        bad += [f"{mod}:{node.lineno}" for name, _, node in _imports(tree, mod, is_pkg, False) if name == "hashlib"]
    assert not bad, f"hashlib used outside synth/hashing.py (use hex_hash / Hasher / file_digest): {bad}"


def test_no_re_export_shims():
    for shim in ("synth/generate.py", "synth/training/accelerator.py"):
        assert not (REPO / shim).exists(), f"{shim} only re-exports another module; import that module instead"
