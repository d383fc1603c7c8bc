"""The package map in the README is the code's: layers import only downwards, MPyC only in mpc/.

Layers in dependency order (README, "Package map"); a module may import its own layer and the
layers before it, never a later one, and module-level imports form no cycle.
"""
import ast
from pathlib import Path

import jointstats

PACKAGE = Path(jointstats.__file__).parent
#: groups of top-level modules or packages; a group may import itself and earlier groups
GROUPS = [("_files", "_threads", "errors"), ("plan",), ("result", "results_kinds"), ("consortium",), ("mpc",), ("noise",),
          ("ledger",), ("engine",), ("local",), ("node",), ("cli",)]
LAYERS = [name for group in GROUPS for name in group]
RANK = {name: i for i, group in enumerate(GROUPS) for name in group}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel == Path("__init__.py"):
            continue  # the public face re-exports from every layer
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield "jointstats." + ".".join(parts), parts[0], path


def _imports(path, module, toplevel_only=False):
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if toplevel_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name
            for alias in node.names:
                yield f"{name}.{alias.name}"


def _layer(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "jointstats" else None


def test_every_module_sits_in_a_known_layer():
    unknown = sorted(m for m, layer, _ in _modules() if layer not in LAYERS)
    assert not unknown, f"modules outside the README's package map: {unknown}"


def _upward(modules):
    bad = []
    for module, layer, path in modules:
        for name in _imports(path, module):
            target = _layer(name)
            if target in RANK and RANK[target] > RANK[layer]:
                bad.append(f"{module} imports {name} ({target} comes after {layer})")
    return sorted(set(bad))


def test_layers_import_only_downwards():
    bad = _upward(_modules())
    assert not bad, "\n".join(bad)


def test_mpyc_is_imported_only_in_the_mpc_layer():
    bad = [f"{module} imports {name}" for module, layer, path in _modules() if layer != "mpc"
           for name in _imports(path, module) if name == "mpyc" or name.startswith("mpyc.")]
    assert not bad, "\n".join(bad)


def test_module_level_imports_form_no_cycle():
    names = {m for m, _, _ in _modules()}
    graph = {}
    for module, _, path in _modules():
        deps = set()
        for name in _imports(path, module, toplevel_only=True):
            while name and name not in names:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                deps.add(name)
        graph[module] = deps
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_the_check_sees_an_upward_import(tmp_path):
    """Not vacuous: a plan module that imports the engine (even lazily) is reported."""
    planted = tmp_path / "sealed.py"
    planted.write_text("def f():\n    from jointstats.engine.party import main\n")
    assert _upward([("jointstats.plan.sealed", "plan", planted)]) == [
        "jointstats.plan.sealed imports jointstats.engine.party (engine comes after plan)",
        "jointstats.plan.sealed imports jointstats.engine.party.main (engine comes after plan)"]
