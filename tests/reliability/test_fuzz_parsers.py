"""Fuzzing the parsers of untrusted files: any input gives a result or a FerrumError.

The safetensors header reader (``SafetensorsFile``), the config parsers
(``ModelConfig.from_dict``, rope parsing, ``GenerationDefaults``) see whatever a
model repository ships. Derandomised and bounded so CI stays deterministic.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferrum_core.errors import ConfigError, FerrumError, ModelLoadError
from ferrum_core.models.config import ModelConfig
from ferrum_core.models.config_rope import parse_rope
from ferrum_core.models.generation import GenerationDefaults
from ferrum_core.models.safetensors_io import SafetensorsFile

FUZZ = settings(derandomize=True, max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# JSON-ish values, including the awkward ones: bools, huge ints, nan/inf, nesting
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=10,
)

BASE_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 48,
    "intermediate_size": 96, "num_attention_heads": 3, "num_key_value_heads": 1,
    "num_hidden_layers": 2, "vocab_size": 256, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "head_dim": 16,
}
CONFIG_KEYS = [*BASE_CONFIG, "rope_scaling", "rope_parameters", "sliding_window",
               "layer_types", "use_sliding_window", "max_window_layers", "partial_rotary_factor",
               "text_config", "torch_dtype", "attention_bias"]
ROPE_SECTION = st.one_of(
    VALUES,
    st.fixed_dictionaries({}, optional={
        "rope_type": st.sampled_from(["default", "linear", "llama3", "yarn", ""]) | VALUES,
        "type": st.sampled_from(["linear", "llama3"]) | VALUES,
        "factor": SCALARS, "low_freq_factor": SCALARS, "high_freq_factor": SCALARS,
        "original_max_position_embeddings": SCALARS, "rope_theta": SCALARS,
    }),
)


def _only_ferrum_errors(call: Any) -> Any:
    try:
        return call()
    except FerrumError as exc:
        assert str(exc)  # a message naming the problem
        return None


@FUZZ
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), VALUES, max_size=6),
       st.lists(st.sampled_from(list(BASE_CONFIG)), max_size=3))
def test_model_config_from_dict(changes: dict[str, Any], dropped: list[str]) -> None:
    data = {**BASE_CONFIG, **changes}
    for key in dropped:
        data.pop(key, None)
    config = _only_ferrum_errors(lambda: ModelConfig.from_dict(data))
    if config is not None:
        assert config.hidden_size >= 1 and config.num_hidden_layers >= 1
        assert math.isfinite(config.rms_norm_eps) and math.isfinite(config.rope_theta)


@pytest.mark.parametrize("changes", [
    {"rms_norm_eps": math.nan}, {"rms_norm_eps": math.inf}, {"rope_theta": math.nan},
    {"rope_theta": math.inf}, {"rope_scaling": {"rope_type": "linear", "factor": math.nan}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": math.inf}},
])
def test_non_finite_numbers_are_config_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="finite"):
        ModelConfig.from_dict({**BASE_CONFIG, **changes})


@FUZZ
@given(VALUES)
def test_model_config_from_anything(data: Any) -> None:
    _only_ferrum_errors(lambda: ModelConfig.from_dict(data))


@FUZZ
@given(st.fixed_dictionaries({}, optional={
    "rope_theta": SCALARS, "rope_scaling": ROPE_SECTION, "rope_parameters": ROPE_SECTION,
    "partial_rotary_factor": SCALARS,
}))
def test_rope_parsing(data: dict[str, Any]) -> None:
    result = _only_ferrum_errors(lambda: parse_rope(data))
    if result is not None:
        theta, scaling = result
        assert math.isfinite(theta) and theta > 0
        assert math.isfinite(scaling.factor) and scaling.factor > 0


@FUZZ
@given(st.dictionaries(st.text(max_size=8), VALUES, max_size=6),
       st.lists(st.integers(min_value=0, max_value=300), max_size=3))
def test_generation_defaults(data: dict[str, Any], eos: list[int]) -> None:
    # from_dir hands from_dict a JSON object (read_json_object refuses anything else)
    result = _only_ferrum_errors(
        lambda: GenerationDefaults.from_dict(data, eos_token_ids=tuple(eos)))
    if result is not None:
        assert all(isinstance(t, int) and not isinstance(t, bool) for t in result.eos_token_ids)


@FUZZ
@given(st.dictionaries(st.sampled_from(["eos_token_id", "bos_token_id", "pad_token_id",
                                        "temperature", "top_p", "top_k", "do_sample",
                                        "repetition_penalty", "max_new_tokens"]),
                       VALUES, max_size=6))
def test_generation_defaults_known_keys(data: dict[str, Any]) -> None:
    result = _only_ferrum_errors(lambda: GenerationDefaults.from_dict(data))
    if result is not None and result.temperature is not None:
        assert isinstance(result.temperature, float)


# --- safetensors headers -------------------------------------------------------------------
ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8", ""]) | VALUES,
    "shape": st.lists(st.integers(min_value=-3, max_value=2**40) | SCALARS, max_size=4)
    | VALUES,
    "data_offsets": st.lists(st.integers(min_value=-8, max_value=2**63) | SCALARS,
                             max_size=3) | VALUES,
})
HEADER = st.dictionaries(st.text(max_size=6), ENTRY | VALUES, max_size=4)


def _read(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(blob)
        file = _only_ferrum_errors(lambda: SafetensorsFile(path))
        if file is not None:
            try:
                for name in file.entries:
                    _only_ferrum_errors(lambda name=name: file.get(name))
            finally:
                file.close()


@FUZZ
@given(HEADER, st.binary(max_size=64), st.integers(min_value=-4, max_value=4))
def test_safetensors_headers(header: dict[str, Any], data: bytes, skew: int) -> None:
    raw = json.dumps(header).encode()
    _read(struct.pack("<Q", max(0, len(raw) + skew)) + raw + data)


@FUZZ
@given(st.binary(max_size=96))
def test_safetensors_random_bytes(blob: bytes) -> None:
    _read(blob)


@FUZZ
@given(st.binary(max_size=48), st.integers(min_value=0, max_value=2**64 - 1))
def test_safetensors_header_lengths(body: bytes, length: int) -> None:
    _read(struct.pack("<Q", length) + body)


@pytest.mark.parametrize("header", [
    {"t": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}},
    {"t": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}},
    {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}},
    {"t": {"dtype": "F32", "shape": [math.inf], "data_offsets": [0, 4]}},
    {"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
    {"t": {"dtype": "F32", "shape": [1e300], "data_offsets": [0, 4]}},
    {"t": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}},
    {"__metadata__": [1, 2]},
    {"__metadata__": "x"},
])
def test_safetensors_known_bad_headers(header: dict[str, Any], tmp_path: Path) -> None:
    raw = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))
    with pytest.raises(ModelLoadError, match=r"bad\.safetensors"):
        SafetensorsFile(path)


def test_safetensors_good_header_still_reads(tmp_path: Path) -> None:
    raw = json.dumps({"__metadata__": {"format": "pt"},
                      "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "ok.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + struct.pack("<2f", 1.0, 2.0))
    file = SafetensorsFile(path)
    assert file.get("t").tolist() == [1.0, 2.0] and file.metadata == {"format": "pt"}
    file.close()
