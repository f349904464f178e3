"""The packages' dependency direction, read from their source: every import statement (function-level ones included)
and every `importlib.import_module("...")` with a literal name.

- `v2v_jax` (the product) imports neither `v2v_torch_ref` nor `parity_tests`.
- `v2v_torch_ref` (the oracle) imports from `v2v_jax` only what reads data files: the data-set readers
  (`ORACLE_MAY_IMPORT`) and, from `v2v_jax.data.cameras`, the data sets' published constants (`DatasetSpec`, `get`
  and upper-case names), never a function that computes with them: the oracle does its own camera maths, so a bug
  there is not shared by both sides of the cross-check.
- `parity_tests` may import both. No package imports `tests` or `bench`.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("v2v_jax", "v2v_torch_ref", "parity_tests")
NEVER_IMPORTED = ("tests", "bench")

# Everything the oracle may take from the product: the package's entry points (v2v_jax/data/__init__.py), the shared
# file checks (base), the centre-file and PNG readers, the five data sets' readers, and the batch loader (so that
# both trainers read the same frames in the same order).
ORACLE_MAY_IMPORT = (
    "v2v_jax.data.open_dataset", "v2v_jax.data.DATASET_NAMES", "v2v_jax.data.DataError",
    "v2v_jax.data.DepthDataset", "v2v_jax.data.Frame",
    "v2v_jax.data.base", "v2v_jax.data.centers", "v2v_jax.data.images", "v2v_jax.data.loader",
    "v2v_jax.data.msra", "v2v_jax.data.icvl", "v2v_jax.data.nyu", "v2v_jax.data.itop", "v2v_jax.data.hands2017",
)
CAMERAS = "v2v_jax.data.cameras"

# Known violations, to be removed as the code moves: none is left. Each entry is (importing module or package,
# imported module or package); an entry that no longer matches any import is an error, so the list only shrinks.
ALLOWED_FOR_NOW: set[tuple[str, str]] = set()


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str   # module whose source holds the statement
    target: str     # `a.b` for `import a.b`; `a.b.c` for `from a.b import c` (c may be a module or a name)
    where: str      # path:line, relative to the repository


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import in one source file, relative imports resolved against the file's package."""
    importer = module_name(path, root)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    where = lambda node: f"{path.relative_to(root)}:{node.lineno}"  # noqa: E731
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(importer, alias.name, where(node)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [Import(importer, f"{base}.{alias.name}" if alias.name != "*" else base, where(node))
                      for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append(Import(importer, node.args[0].value, where(node)))
    return found


def oracle_may_import(target: str) -> bool:
    if any(_within(target, allowed) for allowed in ORACLE_MAY_IMPORT):
        return True
    name = target[len(CAMERAS) + 1:] if target.startswith(CAMERAS + ".") else None
    return name is not None and "." not in name and (name in ("DatasetSpec", "get") or name.isupper())


def forbidden(imp: Import) -> bool:
    """True when `imp` runs against the dependency direction."""
    if any(_within(imp.target, name) for name in NEVER_IMPORTED):
        return True
    if _within(imp.importer, "v2v_jax"):
        return _within(imp.target, "v2v_torch_ref") or _within(imp.target, "parity_tests")
    if _within(imp.importer, "v2v_torch_ref"):
        return _within(imp.target, "parity_tests") or (_within(imp.target, "v2v_jax")
                                                        and not oracle_may_import(imp.target))
    return False


def violations(root: Path, packages=PACKAGES) -> list[Import]:
    return [imp for package in packages for path in sorted((root / package).rglob("*.py"))
            for imp in imports_of(path, root) if forbidden(imp)]


def _entry(imp: Import, allowed) -> tuple[str, str] | None:
    return next((entry for entry in sorted(allowed) if _within(imp.importer, entry[0])
                 and _within(imp.target, entry[1])), None)


def check(root: Path, allowed) -> tuple[list[str], list[tuple[str, str]]]:
    """(violations not on the allow-list, as `path:line: importer imports target`; allow-list entries unused)."""
    found = violations(root)
    new = [f"{imp.where}: {imp.importer} imports {imp.target}" for imp in found if _entry(imp, allowed) is None]
    return new, sorted(set(allowed) - {_entry(imp, allowed) for imp in found})


def test_dependency_direction():
    new, stale = check(ROOT, ALLOWED_FOR_NOW)
    assert not new, "imports against the dependency direction:\n" + "\n".join(new)
    assert not stale, f"no import matches these entries any more; delete them from ALLOWED_FOR_NOW: {stale}"


# The checker itself, on a planted repository.

def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


@pytest.mark.parametrize("name, text", [
    ("v2v_jax/vis.py", "def f():\n    from parity_tests import compare\n"),           # function-level
    ("v2v_jax/vis.py", "import v2v_torch_ref.model as m\n"),
    ("v2v_jax/vis.py", "import importlib\nm = importlib.import_module('v2v_torch_ref.model')\n"),
    ("v2v_torch_ref/train.py", "from v2v_jax.config import Config\n"),
    ("v2v_torch_ref/train.py", "from v2v_jax import geometry\n"),
    ("v2v_torch_ref/train.py", "from v2v_jax.data import render\n"),
    ("v2v_torch_ref/train.py", "from v2v_jax.data.cameras import world_to_pixel\n"),
    ("v2v_torch_ref/train.py", "import v2v_jax.data.cameras\n"),
    ("v2v_torch_ref/train.py", "from parity_tests.compare import Row\n"),
    ("parity_tests/report.py", "from bench import common\n"),
    ("v2v_jax/data/msra.py", "from ...parity_tests import compare\n"),               # relative, two levels up
])
def test_checker_flags_a_planted_forbidden_import(tmp_path, name, text):
    root = _plant(tmp_path, {name: text})
    assert [imp.where.rsplit(":", 1)[0] for imp in violations(root)] == [name]


def test_checker_passes_the_allowed_directions(tmp_path):
    root = _plant(tmp_path, {
        "v2v_jax/model.py": "from v2v_jax import layers\nfrom . import layers\nimport torch\n",
        "v2v_torch_ref/geometry_ref.py": "from v2v_jax.data.cameras import DatasetSpec, MSRA, get\n",
        "v2v_torch_ref/train.py": "from v2v_jax.data import open_dataset\nfrom v2v_jax.data.loader import epoch_order\n"
                                  "from v2v_jax.data.msra import MSRA\nimport v2v_jax.data.icvl\n",
        "parity_tests/compare.py": "import v2v_jax.model\nfrom v2v_torch_ref import model\n",
    })
    assert violations(root) == []


def test_allow_list_hides_only_its_entries_and_reports_stale_ones(tmp_path):
    root = _plant(tmp_path, {"v2v_jax/vis.py": "from v2v_torch_ref.geometry_ref import render_spheres\n"
                                              "from parity_tests import compare\n"})
    new, stale = check(root, {("v2v_jax.vis", "v2v_torch_ref.geometry_ref"), ("v2v_jax.studies", "parity_tests")})
    assert new == ["v2v_jax/vis.py:2: v2v_jax.vis imports parity_tests.compare"]
    assert stale == [("v2v_jax.studies", "parity_tests")]
