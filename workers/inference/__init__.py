"""The inference worker: its loop (worker.py), the queue and leases, batching, the model cache
and lifecycle, fenced model processes, runtimes per format."""
