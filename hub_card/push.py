"""``llara push``: upload an exported folder to the Hugging Face Hub with ``HfApi.upload_folder``.

Every check that can fail without touching the Hub runs first (folder is an export, repo id, offline
mode, token), then one short connection probe and a ``whoami`` call; only then is the repository created
(if missing) and the folder uploaded. Nothing is written into the local folder at any point.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("README.md", "config.json", "modules.json", "config_sentence_transformers.json")
CONNECT_TIMEOUT_S = 5.0


class PushError(RuntimeError):
    """The upload cannot start or failed; the message says why and what to do."""


def check_export_folder(folder: str | os.PathLike) -> Path:
    """The folder must be a `llara export` result: README.md, config (auto_map), ST files, safetensors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ValueError(f"{folder} is not an exported LLaRA repository (missing {missing}): run `llara export` first")
    from trainers.model_folders import require_llara_folder

    from .export import validate_card

    require_llara_folder(folder, "exported folder")
    validate_card(folder / "README.md")
    return folder


def _probe_endpoint(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """One TCP connection to the Hub endpoint, so that no network fails in seconds instead of retrying."""
    parsed = urlparse(endpoint)
    host = parsed.hostname
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        raise PushError(f"the Hub endpoint {endpoint!r} is not a URL")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise PushError(f"cannot reach the Hub at {endpoint} ({err}); check the network or HF_ENDPOINT") from err


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> str:
    """Upload ``folder`` to the model repository ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = check_export_folder(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"invalid repository id {repo_id!r}: {err}") from err
    if "/" not in repo_id:
        raise ValueError(f"repository id {repo_id!r} must be 'org/name' (or 'user/name')")
    if constants.HF_HUB_OFFLINE:
        raise PushError("HF_HUB_OFFLINE is set: the Hub cannot be reached in offline mode; unset it to push")
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass --token")
    endpoint = endpoint or constants.ENDPOINT
    _probe_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        user = api.whoami()
        logger.info("pushing %s to %s as %s", folder, repo_id, user.get("name", "?"))
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload LLaRA model ({folder.name})",
            create_pr=create_pr,
        )
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = {401: "the token is invalid", 403: "the token may not write to this repository"}.get(status, "")
        raise PushError(f"the Hub refused the upload to {repo_id}{': ' + hint if hint else ''} ({err})") from err
    except OSError as err:
        raise PushError(f"the upload to {repo_id} failed: {err}") from err
    return str(getattr(commit, "commit_url", commit))


__all__ = ["PushError", "check_export_folder", "push_folder"]
