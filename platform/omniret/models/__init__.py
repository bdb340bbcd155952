"""Model core: load Qwen-VL backbones (or build a tiny one offline), encode inputs, embed and rerank."""
