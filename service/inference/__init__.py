"""The inference paths as the gateway runs them: OIP parsing and encoding, the sync and async submit,
the fast path, serving policy, version resolution, the repository extension."""
