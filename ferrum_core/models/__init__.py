"""The model layer: Llama-family configs, safetensors weights, GGUF import,
tokenizers and chat templates. Imports no array library beyond numpy."""

from ferrum_core.models.config import ModelConfig, RopeScaling
from ferrum_core.models.detokenize import IncrementalDetokenizer
from ferrum_core.models.expected import expected_tensors
from ferrum_core.models.generation import GenerationDefaults
from ferrum_core.models.gguf_import import convert_gguf
from ferrum_core.models.loader import LoadedModel, load_model, resolve_model_dir
from ferrum_core.models.rope import rope_inv_freq
from ferrum_core.models.tokenizer import Tokenizer
from ferrum_core.models.weights import WeightSource

__all__ = [
    "ModelConfig",
    "RopeScaling",
    "LoadedModel",
    "load_model",
    "resolve_model_dir",
    "WeightSource",
    "expected_tensors",
    "Tokenizer",
    "IncrementalDetokenizer",
    "GenerationDefaults",
    "convert_gguf",
    "rope_inv_freq",
]
