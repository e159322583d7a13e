"""Text generation on a worker: hf-causal-lm versions, continuously batched (transformers'
continuous batching with a paged KV cache) in a fenced child, tokens streamed back in chunks."""
