"""The house's layering and its quiet imports.

Packages stack ``llara`` (the command line) -> ``hub_card`` (export, card, push) -> ``trainers`` (objectives, data,
retrieval) -> ``modeling_llara`` (the files that ship to the Hub). An import may only point down the stack: a lower
package importing a higher one is an import cycle in the making (``trainers/scripts`` once imported ``hub_card``, which
imports ``trainers``). The check reads every import statement, including the ones inside functions.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Lower index = lower layer.
LAYERS = ("modeling_llara", "trainers", "hub_card", "llara")
# What the Hub-shipped files may import besides each other (relative imports).
SHIPPED_ALLOWED = {"torch", "transformers", "sentence_transformers", "__future__"}


def _imported_top_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_the_layers_below_it(package):
    # Given every module of the package
    higher = set(LAYERS[LAYERS.index(package) + 1:])
    # When its imports are read
    offending = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for name, line in sorted(_imported_top_packages(path))
        if name in higher
    ]
    # Then none of them reaches up
    assert not offending, "imports that point up the stack:\n" + "\n".join(offending)


def test_the_shipped_files_import_only_torch_transformers_and_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    offending = [
        f"{path.name}:{line} imports {name}"
        for path in sorted((REPO / "modeling_llara").glob("*.py"))
        for name, line in sorted(_imported_top_packages(path))
        if name not in stdlib and name not in SHIPPED_ALLOWED
    ]
    assert not offending, "\n".join(offending)


def test_the_layering_check_sees_an_upward_import(tmp_path):
    # The check above must be able to fail: a module with a function-local upward import is caught.
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from hub_card.export import export_model\n    import llara.cli\n")
    assert {name for name, _ in _imported_top_packages(module)} == {"hub_card", "llara"}


@pytest.mark.parametrize(
    "code",
    [
        "import modeling_llara",
        "import trainers",
        "import hub_card",
        "import trainers.pretraining.trainer, trainers.finetuning.trainer, trainers.retrieval.encoding",
        "from llara.cli import main; main(['--help'])",
    ],
)
def test_imports_print_no_third_party_banner(code):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", f"{code!r} wrote to stderr:\n{proc.stderr[-2000:]}"


_EXIT_SCRIPT = """
import atexit, sys
from pathlib import Path
import torch.distributed as dist
from llara.cli_boundary import script_entry

work = Path(sys.argv[1])
atexit.register(lambda: (work / "finalized").write_text("1"))
if sys.argv[2] == "distributed":
    dist.init_process_group("gloo", init_method=f"file://{work / 'store'}", rank=0, world_size=1)

def command(argv):
    print("the command's last words", end="")  # no newline: only a flush gets it out
    return 3

sys.argv = sys.argv[:1]
script_entry("pretrain", command)
"""


@pytest.mark.parametrize("mode", ["distributed", "single"])
def test_a_distributed_run_exits_without_the_interpreter_shutdown(tmp_path, mode):
    # Given a command run as `python -m llara.scripts.<verb>` is, inside a gloo process group (one rank) or none
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    # When it returns
    proc = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, str(tmp_path), mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    # Then its status and its output get out either way, and only the distributed run skips the interpreter's
    # shutdown (where a rank's backend threads can abort the process after its work is done)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == "the command's last words"
    assert (tmp_path / "finalized").exists() == (mode == "single")


def test_help_of_the_inference_commands_does_not_import_torch():
    """`llara index/search/evaluate/mine --help` answer without torch; the --dtype values they restate stay the
    shipped model file's."""
    code = ("import sys\nfrom llara.cli import main\n"
            "for verb in ('index', 'search', 'evaluate', 'mine'):\n"
            "    try:\n        main([verb, '--help'])\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
    import llara.options as options
    import modeling_llara.modeling_llara as shipped

    for name in ("DTYPE_CHOICES", "DTYPE_ENV", "FAST_BF16_CPU_FLAGS"):
        assert getattr(options, name) == getattr(shipped, name), name
