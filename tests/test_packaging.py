"""The package as it is installed and imported: the source checkout without an installer, the
packages pyproject.toml lists, and the layers (lower layers never import higher ones)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent

# The layers, lowest first: a module may import its own layer and those below it only.
LAYERS = (
    ("kernels", ["kernels"]),
    ("ops", ["fastvae/ops", "fastvae/conventions.py", "fastvae/_checks.py",
             "fastvae/functional.py", "fastvae/modules.py",
             "fastvae/reference.py", "fastvae/torch_backend.py"]),
    ("data and models", ["fastvae/data", "fastvae/models"]),
    ("training", ["fastvae/train"]),
    ("studies", ["fastvae/studies"]),
    ("command line", ["fastvae/cli", "fastvae/__main__.py"]),
)


def _layer_of_module(name: str) -> int | None:
    """The layer of the dotted module ``name`` (``fastvae.train.loop``), or None outside."""
    path = name.replace(".", "/").replace("fastvae/kernels", "kernels")
    for i, (_, roots) in enumerate(LAYERS):
        for root in roots:
            stem = root.removesuffix(".py")
            if path == stem or path.startswith(stem + "/"):
                return i
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``, inside functions too; relative
    imports resolved against the file's package."""
    rel = path.relative_to(REPO).with_suffix("")
    package = ".".join(("fastvae",) + rel.parts[:-1]) if rel.parts[0] == "kernels" else \
        ".".join(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}")
                                              for a in node.names]
    return found


def test_lower_layers_never_import_higher_ones():
    """Nothing in kernels/, the op layer, the data or the models imports training, studies or
    the CLI; training imports no studies or CLI; studies no CLI (read from the source with
    ``ast``, lazy imports inside functions included)."""
    bad = []
    for i, (_, roots) in enumerate(LAYERS):
        files = [p for r in roots for p in ((REPO / r).rglob("*.py") if (REPO / r).is_dir()
                                            else [REPO / r])]
        assert files, roots
        for path in files:
            for line, module in _imports(path):
                layer = _layer_of_module(module)
                if layer is not None and layer > i:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {module} "
                               f"({LAYERS[layer][0]}, above {LAYERS[i][0]})")
    assert not bad, "\n".join(bad)


def test_pyproject_lists_every_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "fastvae").rglob(
        "__init__.py")} | {"fastvae.kernels"}
    assert listed == found
    assert config["project"]["dynamic"] == ["version"]  # one version: fastvae.__version__


@pytest.mark.slow
def test_a_plain_checkout_imports_without_an_installer(tmp_path):
    """The checkout first on the path, no site initialization (``python -S``: no .pth file
    and no editable-install finder runs), this interpreter's site-packages folders added by
    hand for torch and triton: fastvae imports, and its kernels are the checkout's."""
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; sys.path += sys.argv[2:]; "
        "import fastvae, fastvae.kernels; "
        "print(fastvae.__file__); print(fastvae.kernels.__file__)"
    )
    sites = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TRITON_INTERPRET"] = "1"
    res = subprocess.run([sys.executable, "-S", "-c", code, str(REPO), *sites],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    package, kernels = res.stdout.split()
    assert Path(package) == REPO / "fastvae" / "__init__.py"
    assert Path(kernels) == REPO / "kernels" / "__init__.py"


# Small files, short functions (lines of a function count without its docstring): the
# training house (data, models, training, studies, command line), and the op layer with its
# kernels.
HOUSE = ["fastvae/cli", "fastvae/data", "fastvae/models", "fastvae/train", "fastvae/studies",
         "fastvae/__init__.py"]
OP_LAYER = ["kernels", "fastvae/ops", "fastvae/functional.py", "fastvae/conventions.py"]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _function_lengths(path: Path):
    """(name, lines without the docstring) of every function and method in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str):
                doc = body[0].end_lineno - body[0].lineno + 1
            else:
                doc = 0
            yield node.name, node.end_lineno - node.lineno + 1 - doc


def _too_long(roots):
    files = [p for r in roots for p in ((REPO / r).rglob("*.py") if (REPO / r).is_dir()
                                        else [REPO / r])]
    assert files, roots
    too_long = [f"{p.relative_to(REPO)}: {n} lines" for p in files
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    too_long += [f"{p.relative_to(REPO)}: {name}() {n} lines" for p in files
                 for name, n in _function_lengths(p) if n > MAX_FUNCTION_LINES]
    return too_long


@pytest.mark.parametrize("roots", [HOUSE, OP_LAYER], ids=["training_house", "op_layer"])
def test_small_modules_and_short_functions(roots):
    too_long = _too_long(roots)
    assert not too_long, "\n".join(too_long)
