"""Command-line + YAML recipe parsing for the training commands, through ``trl.TrlParser``.

``TrlParser`` is transformers' ``HfArgumentParser`` plus ``--config recipe.yaml``: the recipe's keys are option
names and set defaults, flags given on the command line override them, and an unknown key is an error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def make_recipe_parser(dataclass_types: Sequence[type], prog: str, description: str):
    """A ``TrlParser`` over ``dataclass_types`` whose ``--help`` also documents ``--config``."""
    from trl import TrlParser

    # The generated usage line would list ~200 Trainer flags; the groups below document them instead.
    parser = TrlParser(tuple(dataclass_types), prog=prog, description=description,
                       usage=f"{prog} [--config RECIPE.yaml] [--OPTION VALUE ...]")
    parser.add_argument(
        "--config", default=None, metavar="RECIPE.yaml",
        help="YAML recipe: option names as keys (e.g. recipes/*.yaml); flags on the command line win",
    )
    _llara_options_first(parser, dataclass_types)
    return parser


def _llara_options_first(parser, dataclass_types: Sequence[type]) -> None:
    """Show the options our dataclasses define (or re-default) in one group before the Trainer's own ones."""
    from transformers import TrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    ours: set[str] = {"config"}
    for cls in dataclass_types:
        for klass in cls.__mro__:
            if klass is TrainingArguments or not dataclasses.is_dataclass(klass):
                break
            ours |= set(vars(klass).get("__annotations__", {}))
        ours |= {f.name for f in dataclasses.fields(cls)} - inherited
    group = parser.add_argument_group("LLaRA options")
    rest = parser.add_argument_group("Trainer options (transformers.TrainingArguments)")
    for action in list(parser._optionals._group_actions):
        if action.dest == "help":
            continue
        parser._optionals._group_actions.remove(action)
        (group if action.dest in ours else rest)._group_actions.append(action)


def _check_recipe(parser, path: str) -> None:
    """A usage error (``parser.error``) for a missing recipe, one that is not a mapping, or keys no option has."""
    import yaml

    if not os.path.isfile(path):
        parser.error(f"--config {path}: file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            recipe = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        parser.error(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})")
    if not isinstance(recipe, dict):
        parser.error(f"--config {path}: expected a mapping of option: value, got {type(recipe).__name__}")
    known = {action.dest for action in parser._actions} | {"env"}  # TrlParser reads ``env`` itself
    unknown = sorted(set(recipe) - known)
    if unknown:
        parser.error(f"--config {path}: unknown options {unknown}")


def parse_recipe_args(parser, argv: Sequence[str] | None, required: Sequence[str] = ()) -> tuple:
    """The dataclasses of ``parser`` from ``argv`` (+ ``--config``); ``required`` options must be set somewhere.

    Usage errors (a missing or malformed recipe, an unknown key, a missing required option) go through
    ``parser.error``: one line on stderr and exit code 2.
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    args = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if "--config" in args:
        position = args.index("--config")
        if position + 1 >= len(args):
            parser.error("--config needs a file")
        _check_recipe(parser, args[position + 1])
    parsed = parser.parse_args_and_config(args=args)
    # The ``--config`` option (documented in --help, consumed by TrlParser) comes back as a trailing Namespace.
    parsed = tuple(obj for obj in parsed if dataclasses.is_dataclass(obj))
    missing = [name for name in required if not any(getattr(obj, name, None) for obj in parsed)]
    if missing:
        names = " and ".join(f"--{name}" for name in missing)
        parser.error(f"{names} {'is' if len(missing) == 1 else 'are'} required (as flags or in --config)")
    return parsed


def _complete(checkpoint: Path) -> bool:
    """A Trainer writes ``trainer_state.json`` last: a checkpoint without a readable one was cut short."""
    import json

    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest ``checkpoint-N`` in ``output_dir`` that was written to the end (None when there is none).

    A run killed while saving leaves a ``checkpoint-N`` without its trainer state; transformers'
    ``get_last_checkpoint`` would pick it and resume from half-written weights. It is skipped (and logged); the
    resumed run writes that step again.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = []
    for path in output_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            steps.append((int(match.group(1)), path))
    for _, path in sorted(steps, reverse=True):
        if _complete(path):
            return str(path)
        logger.warning("skipping %s: it was not written to the end (no readable trainer_state.json)", path)
    return None


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """``True``/``"true"``/``"last"``/``"auto"``: the last complete checkpoint in ``output_dir`` (None when there
    is none); a path: that path, which must be a complete checkpoint."""
    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint in (True, "true", "True", "last", "latest", "auto"):
        last = last_complete_checkpoint(output_dir)
        if last:
            logger.info("resuming from %s", last)
        return last
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    if not _complete(path):
        raise ValueError(f"--resume_from_checkpoint {path}: the checkpoint was not written to the end "
                         "(no readable trainer_state.json)")
    return str(path)


__all__ = ["last_complete_checkpoint", "make_recipe_parser", "parse_recipe_args", "resolve_checkpoint"]
