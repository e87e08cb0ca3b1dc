"""The package's shape: one notebook per module with the same name, imports that only run down the reading order,
no private names across modules, no hidden imports of our own modules, no module over 400 lines."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "compodistill"
MODULES = sorted(p for p in PKG.glob("*.py") if p.stem not in ("__init__", "_modidx"))


def notebook_of(path: Path) -> str:
    "The notebook a module is exported from, from nbdev's header line."
    m = re.search(r"File to edit: \.\./nbs/(\S+)\.ipynb", path.read_text())
    assert m, f"{path.name} does not say which notebook it is exported from"
    return m.group(1)


ORDER = {p.stem: notebook_of(p) for p in MODULES}  # module -> notebook; notebook names sort in reading order


def own_imports(path: Path):
    "(module imported, names, line, at top level?) for every import of this package's modules."
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("compodistill")):
            name = (node.module or "").removeprefix("compodistill").lstrip(".")
            yield name, [a.name for a in node.names], node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("compodistill."):
                    yield a.name.removeprefix("compodistill."), [], node.lineno, id(node) in top


def test_one_notebook_per_module_with_its_name():
    for module, nb in ORDER.items():
        assert re.fullmatch(rf"\d\d[a-z]?_{module}", nb), f"compodistill/{module}.py is exported from nbs/{nb}.ipynb"
    assert len(set(ORDER.values())) == len(ORDER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_imports_run_down_the_reading_order(path):
    for module, names, line, top in own_imports(path):
        where = f"compodistill/{path.name}:{line}"
        assert module in ORDER, f"{where} imports unknown module {module!r}"
        assert ORDER[module] < ORDER[path.stem], f"{where}: {path.stem} ({ORDER[path.stem]}) imports {module} ({ORDER[module]}), later in the reading order"
        assert top, f"{where} imports {module} inside a function: imports of our own modules belong in the import cell"
        assert not [n for n in names if n.startswith("_")], f"{where} imports private names {names} from {module}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_modules_stay_short(path):
    assert len(path.read_text().splitlines()) <= 400, f"compodistill/{path.name} is over 400 lines"


def test_training_does_not_load_the_analysis_stack():
    "The trainer and the runner import no plotting: matplotlib belongs to the analysis notebooks' modules."
    import subprocess
    import sys
    code = "import sys, compodistill.runner; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    assert out.stdout.strip() == "False"


def test_no_deepspeed_accelerator_warning_on_import():
    "accelerate imports DeepSpeed to unwrap a model; on a CPU machine its 'Setting accelerator to CPU' warning is dropped."
    import subprocess
    import sys
    code = ("import logging, compodistill, torch; from accelerate.utils import extract_model_from_parallel; "
            "extract_model_from_parallel(torch.nn.Linear(2, 2)); logging.getLogger('DeepSpeed').warning('kept')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    assert "Setting accelerator to CPU" not in out.stdout + out.stderr
    assert "kept" in out.stdout + out.stderr  # DeepSpeed's other warnings still show
