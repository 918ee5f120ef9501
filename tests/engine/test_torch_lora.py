"""Per-request LoRA through the engine equals the adapter merged into the weights (peft oracle)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferrum_core.engine import LLM, LoRARequest, SamplingParams

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")

PROMPT = "Paris is the capital of"
STEPS = 10


def _adapter(base_dir: Path, out: Path, seed: int, **lora: Any) -> Any:
    """Save a random PEFT adapter (B non-zero) and return the merged transformers model."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    wrapped = peft.get_peft_model(base, peft.LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.mul_(3.0)
    wrapped.save_pretrained(out)
    return wrapped.merge_and_unload().eval()


def _greedy(model: Any, prompt_ids: list[int]) -> list[int]:
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(STEPS):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


@pytest.fixture(scope="module")
def adapters(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("engine-lora")
    base = tiny_dirs["target"]
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return {
        "full": (root / "full", _adapter(base, root / "full", 1, r=4, lora_alpha=8,
                                         target_modules=targets)),
        "attn": (root / "attn", _adapter(base, root / "attn", 2, r=2, lora_alpha=4,
                                         target_modules=["q_proj", "v_proj"])),
    }


def test_lora_requests_equal_merged_weights_in_one_mixed_batch(
    make_llm: Callable[..., LLM], tiny_dirs: dict[str, Path], adapters: dict
) -> None:
    from transformers import AutoModelForCausalLM

    llm = make_llm()
    if not llm.registry.require("target").capabilities().supports_lora:
        pytest.skip("this backend build has no LoRA")
    prompt_ids = llm.tokenizer.encode(PROMPT)
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["target"], dtype=torch.float32).eval()
    expected = {
        None: _greedy(base, prompt_ids),
        "full": _greedy(adapters["full"][1], prompt_ids),
        "attn": _greedy(adapters["attn"][1], prompt_ids),
    }
    assert len({tuple(v) for v in expected.values()}) == 3, "adapters should change the output"
    requests = {name: LoRARequest(name, adapters[name][0]) for name in ("full", "attn")}
    order = [None, "full", "attn", "full", None]
    params = SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True)
    outputs = llm.generate([PROMPT] * len(order), params,
                           lora_request=[requests[n] if n else None for n in order],
                           use_tqdm=False)
    for name, output in zip(order, outputs, strict=True):
        assert list(output.outputs[0].token_ids) == expected[name], name
