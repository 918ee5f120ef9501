"""PEFT LoRA adapters applied per row equal the adapter merged into the weights."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch_tiny import TinyModel, prompt

from ferrum_core.errors import ModelLoadError
from ferrum_core.llm.decoder import ActiveLoraAdapter, UnifiedItem

peft = pytest.importorskip("peft")

ATOL = 1e-4
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(model: TinyModel, out: Path, seed: int, **lora: Any) -> Any:
    """Save a random adapter (B non-zero) and return the merged transformers model."""
    torch.manual_seed(seed)
    base = copy.deepcopy(model.hf)
    config = peft.LoraConfig(init_lora_weights=False, **lora)
    wrapped = peft.get_peft_model(base, config)
    with torch.no_grad():  # make the deltas large enough to matter
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.mul_(3.0)
    wrapped.save_pretrained(out)
    return wrapped.merge_and_unload().eval()


def merged_logits(merged: Any, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return merged(torch.tensor([tokens])).logits[0].float().numpy()


@pytest.fixture(scope="module")
def adapters(tiny: Callable[[str], TinyModel], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model = tiny("llama_gqa")
    root = tmp_path_factory.mktemp("lora")
    full = make_adapter(model, root / "full", 1, r=4, lora_alpha=8, target_modules=ALL_TARGETS)
    partial = make_adapter(
        model, root / "partial", 2, r=2, lora_alpha=5, use_rslora=True,
        target_modules=["q_proj", "v_proj", "down_proj"],
    )  # fmt: skip
    return model, {"full": (root / "full", full), "partial": (root / "partial", partial)}


def test_lora_equals_merged(adapters) -> None:  # type: ignore[no-untyped-def]
    model, ads = adapters
    path, merged = ads["full"]
    llm = model.build()
    assert llm.config.supports_lora
    tokens = prompt(11, seed=3)
    llm.set_lora_adapter_for_cache("s", ActiveLoraAdapter("full", path))
    got = llm.prefill("s", tokens[:8], 0)
    want = merged_logits(merged, tokens)
    np.testing.assert_allclose(got, want[7], atol=ATOL, rtol=0)
    for p in range(8, 11):
        np.testing.assert_allclose(llm.decode("s", tokens[p], p), want[p], atol=ATOL, rtol=0)


def test_adapters_mix_in_one_batch(adapters) -> None:  # type: ignore[no-untyped-def]
    model, ads = adapters
    llm = model.build()
    llm.set_lora_adapter_for_cache("f", ActiveLoraAdapter("full", ads["full"][0]))
    llm.set_lora_adapter_for_cache("p", ActiveLoraAdapter("partial", ads["partial"][0]))
    tf, tp, tb = prompt(6, seed=4), prompt(9, seed=5), prompt(7, seed=6)
    llm.prefill("f", tf[:-1], 0)
    got = llm.unified_forward(
        [
            UnifiedItem("f", tf[-1:], 5, True),
            UnifiedItem("p", tp, 0, True),
            UnifiedItem("base", tb, 0, True),
        ]
    )
    np.testing.assert_allclose(got[0], merged_logits(ads["full"][1], tf)[-1], atol=ATOL, rtol=0)  # type: ignore[arg-type]
    np.testing.assert_allclose(got[1], merged_logits(ads["partial"][1], tp)[-1], atol=ATOL, rtol=0)  # type: ignore[arg-type]
    np.testing.assert_allclose(got[2], model.logits(tb).numpy()[-1], atol=ATOL, rtol=0)  # type: ignore[arg-type]
    snapshot = llm.lora_metrics_snapshot()
    assert snapshot is not None and snapshot["adapters_loaded"] == 2
    # Clearing the adapter returns a sequence to the base model.
    llm.set_lora_adapter_for_cache("g", ActiveLoraAdapter("full", ads["full"][0]))
    llm.set_lora_adapter_for_cache("g", None)
    np.testing.assert_allclose(llm.prefill("g", tb, 0), got[2], atol=ATOL, rtol=0)  # type: ignore[arg-type]


def test_prefix_cache_does_not_cross_adapters(adapters) -> None:  # type: ignore[no-untyped-def]
    model, ads = adapters
    path, merged = ads["full"]
    llm = model.build(block_size=4)
    tokens = prompt(13, seed=7)
    llm.prefill("base", tokens, 0)
    llm.set_lora_adapter_for_cache("x", ActiveLoraAdapter("full", path))
    got = llm.prefill("x", tokens, 0)
    np.testing.assert_allclose(got, merged_logits(merged, tokens)[-1], atol=ATOL, rtol=0)
    llm.set_lora_adapter_for_cache("y", ActiveLoraAdapter("full", path))
    hits = llm.cache_metrics_snapshot()["prefix_cache_hits"]
    got = llm.prefill("y", tokens, 0)  # same adapter: its own prefix is reused
    assert llm.cache_metrics_snapshot()["prefix_cache_hits"] - hits == 3
    np.testing.assert_allclose(got, merged_logits(merged, tokens)[-1], atol=ATOL, rtol=0)


def test_missing_adapter_files_fail_cleanly(
    tmp_path: Path, tiny: Callable[[str], TinyModel]
) -> None:
    llm = tiny("llama_gqa").build()
    with pytest.raises(ModelLoadError):
        llm.set_lora_adapter_for_cache("s", ActiveLoraAdapter("nope", tmp_path))
