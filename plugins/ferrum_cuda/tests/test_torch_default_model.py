"""The real default model (SmolLM2-135M-Instruct) answers a factual question."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ferrum_cuda.model import TorchDecoderLLM

from ferrum_core.models import load_model, rope_inv_freq
from ferrum_core.types import DataType


@pytest.mark.slow
def test_default_model_knows_the_capital_of_france() -> None:
    loaded = load_model(None)
    llm = TorchDecoderLLM.from_source(
        loaded.config,
        loaded.weights,
        rope_inv_freq(loaded.config),
        dtype=DataType.FP32,
        device=torch.device("cpu"),
        num_blocks=64,
    )
    tok = loaded.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
    )
    ids = tok.encode(text, add_special_tokens=False)
    logits = llm.prefill("q", ids, 0)
    answer: list[int] = []
    for pos in range(len(ids), len(ids) + 24):
        token = int(np.argmax(logits))
        if token in tok.eos_token_ids:
            break
        answer.append(token)
        logits = llm.decode("q", token, pos)
    assert "Paris" in tok.decode(answer)
