"""An hf-causal-lm version's artifact to a model and its tokenizer: the loader lives in
workers/common/causal_model.py (the trainer builds LoRA fine-tunes on it too); re-exported here
for the generation package."""

from workers.common.causal_model import LoadedModel, eos_ids, export_bundle, load_model, sha256_file, verify

__all__ = ["LoadedModel", "eos_ids", "export_bundle", "load_model", "sha256_file", "verify"]
