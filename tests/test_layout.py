"""The package's own shape: what its code and messages say to users, and how it is layered."""

import ast

from conftest import REPO


def test_code_states_rules_instead_of_citing_the_spec():
    """Users of the package never see SPEC.md: docstrings and messages state the rule."""
    cited = [
        f"{p.relative_to(REPO)}:{n}"
        for p in sorted((REPO / "gptcli").rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "SPEC" in line
    ]
    assert not cited, cited


# The layers, lowest first: a module imports only from its own layer or lower ones.
LAYERS = [
    {"recipe", "device", "console", "files", "stories", "story_chat"},
    {"tokenizer", "model", "kernels", "lora", "memory"},
    {"checkpoint", "checkpoint_tensors", "hf_format", "gguf_format", "load"},
    {"run", "data", "bundled"},  # data: a package, one module per source kind
    {"optim", "tasks", "parallel", "loggers", "autotune", "trainer"},
    {"sampling", "constrain", "engine", "generate", "eval", "serve", "chat"}
    | {"pretrain", "finetune", "inspect", "export", "plan"},
    {"cli", "__main__"},
]


def _modules() -> dict[str, ast.Module]:
    root = REPO / "gptcli"
    return {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): ast.parse(
            p.read_text()
        )
        for p in root.rglob("*.py")
    }


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The gptcli modules a module imports, at any depth of its code."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gptcli"):
            base = node.module.removeprefix("gptcli").lstrip(".")
            names = [f"{base}.{a.name}".lstrip(".") for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [
                a.name.removeprefix("gptcli.") for a in node.names if a.name.startswith("gptcli")
            ]
        found |= {n for n in names if n in modules}
    return found


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_imports_point_down_the_layers():
    """Every module has a layer, and imports nothing above it (so there are no cycles)."""
    modules = _modules()
    wrong = []
    for name, tree in modules.items():
        if name == "__init__":
            continue
        for target in _imports(tree, set(modules)) - {"", name}:
            if target != "__init__" and _layer(target) > _layer(name):
                wrong.append(f"{name} (layer {_layer(name) + 1}) imports {target}")
    assert not wrong, wrong


def test_data_never_imports_the_run_folder_or_checkpoints():
    """Data is prepared before any model exists: no run folder, no checkpoint layer."""
    modules = _modules()
    forbidden = {"run", "checkpoint", "checkpoint_tensors", "hf_format", "gguf_format", "load"}
    for name, tree in modules.items():
        if name.split(".")[0] == "data":
            assert not _imports(tree, set(modules)) & forbidden, name


def test_no_private_names_across_modules_and_no_long_functions():
    modules = _modules()
    problems = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gptcli"):
                problems += [
                    f"{name} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in modules and node.attr.startswith("_"):
                    if not node.attr.startswith("__"):
                        problems.append(f"{name} uses {node.value.id}.{node.attr}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 120:
                    problems.append(f"{name}.{node.name} is {length} lines")
    assert not problems, problems
