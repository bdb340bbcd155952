"""Training and evaluation data: the pair schema, readers (jsonl, parquet, MMEB), mixing, the generated benchmark."""
