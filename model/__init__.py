"""The Llama-style decoder, its config, and conversion to/from Hugging Face transformers."""
from model.config import ModelConfig, ModelConfigError
from model.llama import Llama, LlamaOutput

__all__ = ["ModelConfig", "ModelConfigError", "Llama", "LlamaOutput"]
