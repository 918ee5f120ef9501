"""Hugging Face Hub ids resolve through huggingface_hub's cache; a local path always wins.

Nothing here reaches a hub: each test lays out a Hub cache in a temporary
``HF_HOME`` exactly as ``huggingface_hub`` writes it (``refs/<branch>`` naming
a commit, ``snapshots/<commit>/`` holding the files) and runs with
``HF_HUB_OFFLINE=1`` in a fresh process, since ``huggingface_hub`` reads its
environment when imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ferrum_core.models.hub import looks_like_hub_id, split_hub_id
from tests.tiny_models import build_tiny_model

pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def _cache(hf_home: Path, repo: str, model: Path, commit: str, ref: str = "main") -> Path:
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    shutil.copytree(model, snapshot)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snapshot


def _generate(model: str, hf_home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    code = (
        "import json, sys; from ferrum_core.models import load_model;"
        "m = load_model(sys.argv[1]); m.weights.close();"
        "print(json.dumps({'path': str(m.path), 'hidden': m.config.hidden_size}))"
    )
    return subprocess.run([sys.executable, "-c", code, model], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("text", "ok"), [
    ("Org/Name", True), ("HuggingFaceTB/SmolLM2-135M-Instruct", True), ("Org/Name@v1.0", True),
    ("./Org/Name", False), ("/abs/path", False), ("~/x/y", False), ("Name", False),
    ("a/b/c", False), ("Org/Name@", False),
])  # fmt: skip
def test_what_looks_like_a_hub_id(text: str, ok: bool) -> None:
    assert looks_like_hub_id(text) is ok


def test_split_revision() -> None:
    assert split_hub_id("Org/Name@dev") == ("Org/Name", "dev")
    assert split_hub_id("Org/Name") == ("Org/Name", None)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hub-models")
    return (build_tiny_model(root, "llama", hidden_size=48),
            build_tiny_model(root, "llama", hidden_size=64, num_attention_heads=4,
                             num_key_value_heads=2))


def test_hub_id_from_the_cache_offline(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    main, dev = two_models
    hf_home = tmp_path / "hf"
    snapshot = _cache(hf_home, "Org/Tiny", main, COMMIT)
    _cache(hf_home, "Org/Tiny", dev, OTHER, ref="dev")
    out = _generate("Org/Tiny", hf_home, tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert Path(got["path"]) == snapshot and got["hidden"] == 48
    pinned = json.loads(_generate("Org/Tiny@dev", hf_home, tmp_path).stdout)
    assert pinned["hidden"] == 64


def test_a_local_path_wins(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    main, dev = two_models
    hf_home = tmp_path / "hf"
    _cache(hf_home, "Org/Tiny", main, COMMIT)
    shutil.copytree(dev, tmp_path / "Org" / "Tiny")  # ./Org/Tiny exists beside the caller
    got = json.loads(_generate("Org/Tiny", hf_home, tmp_path).stdout)
    assert got["hidden"] == 64
    assert (tmp_path / got["path"]).resolve() == (tmp_path / "Org" / "Tiny").resolve()


def test_missing_offline_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1",
           "FERRUM_HOME": str(tmp_path / "fh")}
    out = subprocess.run([sys.executable, "-m", "ferrum_core.cli.main", "generate", "-m",
                          "Org/Absent", "-b", "example", "hi"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Org/Absent" in out.stderr and "Hugging Face cache" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
