"""The trainer: job execution, the fenced training process and its messages, training loops,
promotion."""
