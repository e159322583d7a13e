"""`kiln`: the command line, its HTTP client, and the embedded platform `make run` starts."""
