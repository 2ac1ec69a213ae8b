"""`llara push`: fails fast and clearly without network or token, never touches the folder, uploads with upload_folder."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest

CARD = """---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
license: apache-2.0
tags:
- llara
- mteb
---

# tiny
"""


@pytest.fixture
def export_dir(tmp_path) -> Path:
    """The files `llara push` checks for, without weights worth loading (push never loads them)."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "README.md").write_text(CARD)
    (folder / "config.json").write_text(json.dumps({"model_type": "llara", "auto_map": {}}))
    (folder / "modules.json").write_text("[]")
    (folder / "config_sentence_transformers.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return folder


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Offline mode off and no stored token, whatever the machine has."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir", p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_mode_fails_fast_and_changes_nothing(export_dir, monkeypatch):
    from huggingface_hub import constants

    from hub_card.push import PushError, push_folder

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = _snapshot(export_dir)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE"):
        push_folder(export_dir, "test-org/tiny", token="hf_dummy")
    assert _snapshot(export_dir) == before


def test_missing_token_fails_fast_and_changes_nothing(export_dir, online):
    from hub_card.push import PushError, push_folder

    before = _snapshot(export_dir)
    start = time.monotonic()
    with pytest.raises(PushError, match="no Hugging Face token.*HF_TOKEN.*hf auth login"):
        push_folder(export_dir, "test-org/tiny")
    assert time.monotonic() - start < 5
    assert _snapshot(export_dir) == before


def test_unreachable_hub_fails_fast_and_changes_nothing(export_dir, online):
    from hub_card.push import PushError, push_folder

    before = _snapshot(export_dir)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(PushError, match=f"cannot reach the Hub at {endpoint}"):
        push_folder(export_dir, "test-org/tiny", token="hf_dummy", endpoint=endpoint)
    assert time.monotonic() - start < 10
    assert _snapshot(export_dir) == before


def test_push_uploads_the_folder_with_upload_folder(export_dir, online, monkeypatch):
    from hub_card.push import push_folder

    calls = []

    class FakeApi:
        def __init__(self, endpoint=None, token=None):
            calls.append(("init", endpoint, token))

        def whoami(self):
            return {"name": "tester"}

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return type("Commit", (), {"commit_url": "https://example.invalid/commit/1"})()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    with socket.socket() as server:  # something listening, so the connection probe succeeds
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        before = _snapshot(export_dir)
        url = push_folder(export_dir, "test-org/tiny", token="hf_dummy", endpoint=endpoint, private=True)
    assert url == "https://example.invalid/commit/1"
    assert calls[0] == ("init", endpoint, "hf_dummy")
    assert calls[1] == ("create_repo", "test-org/tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    upload = calls[2][1]
    assert upload["repo_id"] == "test-org/tiny" and upload["folder_path"] == str(export_dir)
    assert upload["repo_type"] == "model"
    assert _snapshot(export_dir) == before


def test_bad_folder_and_repo_id_are_refused(export_dir, tmp_path, online):
    from hub_card.push import push_folder

    with pytest.raises(FileNotFoundError, match="folder not found"):
        push_folder(tmp_path / "missing", "test-org/tiny", token="hf_dummy")
    (export_dir / "modules.json").unlink()
    with pytest.raises(ValueError, match=r"not an exported LLaRA repository \(missing \['modules.json'\]\).*llara export"):
        push_folder(export_dir, "test-org/tiny", token="hf_dummy")
    (export_dir / "modules.json").write_text("[]")
    (export_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        push_folder(export_dir, "test-org/tiny", token="hf_dummy")
    (export_dir / "config.json").write_text(json.dumps({"model_type": "llara"}))
    for repo in ("no-org", "bad org/name", "a/b/c"):
        with pytest.raises(ValueError, match="repository id"):
            push_folder(export_dir, repo, token="hf_dummy")


def test_cli_reports_a_clear_error(export_dir, online, capsys):
    from llara.scripts.push import main

    assert main(["--dir", str(export_dir), "--repo", "test-org/tiny"]) == 1
    assert "llara push: error: no Hugging Face token" in capsys.readouterr().err
