"""Model conversion: import a Hugging Face Llama, linearise attention layers (Liger), LoRA.

    from linscan.convert import from_llama, liger, apply_lora, merge_lora
    teacher = from_llama("path/to/llama")              # or a trained linscan model with attention
    student = liger(teacher, recurrence="gla", window=64)   # Liger Attention, no new parameters
    apply_lora(student, rank=8)                         # q, k, v adapters; train with linscan.train
    merge_lora(student)                                 # plain Linears again, ready to save

``linscan linearize`` runs the whole recipe from the command line.
"""

from .liger import liger, liger_config
from .llama import from_llama, llama_config
from .lora import apply_lora, lora_parameters, merge_lora
from .source import load_source

__all__ = ["apply_lora", "from_llama", "liger", "liger_config", "llama_config", "load_source", "lora_parameters",
           "merge_lora"]
