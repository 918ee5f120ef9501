"""The converted-model cache: keyed by the GGUF's content, trusted only when
this user's, and a conversion killed half-way leaves nothing for long."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ferrum_core.models import load_model
from ferrum_core.models.cache import write_dir_atomically
from ferrum_core.models.default_model import converted_gguf_dir
from tests.models.gguf_builder import build_tiny_llama_and_gguf


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FERRUM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _same_stamps_other_weights(gguf: Path, tmp_path: Path) -> Path:
    """A GGUF of the same name, size and mtime whose last weights differ."""
    other = tmp_path / "other" / gguf.name
    other.parent.mkdir()
    data = bytearray(gguf.read_bytes())
    data[-64:] = np.full(16, 0.5, dtype=np.float32).tobytes()
    other.write_bytes(bytes(data))
    stat = gguf.stat()
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return other


def _weights(directory: Path) -> bytes:
    return (directory / "model.safetensors").read_bytes()


def test_same_name_size_and_mtime_is_not_the_same_model(home: Path, tmp_path: Path) -> None:
    _, gguf = build_tiny_llama_and_gguf(tmp_path)
    first = converted_gguf_dir(gguf)
    other = _same_stamps_other_weights(gguf, tmp_path)
    assert converted_gguf_dir(other) != first
    assert _weights(converted_gguf_dir(other)) != _weights(first)
    inode = gguf.stat().st_ino
    subprocess.run(["cp", "-p", str(other), str(gguf)], check=True)  # over it, in place
    assert gguf.stat().st_ino == inode
    assert converted_gguf_dir(gguf) == converted_gguf_dir(other)


def test_a_converted_model_not_ours_is_converted_again(
    home: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _, gguf = build_tiny_llama_and_gguf(tmp_path)
    first = converted_gguf_dir(gguf, progress=False)
    capfd.readouterr()
    assert converted_gguf_dir(gguf) == first and capfd.readouterr().err == ""
    weights = first / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(b"\0" * len(original))  # someone else's weights...
    weights.chmod(0o666)  # ...written through a group/world-writable file
    assert converted_gguf_dir(gguf, progress=False) == first
    err = capfd.readouterr().err
    assert "converting" in err and "group/world-writable" in err and err.count("\n") == 1
    assert weights.read_bytes() == original and weights.stat().st_mode & 0o022 == 0
    if os.getuid() == 0:
        os.chown(first, 65534, 65534)
        assert converted_gguf_dir(gguf, progress=False) == first
        assert "owned by uid 65534" in capfd.readouterr().err
        assert first.stat().st_uid == 0
    load_model(first)


def test_converted_weights_changed_in_place_are_converted_again(
    home: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Right owner and mode, wrong bytes: the sha256 recorded at conversion catches it."""
    _, gguf = build_tiny_llama_and_gguf(tmp_path)
    first = converted_gguf_dir(gguf, progress=False)
    weights = first / "model.safetensors"
    original = weights.read_bytes()
    with weights.open("r+b") as handle:  # same inode, owner and mode; one byte differs
        handle.seek(len(original) - 1)
        handle.write(bytes([original[-1] ^ 0xFF]))
    capfd.readouterr()
    assert converted_gguf_dir(gguf, progress=False) == first
    err = capfd.readouterr().err
    assert "does not match the sha256 recorded" in err and err.count("\n") == 1
    assert weights.read_bytes() == original
    assert converted_gguf_dir(gguf) == first and capfd.readouterr().err == ""


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ferrum_core.models.cache import write_dir_atomically

    def build(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"x" * 1_000_000)
        print("writing", flush=True)
        time.sleep(600)

    write_dir_atomically(Path(sys.argv[1]), build)
    """
)


def test_a_killed_conversion_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "writing\n"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    (left,) = target.parent.iterdir()
    assert left.name.startswith(".model.tmp-") and (left / "model.safetensors").exists()
    write_dir_atomically(target, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert [p.name for p in target.parent.iterdir()] == ["model"]
