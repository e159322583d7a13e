"""The contract between the gateway and the workers, and the only part of workers/ the gateway
imports: versioned messages, the EngineClient on Redis Streams, Redis key names, tensor codecs,
usage keys, the fine-tune job spec and its queue, dataset formats, request-id logging."""
