"""Every shipped recipe parses with the parser of the command it documents.

A recipe is the user's starting point for a run that may cost GPU-days: a key that its command does not know (a
renamed option, a typo) must fail here, not at the start of the job on the cluster. Each recipe is parsed in a fresh
process, as ``llara <command> --config RECIPE`` would parse it, with the options a user passes on the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
# The flags a user adds on the command line next to each kind of recipe (the recipes leave them open).
REQUIRED = {
    "pretrain": ["--train_files", "corpus.txt"],
    "finetune": ["--model_name_or_path", "model", "--train_data", "train.jsonl"],
    "pipeline": [],
}

_PARSE = """
import json, sys
command, recipe, *rest = sys.argv[1:]
argv = ["--config", recipe, *rest]
if command == "pretrain":
    from llara.scripts.pretrain import make_parser
    from trainers.recipes import parse_recipe_args
    parsed = parse_recipe_args(make_parser(), argv, required=("train_files",))
else:
    module = __import__(f"llara.scripts.{command}", fromlist=["parse_args"])
    parsed = module.parse_args(argv)
keys = {}
for part in parsed:
    keys.update({k: repr(v) for k, v in vars(part).items()})
print(json.dumps(keys))
"""


def test_every_recipe_names_its_command():
    assert RECIPES, "no recipes found"
    unknown = [name for name in RECIPES if name.split("_", 1)[0] not in REQUIRED]
    assert not unknown, f"recipes whose command is not known from their name: {unknown}"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_with_its_command(name, tmp_path):
    # Given a recipe and the options a user adds to it
    command = name.split("_", 1)[0]
    recipe = REPO / "recipes" / name
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    # When its command parses it
    import yaml

    settings = yaml.safe_load(recipe.read_text()) or {}
    extra = list(REQUIRED[command])
    if settings.get("bf16") and command != "pipeline":
        # TrainingArguments checks bf16 against the hardware at parse time: a GPU recipe parses here as a CPU run.
        extra += ["--use_cpu", "true"]
    # from the repository root, where the recipes' relative paths (recipes/deepspeed_zero3.json) point
    proc = subprocess.run([sys.executable, "-c", _PARSE, command, str(recipe), *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    # Then every key is an option of that command, with the value the recipe gives
    assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    for key, value in settings.items():
        assert key in parsed, f"{name}: {key!r} did not reach an option of `llara {command}`"
        # (paths are resolved and report_to becomes a list: their values are checked by transformers itself)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and key not in (
                "deepspeed", "fsdp_config", "report_to"):
            assert str(value) in parsed[key] or repr(value) in parsed[key], f"{name}: {key}={parsed[key]}, recipe {value!r}"
