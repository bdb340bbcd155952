"""Reinforcement learning for generative embeddings (UME-R1's GRPO, METHODS §5.3): rewards and advantages."""
