"""Artifacts and the model registry: content-addressed blobs, models, versions, aliases."""
