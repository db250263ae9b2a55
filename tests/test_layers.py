"""Import layers of sepkit and data_prep (docs/architecture.md), and the ``sepkit``
command's plugin mechanism that keeps sepkit free of data_prep imports.

The checker reads every module with ``ast``: every import statement anywhere in the
module (inside functions too, relative forms resolved), so a lazy import cannot hide
an upward dependency. The checker itself is tested on small synthetic graphs and on a
real package written to disk, so the tree tests below cannot pass by checking nothing.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_sepkit
from fixtures.fake_corpora import make_speaker_folders

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sepkit", "data_prep")


@dataclass(frozen=True)
class Layer:
    """Modules (fnmatch patterns on dotted names) at one rank of the import order.

    A module may import modules of its own layer or of any layer with a lower rank;
    two layers of equal rank (models and data) are siblings and may not import each other.
    """

    name: str
    rank: int
    patterns: tuple[str, ...]


# Bottom to top; docs/architecture.md explains each placement.
LAYERS: tuple[Layer, ...] = (
    # Shared utilities on plain tensors/arrays and files, needed by several layers above.
    Layer(
        "base",
        0,
        (
            "sepkit",
            "sepkit.allocator",
            "sepkit.fileio",
            "sepkit.audio",
            "sepkit.resample",
            "sepkit.losses",
            "sepkit.metrics",
            "sepkit.restricted_pickle",
        ),
    ),
    Layer("ops", 1, ("sepkit.ops", "sepkit.ops.*")),
    Layer("nn", 2, ("sepkit.nn", "sepkit.nn.*")),
    Layer("models", 3, ("sepkit.models", "sepkit.models.*")),
    Layer("data", 3, ("sepkit.data", "sepkit.data.*")),
    # Saves and rebuilds models (needs the registry); used by training, inference and evaluation.
    Layer("checkpoint", 4, ("sepkit.checkpoint", "sepkit.hub")),
    Layer(
        "tasks",
        5,
        (
            "sepkit.callbacks",
            "sepkit.training",
            "sepkit.averaging",
            "sepkit.preemption",
            "sepkit.inference",
            "sepkit.streaming",
            "sepkit.evaluation",
            "sepkit.profiling",
            "sepkit.export",
        ),
    ),
    Layer("cli", 6, ("sepkit.cli",)),
    # Corpus recipes and the `sepkit prepare` front end: outermost, reached through an entry point.
    Layer("data_prep", 7, ("data_prep", "data_prep.*")),
)

# Modules of sepkit.models that models may share; every other module there is one model's file.
SHARED_MODEL_MODULES = frozenset(
    {
        "sepkit.models",
        "sepkit.models.pipeline",
        "sepkit.models.filterbanks",
        "sepkit.models.registry",
        "sepkit.models.asteroid_compat",  # converter from asteroid checkpoints
        "sepkit.models.speechbrain_compat",  # converter from SpeechBrain SepFormer model cards
        "sepkit.models.sudormrf_compat",  # converter from the SuDoRM-RF authors' releases
        "sepkit.models.gc3_compat",  # converter from state dicts of GC3's released code
        "sepkit.models.published",  # recognises the published formats for load_model
        "sepkit.models.citations",  # BibTeX of the models' papers, for model cards
    }
)


# ----------------------------------------------------------------------------- checker


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """Dotted name of the module in ``path`` (under ``root``) and whether it is a package ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _deepest_known(name: str, known: set[str]) -> str | None:
    """The longest dotted prefix of ``name`` that is a known module (``a.b.c`` -> ``a.b`` if only that exists)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Known modules that ``module``'s source imports, from any import statement anywhere in it.

    ``from package import name`` counts as importing the submodule ``package.name`` when that
    is a module, else ``package`` itself. The parent packages that Python also runs on
    ``import a.b.c`` are not edges: every package that re-exports its submodules would be a cycle.
    """
    imported: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                if node.level - 1 >= len(anchor):
                    raise ValueError(f"{module}: relative import beyond the top-level package")
                base = ".".join(anchor[: len(anchor) - (node.level - 1)])
                if node.module:
                    base = f"{base}.{node.module}"
            else:
                base = node.module or ""
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
                if alias.name != "*"
            ] or [base]
        else:
            continue
        for target in targets:
            resolved = _deepest_known(target, known)
            if resolved is not None:
                imported.add(resolved)
    return imported


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports, for every ``.py`` file of ``packages`` under ``root``."""
    files = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            files[module_name(path, root)] = path
    known = {name for name, _ in files}
    return {
        name: imported_modules(path.read_text(encoding="utf-8"), name, is_package, known)
        for (name, is_package), path in files.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle ``[a, b, ..., a]`` per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        # Shortest path back to start inside the component (breadth first).
        previous: dict[str, str] = {}
        frontier = [start]
        while start not in previous:
            next_frontier = []
            for node in frontier:
                for successor in sorted(graph.get(node, ())):
                    if successor in members and successor not in previous:
                        previous[successor] = node
                        next_frontier.append(successor)
            frontier = next_frontier
        path = [start]
        while path[-1] != start or len(path) == 1:
            path.append(previous[path[-1]])
        cycles.append(path[::-1])
    return sorted(cycles)


def layer_of(module: str, layers: tuple[Layer, ...]) -> Layer | None:
    """The layer whose patterns match ``module``; patterns of different layers must not overlap."""
    matches = [layer for layer in layers if any(fnmatch.fnmatchcase(module, p) for p in layer.patterns)]
    if len(matches) > 1:
        raise ValueError(f"{module} matches layers {[layer.name for layer in matches]}")
    return matches[0] if matches else None


def layer_violations(graph: dict[str, set[str]], layers: tuple[Layer, ...]) -> list[str]:
    """Modules without a layer, and imports into a higher layer or a sibling layer of equal rank."""
    problems = [
        f"{module} is not assigned to any layer" for module in sorted(graph) if layer_of(module, layers) is None
    ]
    for module in sorted(graph):
        source = layer_of(module, layers)
        for target in sorted(graph[module]):
            destination = layer_of(target, layers)
            if source is None or destination is None or source == destination or destination.rank < source.rank:
                continue
            direction = "a sibling" if destination.rank == source.rank else "a higher"
            problems.append(f"{module} ({source.name}) imports {target} ({destination.name}), {direction} layer")
    return problems


def model_cross_imports(graph: dict[str, set[str]], shared: frozenset[str] = SHARED_MODEL_MODULES) -> list[str]:
    """Imports from one model file of sepkit.models into another (shared modules excepted)."""

    def is_model_file(module: str) -> bool:
        return module.startswith("sepkit.models.") and module not in shared

    return [
        f"{module} imports the model file {target}"
        for module in sorted(graph)
        if is_model_file(module)
        for target in sorted(graph[module])
        if is_model_file(target) and target != module
    ]


# ----------------------------------------------------------------- checker on synthetic graphs


def test_imported_modules_resolves_every_import_form():
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d", "other"}
    source = """
import os
import pkg.sub.c as c_alias
from pkg import b, not_a_module
from pkg.sub.d import helper
from . import d
from .. import a
from ..sub import *

def lazy():
    import other
    from pkg.missing import thing
"""
    found = imported_modules(source, "pkg.sub.e", is_package=False, known=known)
    # pkg (for not_a_module, and pkg.missing's deepest known prefix), pkg.b, pkg.sub.c,
    # pkg.sub.d (absolute and `from . import d`), pkg.a (`from .. import a`), pkg.sub (star), other.
    assert found == {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d", "other"}
    # In a package __init__, `from . import x` is relative to the package itself.
    assert imported_modules("from . import c", "pkg.sub", is_package=True, known=known) == {"pkg.sub.c"}
    assert imported_modules("from .c import x", "pkg.sub", is_package=True, known=known) == {"pkg.sub.c"}
    with pytest.raises(ValueError, match="beyond the top-level"):
        imported_modules("from ... import x", "pkg.sub.e", is_package=False, known=known)


def test_find_cycles_catches_cycles_and_passes_a_dag():
    dag = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycles(dag) == []
    with_cycles = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a -> b -> c -> a
        "d": set(),
        "e": {"f"},
        "f": {"e"},  # two-module cycle, as ssc <-> ssc_triton
        "g": {"g"},  # a module importing itself
    }
    assert find_cycles(with_cycles) == [["a", "b", "c", "a"], ["e", "f", "e"], ["g", "g"]]


SYNTHETIC_LAYERS = (
    Layer("low", 0, ("p.low", "p.low.*")),
    Layer("left", 1, ("p.left.*",)),
    Layer("right", 1, ("p.right.*",)),
    Layer("top", 2, ("p.top",)),
)


def test_layer_violations_catch_upward_sibling_and_unplaced_modules():
    clean = {"p.low": set(), "p.low.x": {"p.low"}, "p.left.m": {"p.low.x"}, "p.right.n": set(), "p.top": {"p.left.m"}}
    assert layer_violations(clean, SYNTHETIC_LAYERS) == []
    dirty = {
        **clean,
        "p.low.x": {"p.top"},  # upward
        "p.left.m": {"p.right.n"},  # sideways between siblings
        "p.stray": set(),  # in no layer
    }
    assert layer_violations(dirty, SYNTHETIC_LAYERS) == [
        "p.stray is not assigned to any layer",
        "p.left.m (left) imports p.right.n (right), a sibling layer",
        "p.low.x (low) imports p.top (top), a higher layer",
    ]
    with pytest.raises(ValueError, match="matches layers"):
        layer_of("p.low", (*SYNTHETIC_LAYERS, Layer("again", 3, ("p.*",))))


def test_model_cross_imports():
    graph = {
        "sepkit.models.registry": set(),
        "sepkit.models.alpha": {"sepkit.models.registry", "sepkit.models.pipeline", "sepkit.nn.norms"},
        "sepkit.models.beta": {"sepkit.models.alpha", "sepkit.models.registry"},
    }
    assert model_cross_imports(graph) == ["sepkit.models.beta imports the model file sepkit.models.alpha"]


def test_checker_finds_a_cycle_and_an_upward_import_in_files_on_disk(tmp_path):
    """The whole path the tree tests take: files -> ast -> graph -> findings."""
    package = tmp_path / "p"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("from p.low import x\n")
    (package / "low" / "__init__.py").write_text("from . import x\n")
    (package / "low" / "x.py").write_text("def f():\n    from p.low import y  # lazy: still an edge\n")
    (package / "low" / "y.py").write_text("from .z import g\n\n\ndef h():\n    import p.top\n")
    (package / "low" / "z.py").write_text("def g():\n    pass\n")
    graph = import_graph(tmp_path, ("p",))
    assert graph == {
        "p": set(),
        "p.top": {"p.low.x"},
        "p.low": {"p.low.x"},
        "p.low.x": {"p.low.y"},
        "p.low.y": {"p.low.z", "p.top"},
        "p.low.z": set(),
    }
    assert find_cycles(graph) == [["p.low.x", "p.low.y", "p.top", "p.low.x"]]
    layers = (Layer("low", 0, ("p", "p.low", "p.low.*")), Layer("top", 1, ("p.top",)))
    assert layer_violations(graph, layers) == ["p.low.y (low) imports p.top (top), a higher layer"]


# ------------------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def tree_graph() -> dict[str, set[str]]:
    graph = import_graph(REPO, PACKAGES)
    # Sanity: the walk saw the tree (a broken walk would make the tests below pass vacuously).
    assert {"sepkit.cli", "sepkit.models.registry", "data_prep.cli", "data_prep.common"} <= graph.keys()
    assert "sepkit.data.mixtures" in graph["data_prep.common"]
    return graph


def test_no_import_cycles(tree_graph):
    cycles = find_cycles(tree_graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_imports_only_go_down_the_layers(tree_graph):
    problems = layer_violations(tree_graph, LAYERS)
    assert not problems, "layer violations (see docs/architecture.md):\n" + "\n".join(problems)


def test_no_model_file_imports_another(tree_graph):
    problems = model_cross_imports(tree_graph)
    assert not problems, "shared blocks belong in sepkit.nn:\n" + "\n".join(problems)


# -------------------------------------------------------------- `sepkit` command plugins


def test_sepkit_help_lists_the_prepare_plugin(tmp_path):
    """`prepare` is found through the installed entry point (needs `pip install -e .`)."""
    result = run_sepkit("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["prepare", "build"] for line in lines if line.strip()), result.stdout
    for builtin in ("train", "separate", "evaluate", "profile"):
        assert any(line.split()[:1] == [builtin] for line in lines), result.stdout


def test_sepkit_prepare_through_the_plugin_writes_what_data_prep_writes(tmp_path):
    """Same options, same outputs: `sepkit prepare folder` as a command and data_prep.cli.main in-process."""
    from data_prep.cli import main as prepare_main

    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=6, per_speaker=2)
    options = ["--sources", str(sources), "--n-src", "2", "--splits", "train", "test", "--fractions", "0.5", "0.5"]
    options += ["--n-mixtures", "3", "2", "--write", "--no-progress"]
    command = run_sepkit("prepare", "folder", *options, "--out", str(tmp_path / "command"), cwd=tmp_path)
    assert command.returncode == 0, command.stderr
    assert prepare_main(["folder", *options, "--out", str(tmp_path / "direct")]) == 0
    written = sorted(p.relative_to(tmp_path / "direct") for p in (tmp_path / "direct").rglob("*") if p.is_file())
    assert len([p for p in written if p.suffix == ".wav"]) == 3 * (3 + 2)  # mix, s1, s2 per mixture
    assert written == sorted(
        p.relative_to(tmp_path / "command") for p in (tmp_path / "command").rglob("*") if p.is_file()
    )
    for relative in written:
        assert (tmp_path / "command" / relative).read_bytes() == (tmp_path / "direct" / relative).read_bytes(), relative
    verify = run_sepkit("prepare", "verify", str(tmp_path / "command" / "2speakers" / "wav8000" / "min"), cwd=tmp_path)
    assert verify.returncode == 2  # the manifest is one level up: a clear error, as before the move
    assert verify.stderr.strip().count("\n") == 0 and "prepare_manifest.json not found" in verify.stderr
    verify = run_sepkit("prepare", "verify", str(tmp_path / "command"), cwd=tmp_path)
    assert verify.returncode == 0 and "verify: OK" in verify.stdout, verify.stdout + verify.stderr


def _install_plugins(site: Path, distribution: str, entry_points: dict[str, str]) -> None:
    """Real distribution metadata (``<name>-0.0.dist-info``) on a sys.path folder, as pip writes it."""
    info = site / f"{distribution}-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[sepkit.commands]\n{lines}")


@pytest.fixture
def plugin_site(tmp_path, monkeypatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sepkit_test_hello.py").write_text(
        'def main(argv):\n    """Say hello."""\n    print("hello", *argv)\n    return 3\n'
    )
    (site / "sepkit_test_raises.py").write_text('raise RuntimeError("plugin import failed\\nsecond line")\n')
    _install_plugins(
        site,
        "sepkit_test_plugins",
        {
            "hello": "sepkit_test_hello:main",
            "missing": "sepkit_test_no_such_module:main",
            "raises": "sepkit_test_raises:main",
            "notcallable": "sepkit_test_hello:__name__",
            "clash": "sepkit_test_hello:main",
            "train": "sepkit_test_hello:main",  # may not replace a built-in
        },
    )
    _install_plugins(site, "sepkit_test_other", {"clash": "sepkit_test_raises:main"})
    monkeypatch.syspath_prepend(str(site))
    for module in ("sepkit_test_hello", "sepkit_test_raises"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return site


def test_plugin_command_gets_its_arguments_and_exit_status(plugin_site, capsys):
    from sepkit.cli import main, plugin_entry_points

    assert main(["hello", "a", "--b"]) == 3
    assert capsys.readouterr().out == "hello a --b\n"
    assert "train" not in plugin_entry_points()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            "missing",
            "sepkit: command 'missing' could not be loaded from sepkit_test_no_such_module:main: "
            "ModuleNotFoundError: No module named 'sepkit_test_no_such_module'",
        ),
        (
            "raises",
            "sepkit: command 'raises' could not be loaded from sepkit_test_raises:main: "
            "RuntimeError: plugin import failed second line",
        ),
        (
            "notcallable",
            "sepkit: command 'notcallable': sepkit_test_hello:__name__ is a str, not a callable main(argv)",
        ),
        (
            "clash",
            "sepkit: command 'clash' is registered by more than one plugin in entry-point group 'sepkit.commands': ",
        ),
        (
            "nonexistent",
            "sepkit: unknown command 'nonexistent': neither built in nor an installed plugin of "
            "entry-point group 'sepkit.commands'",
        ),
    ],
)
def test_missing_or_broken_plugin_is_one_clear_line(plugin_site, capsys, command, message):
    from sepkit.cli import main

    assert main([command, "--help"]) == 2
    first_line, *_ = capsys.readouterr().err.splitlines()
    assert first_line.startswith(message), first_line
    if command == "clash":
        assert sorted(first_line[len(message) :].split(", ")) == ["sepkit_test_hello:main", "sepkit_test_raises:main"]


def test_help_still_lists_everything_when_a_plugin_is_broken(plugin_site, capsys):
    from sepkit.cli import main

    assert main(["--help"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert listed["hello"].split(None, 1)[1] == "say hello"
    assert "unavailable: command 'missing' could not be loaded" in listed["missing"]
    assert "unavailable: command 'clash' is registered by more than one plugin" in listed["clash"]
    assert "prepare" in listed  # the installed data_prep plugin is still there
    assert listed["train"].split(None, 1)[1].startswith("train a model")


def test_plugin_is_found_behind_stale_metadata_of_its_distribution(plugin_site, tmp_path, monkeypatch, capsys):
    """A source checkout on sys.path with an old egg-info of the same distribution (no
    sepkit.commands yet) must not hide the plugin that the installed metadata declares."""
    from sepkit.cli import main

    stale = tmp_path / "checkout"
    info = stale / "sepkit_test_plugins.egg-info"
    info.mkdir(parents=True)
    (info / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: sepkit_test_plugins\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[console_scripts]\nsepkit-test = sepkit_test_hello:main\n")
    monkeypatch.syspath_prepend(str(stale))
    assert main(["hello", "again"]) == 3
    assert capsys.readouterr().out == "hello again\n"
