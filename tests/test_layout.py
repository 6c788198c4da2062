"""The architecture stays easy to see: imports flow one way (no cycles, counting imports inside
functions too), no `_private` name is imported from another folder, and help and argument errors
never import torch."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "qstar_kernels")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(mods: dict[str, Path]):
    """(importer, imported module, names, line) for every import statement of our packages,
    at any depth (functions, methods, try blocks, TYPE_CHECKING)."""
    for name, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in PACKAGES:
                        yield name, a.name, [], node.lineno
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] not in PACKAGES:
                    continue
                names = [a.name for a in node.names]
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
                attrs = [n for n in names if f"{target}.{n}" not in mods]
                if attrs or not subs:
                    yield name, target, attrs, node.lineno
                for s in subs:  # `from pkg import submodule`
                    yield name, s, [], node.lineno


def _graph():
    mods = _modules()
    graph = {m: set() for m in mods}
    for src, dst, _, _ in _imports(mods):
        while dst and dst not in mods:  # engine.x.attr -> engine.x
            dst = dst.rpartition(".")[0]
        # a module's own packages are initialised before it runs: importing them is no cycle
        if dst and dst != src and not src.startswith(dst + "."):
            graph[src].add(dst)
    return graph


def _cycles(graph: dict[str, set]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_imports_inside_functions():
    g = _graph()
    assert "engine.pipeline.pair" in g["engine.pipeline.run"] or "engine.api" in g["engine.pipeline.run"] \
        or any(d.startswith("engine.api") for d in g["engine.pipeline.pair"]), "function-level imports missed"
    assert "qstar_kernels.api" in g["engine.stepper"] or "qstar_kernels" in g["engine.stepper"]
    # a cycle made of imports inside functions is found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_across_folders():
    mods = _modules()
    bad = []
    for src, dst, names, line in _imports(mods):
        folder = lambda m: mods[m].parent if m in mods else None  # noqa: E731
        while dst and dst not in mods:
            dst = dst.rpartition(".")[0]
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private and folder(dst) != folder(src):
            bad.append(f"{mods[src].relative_to(ROOT)}:{line} imports {private} from {dst}")
    assert not bad, bad


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["check", "--help"], ["analyze", "--help"],
                                  ["report", "--help"], ["demo", "--help"], ["generate", "--temperature", "x"],
                                  ["generate", "--model-theta", "a", "--model-t", "b", "--dataset", "d.jsonl",
                                   "--output", "o.jsonl", "--max-new-tokens", "0"],
                                  ["check", "--model-t", "b"], ["check", "--model-theta", "a", "--model-t", "b",
                                                                "--top-p", "2"],
                                  ["generate", "--model-theta", "a", "--model-t", "b", "--dataset", "gone/d.jsonl",
                                   "--output", "o.jsonl"],
                                  ["generate", "--model-theta", "a", "--model-t", "b", "--dataset", "d.jsonl",
                                   "--output", "o.jsonl", "--t-template", "{nosuch}"],
                                  ["generate", "--config", "bad.yaml"],
                                  ["generate", "--model-theta", "a", "--model-t", "b", "--dataset", "d.jsonl",
                                   "--output", "o.jsonl", "--cross-tokenizer", "--backend", "vllm"],
                                  ["check", "--model-theta", "a", "--model-t", "b", "--cross-tokenizer",
                                   "--backend", "vllm"],
                                  ["generate", "--model-theta", "a", "--model-t", "b", "--dataset", "d.jsonl",
                                   "--output", "o.jsonl", "--speculative", "-1"],
                                  ["generate", "--model-theta", "a", "--model-t", "b", "--dataset", "d.jsonl",
                                   "--output", "o.jsonl", "--speculative", "4", "--backend", "vllm"],
                                  ["check", "--model-theta", "a", "--model-t", "b", "--draft", "big"],
                                  ["check", "--model-theta", "a", "--model-t", "b", "--speculative", "99"],
                                  ["check", "--model-theta", "a", "--model-t", "b", "--speculative", "2",
                                   "--cross-tokenizer"]])
def test_help_and_argument_errors_never_import_torch(argv, tmp_path):
    """Help, flag errors and dataset/template mistakes answer before torch or transformers load."""
    (tmp_path / "d.jsonl").write_text('{"question": "q"}\n')
    (tmp_path / "bad.yaml").write_text("a: [b\n")
    code = ("import sys\nfrom engine.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nheavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'triton') if m in sys.modules)\n"
            "print('HEAVY', heavy, 'RC', rc)\n")
    p = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY []"), (argv, last, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    if argv[-1] != "--help":
        assert last.endswith("RC 2"), (argv, last, p.stderr)
