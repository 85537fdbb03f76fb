"""Fixtures shared by the daemon-level tests (test_daemon, test_ota_daemon)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = """# Guía del dispositivo

El dispositivo edged escucha con un micrófono y responde por el altavoz.
Para silenciarlo use `edgectl mute`.
"""


@pytest.fixture(scope="module")
def index_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) knowledge index, built once per module by the real edged-index-sync."""
    base = tmp_path_factory.mktemp("kb")
    (base / "docs").mkdir()
    (base / "docs" / "guia.md").write_text(DOC, encoding="utf-8")
    subprocess.run([str(REPO / ".venv" / "bin" / "edged-index-sync"), "--source",
                    str(base / "docs"), "--index-dir", str(base / "index"), "--state-dir",
                    str(base / "sync")], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "GEMINI_API_KEY": ""})
    return base
