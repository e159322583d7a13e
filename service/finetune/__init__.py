"""Fine-tuning jobs as the gateway sees them: creation, datasets, actions, public shapes. The trainer
runs them (workers/finetune)."""
