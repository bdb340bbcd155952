"""Training: GradCache, batching and curricula, the Ray Train loop, checkpoints, recipes."""
