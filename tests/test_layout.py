"""The package's layering, read from the source with ``ast`` (nothing is imported).

* The library (``emojax/``) imports neither the experiment presets (``configs/``) nor the
  command-line apps (``launch/``), and starts no program of theirs (no ``"launch.train"`` for
  ``python -m``, no path built to ``configs``): those sit on top of it, and a notebook or another
  program uses the library without them. The installed distribution holds the three packages under
  their checkout names, and one command per launcher (``emojax-<name>``, ``[project.scripts]``).
* Scoring and prediction (``emojax.training.evaluation``, ``emojax.inference``, ``launch/tool.py``)
  never reach the epoch loop (``emojax.training.loop``), directly or through other modules: a
  finished run is scored and used without the training machinery.
* The library's packages follow one declared order (:data:`LAYERS`, docs/development.md): every
  import points to a package below, or within the same package, with no cycle between modules;
  an ``__init__`` imports nothing outside its package and resolves no name lazily.

Imports are collected from the whole module, those inside functions included (they run when the
function does), and importing ``a.b.c`` counts as importing ``a`` and ``a.b`` too, since Python
runs the packages' ``__init__`` files first.
"""
from __future__ import annotations

import ast
import collections
import pathlib
import re
import tomllib
from typing import Iterator, Optional

import setuptools

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = "emojax"
APPS = ("configs", "launch")

LOOP = "emojax.training.loop"
SCORING = ("emojax.training.evaluation", "emojax.inference", "launch.tool")

# The library's packages, bottom up (docs/development.md, "The order of the packages"): a module
# imports only from the layers below its own, or from its own package.
LAYERS = (
    ("emojax.files", "emojax.progress", "emojax.interrupts"),  # whole writes; progress bars; signals held
    ("emojax.metrics",),                   # scores, tables and plots
    ("emojax.data",),                      # one description per dataset, rows -> samples, media decoding
    ("emojax.encoders",),                  # pure-function encoders, their registry, hub, export
    ("emojax.config",),                    # a run config: values, names, hash, directory, label
    ("emojax.features", "emojax.model"),   # frozen features and their cache; the head and its losses
    ("emojax.runs",),                      # what a run writes and reads back: records, checkpoints, store
    ("emojax.training",),                  # a run's plan, state, steps, tuners, evaluation, the loop
    ("emojax.inference",),                 # the estimator and batch prediction; standalone copies
    ("emojax.sweep", "emojax.benchmark"),  # many runs; the benchmark command
)

_IMPORTLIB_CALLS = {"import_module", "__import__", "find_spec"}
_APP_MODULE = re.compile(r"(%s)(\.\w+)*\.?" % "|".join(APPS))


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(*packages: str) -> dict[str, pathlib.Path]:
    """Dotted name -> source file, for every module of ``packages``."""
    found = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _leading_text(node: ast.AST) -> Optional[str]:
    """The constant start of a string expression: ``"a.b"``, ``f"a.{x}"``, ``"a." + x``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _leading_text(node.left)
    return None


def _is_importlib_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in _IMPORTLIB_CALLS


def imported_names(path: pathlib.Path) -> Iterator[str]:
    """The dotted names ``path`` imports: ``import`` and ``from ... import`` statements anywhere in
    the module (``from a import b`` gives ``a`` and ``a.b``: ``b`` may be a module), and the modules
    named to ``importlib.import_module`` / ``__import__`` / ``find_spec``. A module that imports by
    a computed name also yields its string constants that are names of configs/ or launch/
    modules: a name kept in a table and imported later is still an import."""
    tree = ast.parse(path.read_text(), str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif _is_importlib_call(node) and node.args:
            text = _leading_text(node.args[0])
            if text is None or text.endswith("."):
                dynamic = True
            if text:
                yield text.rstrip(".")
    if dynamic:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _APP_MODULE.fullmatch(node.value):
                yield node.value.rstrip(".")


def app_names_in_strings(path: pathlib.Path) -> Iterator[str]:
    """The string constants of ``path``, docstrings aside, that name a configs/ or launch/ module
    or file: ``"launch.train"`` for ``python -m``, ``"configs"`` or ``"configs/train.py"`` for a
    path built from the checkout. Messages that mention them in a sentence are not names."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and _APP_MODULE.fullmatch(node.value.replace("/", "."))):
            yield node.value


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``modules`` it imports, the packages above each included."""
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imported in imported_names(path):
            parts = imported.split(".")
            edges.update(prefix for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                         if prefix in modules and prefix != name)
        graph[name] = edges
    return graph


def import_path(graph: dict[str, set[str]], start: str, goal: str) -> Optional[list[str]]:
    """A chain of imports from ``start`` to ``goal`` (breadth first: a shortest one), or ``None``."""
    parent: dict[str, Optional[str]] = {start: None}
    queue = collections.deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            chain = []
            while node is not None:
                chain.append(node)
                node = parent[node]
            return chain[::-1]
        for nxt in sorted(graph.get(node, ())):
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return None


def test_library_imports_neither_configs_nor_launch():
    offenders = {}
    for name, path in _modules(LIBRARY).items():
        bad = sorted({imported for imported in imported_names(path) if imported.split(".")[0] in APPS})
        if bad:
            offenders[path.relative_to(ROOT).as_posix()] = bad
    assert not offenders, f"library modules importing configs/ or launch/: {offenders}"


def test_library_starts_no_program_of_configs_or_launch():
    offenders = {}
    for name, path in _modules(LIBRARY).items():
        bad = sorted(set(app_names_in_strings(path)))
        if bad:
            offenders[path.relative_to(ROOT).as_posix()] = bad
    assert not offenders, f"library modules naming configs/ or launch/ programs or files: {offenders}"


def test_string_check_sees_program_names(tmp_path):
    # The check above means something only if it catches each form (and spares sentences and
    # docstrings).
    source = tmp_path / "m.py"
    source.write_text('"""Run launch.train."""\nimport importlib\n\n\ndef f(root):\n    """configs"""\n'
                      '    importlib.import_module("configs.experiments." + "x")\n'
                      '    return ["-m", "launch.train", root / "configs" / "train.py", "see configs/train.py"]\n')
    assert sorted(app_names_in_strings(source)) == ["configs", "configs.experiments.", "launch.train"]


def test_distribution_packages_the_library_and_the_apps():
    """``pip install`` takes the packages ``[tool.setuptools.packages.find]`` finds: every package
    of ``emojax/``, ``configs/`` and ``launch/``, under the names they have in the checkout, and
    nothing else (no tests, benchmarks or folders of data)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    finder = setuptools.find_namespace_packages if config.get("namespaces", True) else setuptools.find_packages
    where = ROOT.joinpath(*config.get("where", ["."])[:1])
    found = set(finder(str(where), include=config.get("include", ["*"]), exclude=config.get("exclude", ())))
    wanted = {".".join(init.parent.relative_to(where).parts)
              for top in (LIBRARY, *APPS) for init in (ROOT / top).rglob("__init__.py")}
    assert {LIBRARY, "emojax.training", "configs.experiments", "launch"} <= wanted
    assert found == wanted, f"packaged besides the library and the apps: {sorted(found - wanted)}; " \
                            f"packages left out: {sorted(wanted - found)}"


def _launchers() -> list[str]:
    """The launchers: the modules of launch/ that run as ``python -m launch.<name>``."""
    return sorted(path.stem for path in (ROOT / "launch").glob("*.py")
                  if not path.stem.startswith("_") and 'if __name__ == "__main__":' in path.read_text())


def test_every_launcher_is_an_installed_command():
    """``emojax-<name> = "launch:<name>_main"`` for each launcher, and ``launch.<name>_main()`` runs
    ``launch.<name>`` as ``__main__`` (``_run("<name>")``), as ``python -m`` does."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    launchers = _launchers()
    assert {"train", "evaluate", "infer", "tool", "sweep", "benchmark"} <= set(launchers)
    assert scripts == {f"emojax-{name}": f"launch:{name}_main" for name in launchers}
    tree = ast.parse((ROOT / "launch" / "__init__.py").read_text())
    bodies = {node.name: ast.unparse(node.body[-1]) for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in launchers:
        assert bodies.get(f"{name}_main") == f"_run({name!r})", \
            f"launch/__init__.py: {name}_main() should run _run({name!r})"
        assert name not in bodies, f"launch/__init__.py: a function {name}() would hide the module launch.{name}"


def test_scoring_never_reaches_the_epoch_loop():
    modules = _modules(LIBRARY, "launch")
    graph = import_graph(modules)
    assert LOOP in modules
    for start in SCORING:
        assert start in modules, start
        chain = import_path(graph, start, LOOP)
        assert chain is None, f"{start} reaches {LOOP}: {' -> '.join(chain)}"


def _package(module: str) -> str:
    """The declared package of ``module`` (``emojax`` itself for the root)."""
    for layer in LAYERS:
        for package in layer:
            if module == package or module.startswith(package + "."):
                return package
    return module


def _level(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def module_edges(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """Module -> the library modules it imports by name (a package's ``__init__`` counts only where
    it is named itself: the plain ``__init__`` files are checked on their own)."""
    return {name: {imported for imported in imported_names(path) if imported in modules and imported != name}
            for name, path in modules.items()}


def test_every_library_module_has_a_declared_place():
    declared = {package for layer in LAYERS for package in layer}
    for name in _modules(LIBRARY):
        assert name == LIBRARY or _package(name) in declared, f"{name}: not in a package of LAYERS"


def order_problems(edges: dict[str, set[str]]) -> list[str]:
    """The imports of ``edges`` (module -> modules) that do not point down :data:`LAYERS`."""
    wrong = []
    for name, imported in edges.items():
        for other in imported:
            if LIBRARY in (name, other):
                continue
            a, b = _package(name), _package(other)
            if a != b and _level(b) >= _level(a):
                wrong.append(f"{name} -> {other} ({a} is not above {b})")
    return sorted(wrong)


def test_imports_point_down_the_declared_order():
    wrong = order_problems(module_edges(_modules(LIBRARY)))
    assert not wrong, "imports against the declared order:\n" + "\n".join(wrong)


def test_no_cycle_between_library_modules():
    modules = _modules(LIBRARY)
    edges = {name: {m for m in imported if not modules[m].name == "__init__.py"}
             for name, imported in module_edges(modules).items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_init_files_are_plain():
    for name, path in _modules(LIBRARY).items():
        if path.name != "__init__.py":
            continue
        source = path.read_text()
        assert "__getattr__" not in source, f"{path}: resolves names lazily"
        outside = [m for m in imported_names(path) if m.startswith(LIBRARY + ".") and _package(m) != _package(name)
                   and name != LIBRARY]
        assert not outside, f"{path}: imports from outside its package: {outside}"


def test_layer_check_sees_a_wrong_import():
    # The order check means something only if it finds an upward or sideways import.
    assert order_problems({"emojax.data.meld": {"emojax.training.loop"}}) == [
        "emojax.data.meld -> emojax.training.loop (emojax.data is not above emojax.training)"]
    assert order_problems({"emojax.model.fusion": {"emojax.features.cache"}})
    assert not order_problems({"emojax.training.loop": {"emojax.data.meld", "emojax.training.steps"}})


def test_import_graph_sees_the_imports():
    # The check above means something only if the graph holds the real edges.
    graph = import_graph(_modules(LIBRARY, "launch"))
    assert import_path(graph, "launch.train", LOOP) == ["launch.train", LOOP]
    assert "emojax.training.steps" in graph["emojax.training.evaluation"]
    assert "emojax.training" in graph["emojax.training.evaluation"]  # the package above runs first
    assert import_path(graph, "launch.tool", "emojax.training.evaluation") is not None  # through inference
