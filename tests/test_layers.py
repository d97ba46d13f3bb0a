"""The package's layers (docs/architecture.md): nothing imports from a layer above it, only
``fedssl.federation`` (and what builds on it) pulls in Flower, and the launch scripts stay thin."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fedssl"

#: bottom (0) to top; a module may import its own layer and the layers below it
LAYERS = {
    "fedssl": 0,  # the package's __init__ (allocator settings)
    "fedssl.config": 0,
    "fedssl.privacy": 0,  # the accountant and which private settings hold together
    "fedssl.runs": 0,
    "fedssl.tracking": 0,
    "fedssl.plots": 0,
    "fedssl.runtime": 1,
    "fedssl.aggregation": 1,
    "fedssl.reports": 1,
    "fedssl.data": 2,
    "fedssl.models": 3,
    "fedssl.methods": 4,
    "fedssl.federation": 5,
    "fedssl.hub": 5,
    "fedssl.cli": 6,
    "fedssl.experiments": 6,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise KeyError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, path


def _imports(path: Path) -> set[str]:
    """Every module an import statement names (top-level and inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # from fedssl import x
    return out


def test_no_module_imports_from_a_layer_above_it():
    climbs = []
    for name, path in _modules():
        own = _layer(name)
        for imp in _imports(path):
            if imp.split(".")[0] in ("launch", "benchmarks", "tests"):
                climbs.append(f"{name} imports {imp}")
            elif imp.startswith("fedssl"):
                try:
                    theirs = _layer(imp)
                except KeyError:
                    continue  # a name imported from a module (from fedssl.x import func)
                if theirs > own:
                    climbs.append(f"{name} (layer {own}) imports {imp} (layer {theirs})")
    assert climbs == []


def test_only_federation_imports_flower():
    users = sorted(
        name
        for name, path in _modules()
        if any(i == "flwr" or i.startswith("flwr.") for i in _imports(path))
    )
    assert users and all(u.startswith("fedssl.federation.") for u in users), users


def test_methods_run_without_flower():
    """Importing every module of the methods layer (and below) loads no flwr at all."""
    below = [n for n, _ in _modules() if _layer(n) <= LAYERS["fedssl.methods"]]
    code = (
        "import importlib, sys\n"
        f"for m in {below!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith(('flwr.', "
        "'fedssl.federation', 'fedssl.experiments'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_client_app_imports_without_torch():
    """A deployed client starts a process per message: importing the ClientApp (its mods
    included) must not load torch, which costs a second; the work imports it when it runs."""
    code = "import sys, fedssl.federation.client_app; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"


#: what a launch script may define: argument parsing and the call into the package
LAUNCHER_FUNCTIONS = {
    "parse_args", "overrides", "env_overrides", "options", "name_run", "keep_earlier",
    "runtime_config", "main", "_main",  # _main: main's body, run under fedssl.cli.exit_code
}  # fmt: skip


@pytest.mark.parametrize("script", sorted((ROOT / "launch").glob("*.py")), ids=lambda p: p.name)
def test_launch_scripts_only_parse_and_call(script):
    tree = ast.parse(script.read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert defined <= LAUNCHER_FUNCTIONS, (
        f"library logic in {script.name}: {defined - LAUNCHER_FUNCTIONS}"
    )
    assert len(script.read_text().splitlines()) <= 140
    assert "sys.path.insert" not in script.read_text()


def test_benchmarks_use_the_installed_package():
    offenders = [
        p.name for p in (ROOT / "benchmarks").glob("*.py") if "sys.path.insert" in p.read_text()
    ]
    assert offenders == []


def _import_graph() -> dict[str, set[str]]:
    """Module -> the fedssl modules it imports (at the top or inside a function). ``from a
    import b`` counts as importing ``a.b`` when that is a module, else ``a``; a package's
    ``__init__``, which Python runs on the way to its modules, is not counted for them."""
    names = dict(_modules())

    def module_of(dotted: str) -> str:
        while dotted and dotted not in names:
            dotted = dotted.rpartition(".")[0]
        return dotted

    graph = {}
    for name, path in names.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(module_of(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(module_of(f"{node.module}.{a.name}") for a in node.names)
        graph[name] = {t for t in targets if t.startswith("fedssl") and t != name}
    return graph


def test_the_package_has_no_import_circle():
    """Not even a lazy one inside a function: a circle means two modules that need each other,
    so neither can be read (or moved) alone."""
    graph, circles = _import_graph(), []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []
