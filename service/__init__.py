"""The modelkiln gateway: FastAPI app, auth, admission, metrics, CLI and client."""

__version__ = "0.1.0"
