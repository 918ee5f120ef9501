"""Regenerate the conformance suite's golden models and their expected logits.

Run once by maintainers (``python -m ferrum_core.conformance.generate_golden``); the output
under ``conformance/golden/`` is committed so the suite itself needs neither
torch nor transformers. Each golden model is a tiny random member of one
Llama-family variant, saved as a Hugging Face directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json) next to
``expected.npz``:

* ``prompt_ids``      int32 ``[n]``       a fixed prompt (encoded by the tokenizer)
* ``prefill_logits``  float32 ``[n, V]``  logits at every prompt position
* ``decode_ids``      int32 ``[k]``       tokens fed one at a time after the prompt
* ``decode_logits``   float32 ``[k, V]``  logits after each decode token

Weights are re-initialised at a scale that gives logits of order one, and every
norm weight and bias is randomised, so a backend that drops a bias, a norm or a
rope scaling rule misses the reference by far more than any dtype tolerance.
The oracle runs eager attention; for a sliding-window golden the generator
proves the window matters (logits differ from a run without it).

GGUF goldens (:mod:`ferrum_core.conformance.generate_gguf`) hold one golden's weights in
``Q8_0`` / ``Q4_1`` with logits computed on them dequantised. The models are
described in :mod:`ferrum_core.conformance.golden_specs`; ``--only NAME`` regenerates one
without touching the others.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ferrum_core.conformance.golden_specs import (
    BASE_CONFIG,
    CORPUS,
    DECODE_IDS,
    GGUF_MODELS,
    LORA_BASE,
    LORA_DIR,
    MODELS,
    PROMPT_TEXT,
    SEED,
    VOCAB_SIZE,
)

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def build_tokenizer(out_dir: Path) -> Any:
    """A small BPE tokenizer (``VOCAB_SIZE`` or fewer entries) with ``<s>`` prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    assert tokenizer.get_vocab_size() <= VOCAB_SIZE
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "chat_template": (
                    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
                ),
            },
            indent=2,
        )
    )
    return tokenizer


def _randomise(model: Any, seed: int) -> None:
    """Order-one logits; non-trivial norm weights and biases."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name:
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.3 * noise)
            elif "embed_tokens" in name:
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)


def _config(family: str, kwargs: dict[str, Any]) -> Any:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config,
               "qwen3": Qwen3Config}
    # eager attention: the plain softmax path, which applies a sliding window through its mask
    config = classes[family](**{**BASE_CONFIG, **kwargs})
    config._attn_implementation = "eager"
    return config


def _logits(model: Any, prompt: list[int]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        prefill = out.logits[0].float().numpy()
        past = out.past_key_values
        rows = []
        for token in DECODE_IDS:
            out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            rows.append(out.logits[0, -1].float().numpy())
    return prefill.astype(np.float32), np.stack(rows).astype(np.float32)


def _save_expected(
    target: Path, prompt: list[int], prefill: np.ndarray, decode: np.ndarray
) -> None:
    np.savez(
        target / "expected.npz",
        prompt_ids=np.asarray(prompt, dtype=np.int32),
        prefill_logits=prefill,
        decode_ids=np.asarray(DECODE_IDS, dtype=np.int32),
        decode_logits=decode,
    )


def _generate_lora(out_root: Path, prompt: list[int]) -> None:
    """A PEFT LoRA adapter on every projection of the base model, and its expected logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(out_root / LORA_BASE, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, config).eval()
    generator = torch.Generator().manual_seed(SEED - 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:  # PEFT zeroes B: an adapter that changes nothing checks nothing
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
    target = out_root / LORA_DIR
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(str(target))
    (target / "README.md").unlink(missing_ok=True)
    meta = json.loads((target / "adapter_config.json").read_text())
    meta.update(base_model_name_or_path=LORA_BASE, target_modules=sorted(meta["target_modules"]))
    (target / "adapter_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    prefill, decode = _logits(model, prompt)
    _save_expected(target, prompt, prefill, decode)
    print(f"{LORA_DIR}: LoRA on {LORA_BASE}, logits std {prefill.std():.2f}")


def _generate_model(out_root: Path, tmp: Path, name: str, prompt: list[int]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    family, kwargs, storage, offset = MODELS[name]
    torch.manual_seed(SEED + offset)
    config = _config(family, kwargs)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()  # type: ignore[no-untyped-call]
    _randomise(model, SEED + offset)
    target = out_root / name
    shutil.rmtree(target, ignore_errors=True)
    model.to(getattr(torch, storage)).save_pretrained(target)
    # The oracle runs in float32 on exactly the stored (possibly rounded) weights.
    reloaded = AutoModelForCausalLM.from_pretrained(
        target, dtype=torch.float32, attn_implementation="eager"
    )
    reloaded.eval()  # type: ignore[no-untyped-call]
    prefill, decode = _logits(reloaded, prompt)
    if getattr(config, "sliding_window", None) is not None:
        _check_window_applies(reloaded, prompt, prefill, decode)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp / file, target / file)
    (target / "generation_config.json").unlink(missing_ok=True)
    _save_expected(target, prompt, prefill, decode)
    print(f"{name}: prompt {len(prompt)} tokens, logits std {prefill.std():.2f}")


def _check_window_applies(
    model: Any, prompt: list[int], prefill: np.ndarray, decode: np.ndarray
) -> None:
    """The oracle really windowed: without the window the logits past it differ, within it not."""
    window = int(model.config.sliding_window)
    assert len(prompt) > 2 * window, "the prompt must reach well past the window"
    model.config.sliding_window = None
    try:
        full_prefill, full_decode = _logits(model, prompt)
    finally:
        model.config.sliding_window = window
    inside = np.abs(full_prefill[:window] - prefill[:window]).max()
    past = np.abs(full_prefill[window:] - prefill[window:]).max(axis=-1)
    assert inside < 1e-5, f"the window changed positions inside it ({inside})"
    assert past.min() > 1e-2, f"the window made no difference past it ({past.min()})"
    assert np.abs(full_decode - decode).max(axis=-1).min() > 1e-2, "decode ignored the window"


def generate(out_root: Path, only: set[str] | None = None) -> None:
    """(Re)generate the golden models named in ``only`` (default: all); the manifest lists all."""
    from ferrum_core.conformance.generate_gguf import generate_gguf

    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
        prompt = tokenizer.encode(PROMPT_TEXT).ids
        for name in sorted(MODELS):
            if only is None or name in only:
                _generate_model(out_root, Path(tmp), name, prompt)
        if only is None or LORA_DIR in only:
            _generate_lora(out_root, prompt)
        for name, (base, quant, _) in sorted(GGUF_MODELS.items()):
            if only is None or name in only:
                generate_gguf(out_root / base, out_root / name, quant, prompt, _logits)
                print(f"{name}: {quant} of {base}")
    manifest = {
        "prompt_text": PROMPT_TEXT,
        "models": {name: {"family": family, "storage": storage}
                   for name, (family, _, storage, _) in sorted(MODELS.items())},
        "gguf": {name: {"base": base, "quant": quant, "dtype": dtype}
                 for name, (base, quant, dtype) in sorted(GGUF_MODELS.items())},
        "lora": {"name": LORA_DIR, "base": LORA_BASE},
    }
    (out_root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="regenerate only this golden model (repeatable)")
    args = parser.parse_args()
    generate(args.out, set(args.only) if args.only else None)


if __name__ == "__main__":
    main()
