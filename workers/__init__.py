"""Everything that runs models: the wire contract, the Redis Streams queue, workers."""
