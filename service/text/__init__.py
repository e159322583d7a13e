"""Text as a service in OpenAI's shapes: chat completions, completions, embeddings, models."""
