"""Is this folder a LLaRA model? Answered from ``config.json`` alone (no weights, no remote code run)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LLARA_MODEL_TYPE = "llara"
INIT_HINT = "convert a base LLM first with `llara init --base <model> --out <folder>`"


class NotLlaraModelError(ValueError):
    """A path that should hold a LLaRA model folder does not."""


def read_model_config(path: str | os.PathLike[str], what: str = "model folder") -> dict[str, Any]:
    """The parsed ``config.json`` of a model folder.

    Raises:
        NotLlaraModelError: the folder is missing or not a folder, or its config.json is missing, unreadable,
            not valid JSON or not a JSON object; the message names the path.
    """
    folder = Path(path)
    if not folder.exists():
        raise NotLlaraModelError(f"{what} not found: {folder}")
    if not folder.is_dir():
        raise NotLlaraModelError(f"{what} {folder} is a file, expected a model folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise NotLlaraModelError(f"{what} {folder} is not a model folder: it has no config.json; {INIT_HINT}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise NotLlaraModelError(f"{config_path}: cannot be read ({err})") from err
    except json.JSONDecodeError as err:
        raise NotLlaraModelError(f"{config_path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(config, dict):
        raise NotLlaraModelError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    return config


def require_llara_folder(path: str | os.PathLike[str], what: str = "model folder") -> dict[str, Any]:
    """The ``config.json`` of a LLaRA folder (``"model_type": "llara"``), or a clear error.

    ``what`` names the role of the folder in the message (``"--model"``, ``"base model"``, ...).

    Raises:
        NotLlaraModelError: see ``read_model_config``; or the config names another model type (a plain Llama or
            BERT folder), with the hint to run ``llara init``.
    """
    config = read_model_config(path, what)
    found = config.get("model_type")
    if found != LLARA_MODEL_TYPE:
        raise NotLlaraModelError(
            f"{what} {Path(path)} is not a LLaRA model folder: config.json has model_type {found!r}, "
            f"expected {LLARA_MODEL_TYPE!r}; {INIT_HINT}"
        )
    return config


def is_llara_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder whose config.json says ``"model_type": "llara"`` (never raises)."""
    try:
        require_llara_folder(path)
    except NotLlaraModelError:
        return False
    return True


__all__ = ["LLARA_MODEL_TYPE", "NotLlaraModelError", "is_llara_folder", "read_model_config", "require_llara_folder"]
