"""Evaluation: ranking metrics, MMEB-compatible readers and aggregation, the runner and its report."""
