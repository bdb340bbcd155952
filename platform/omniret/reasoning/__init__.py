"""Embedding-centric reasoning (ECR, Think-Then-Embed): a reasoner writes ``<think>...</think>`` and a
final summary for an item, and embedders condition on that text.

- :mod:`omniret.reasoning.templates`: the reasoner's task-specific prompts, as data;
- :mod:`omniret.reasoning.ecr`: the ECR record and how a generation is split and checked;
- :mod:`omniret.reasoning.reasoner`: generation with any Qwen-VL checkpoint (transformers ``generate``);
- :mod:`omniret.reasoning.store`: ECR files keyed by content hash + template + reasoner id;
- :mod:`omniret.reasoning.job`: the resumable run over training pairs or evaluation sets (Ray Data);
- :mod:`omniret.reasoning.vllm_engine`: the same job through ``ray.data.llm`` (optional; vLLM, GPU).

No training code lives here.
"""
