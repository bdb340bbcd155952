"""bf16 training steps and embedding throughput (images/s, MFU) of a random Qwen2-VL-2B-size model on one GPU.

Run: python bench/gpu_bench.py [--train-steps 10] [--train-batch 8] [--embed-images 256] [--image-px 448]

Needs CUDA: without it the script says so and exits with code 2 (nothing else in the project depends
on it). The model has Qwen2-VL-2B's shapes (28 layers of width 1536, a 32-block vision tower of width
1280, vocabulary 151,936: about 2.2B parameters) with random weights, built in memory on the GPU with
omniret's offline tokenizer; no download. It runs through omniret's own embedding path (``Embedder``:
prompt template, image patching, token-budget batches, last-token pooling).

- Training: full-parameter bf16 steps (AdamW, InfoNCE over text queries and image targets of one
  batch), timed after warm-up steps with CUDA synchronisation.
- Embedding: images/s over ``--embed-images`` synthetic images, end to end (preprocessing included)
  and model-only (pre-encoded inputs).

MFU = model FLOPs per second / the GPU's dense bf16 peak. Model FLOPs are counted from the shapes of
the batches actually run (:func:`forward_flops`): 2 FLOPs per weight per token for every matrix
multiplication of the language model (the embedding lookup and the unused LM head excluded), the
vision tower (patch embedding included) and the merger, plus attention scores and their weighted sum
(4 x layers x width x length^2 per sequence, 4 x depth x width x patches^2 per image: the vision tower
attends within each image). A training step counts 3x its forward (backward = 2x forward); the
causal mask is not discounted (PaLM's convention).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

# Qwen2-VL-2B's shapes (its config.json); everything else comes from the tiny qwen2_vl config.
TEXT_2B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
           "num_key_value_heads": 2, "vocab_size": 151_936}
VISION_2B = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 1536, "patch_size": 14,
             "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
MROPE_2B = [16, 24, 24]
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s; by device-name substring.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def qwen2_vl_2b_config(tokenizer):
    """A Qwen2VLConfig with Qwen2-VL-2B's sizes and special-token ids that match ``tokenizer``."""
    from omniret.models.families import FAMILIES
    from omniret.models.tiny import tiny_config

    data = tiny_config("qwen2_vl", tokenizer, "tiny").to_dict()
    text = {k: v for k, v in data["text_config"].items() if k != "layer_types"}  # derived: rebuilt per layer
    text.update(TEXT_2B, tie_word_embeddings=True)
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": list(MROPE_2B)}
    vision = {**data["vision_config"], **VISION_2B}
    config = FAMILIES["qwen2_vl"].config_class()(**{**data, "text_config": text, "vision_config": vision,
                                                    "tie_word_embeddings": True})  # as Qwen2-VL-2B
    return config


def text_linear_params(text) -> int:
    """Weights of the language model's matrix multiplications per token (all layers), biases included."""
    d, i = text.hidden_size, text.intermediate_size
    head = d // text.num_attention_heads
    kv = text.num_key_value_heads * head
    attention = (d * d + d) + 2 * (d * kv + kv) + d * d  # q (bias), k and v (bias), o
    return text.num_hidden_layers * (attention + 3 * d * i)  # + gate, up, down


def vision_linear_params(vision) -> tuple[int, int]:
    """(weights per patch: patch embedding and blocks; weights per merged token: the merger), biases included."""
    e, hidden, m = vision.embed_dim, vision.hidden_size, vision.spatial_merge_size ** 2
    mlp = int(e * vision.mlp_ratio)
    block = (3 * e * e + 3 * e) + (e * e + e) + (e * mlp + mlp) + (mlp * e + e)  # qkv, proj, fc1, fc2
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2 * e
    merger = (e * m) * (e * m) + e * m + (e * m) * hidden + hidden
    return patch + vision.depth * block, merger


def forward_flops(config, lengths: list[int], grids: list[tuple[int, int, int]]) -> float:
    """FLOPs of one forward over sequences of ``lengths`` tokens and images of patch grids ``grids`` (t, h, w)."""
    text, vision = config.text_config, config.vision_config
    flops = 0.0
    per_token = text_linear_params(text)
    for s in lengths:
        flops += 2 * per_token * s + 4 * text.num_hidden_layers * text.hidden_size * s * s
    per_patch, per_merged = vision_linear_params(vision)
    for t, h, w in grids:
        n = t * h * w
        flops += 2 * per_patch * n + 4 * vision.depth * vision.embed_dim * n * n
        flops += 2 * per_merged * n / vision.spatial_merge_size ** 2
    return flops


def batch_flops(config, batch: dict) -> float:
    """:func:`forward_flops` of a collated batch (attended tokens per row, image grids)."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    grids = [tuple(g) for g in batch["image_grid_thw"].tolist()] if "image_grid_thw" in batch else []
    return forward_flops(config, lengths, grids)


def peak_flops(name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        print("gpu_bench.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Nothing was measured.", file=sys.stderr)
        sys.exit(2)


def build_embedder(device: str, dtype, size: str, image_px: int, batch_tokens: int):
    """omniret's Embedder over a random model built in memory (Qwen2-VL-2B shapes, or a tiny preset)."""
    import torch

    from omniret.config import EmbedConfig, MediaConfig
    from omniret.models.backbone import Backbone, resolve_attention
    from omniret.models.embedder import Embedder
    from omniret.models.families import FAMILIES
    from omniret.models.tiny import build_tokenizer, tiny_config
    from omniret.models.vision import VisionSpec

    tokenizer = build_tokenizer()
    config = qwen2_vl_2b_config(tokenizer) if size == "2b" else tiny_config("qwen2_vl", tokenizer, size)
    family = FAMILIES["qwen2_vl"]
    attn = resolve_attention("auto", torch.device(device))
    torch.manual_seed(0)
    with torch.device(device):
        model = family.model_class()._from_config(config, attn_implementation=attn, dtype=dtype)
    backbone = Backbone(model.eval(), tokenizer, family, VisionSpec(), Path(f"random-qwen2-vl-{size}"),
                        torch.device(device), dtype)
    pixels = image_px * image_px
    media = MediaConfig(min_pixels=min(pixels, MediaConfig().min_pixels), max_pixels=pixels)
    return Embedder(backbone, media, EmbedConfig(batch_tokens=batch_tokens, progress=False)), attn


def images(n: int, px: int) -> list:
    from PIL import Image

    from omniret.items import Item

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]
    return [Item(images=[Image.new("RGB", (px, px), colours[i % 4])]) for i in range(n)]


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(embedder, device: str, batch: int, steps: int, warmup: int, image_px: int) -> dict:
    """Full-parameter steps: InfoNCE between ``batch`` text queries and their ``batch`` images."""
    import torch

    from omniret.items import Item
    from omniret.losses import build_loss

    net, encoder, config = embedder.network, embedder.encoder, embedder.backbone.model.config
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
    loss_fn = build_loss("infonce")
    queries = encoder.collate([encoder.encode(Item(text=f"a picture of shape number {i}")) for i in range(batch)])
    targets = encoder.collate([encoder.encode(item) for item in images(batch, image_px)])
    flops = 3 * (batch_flops(config, queries) + batch_flops(config, targets))
    times = []
    for step in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        out = loss_fn(net(queries), net(targets))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    net.eval()
    seconds = statistics.median(times)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"step_s": seconds, "pairs_per_s": batch / seconds, "flops_per_s": flops / seconds,
            "loss": float(out.loss.detach()), "max_memory_gib": memory}


def embed(embedder, device: str, count: int, image_px: int) -> dict:
    """images/s end to end (encode: preprocessing + model) and of the model alone (pre-encoded inputs)."""
    from omniret.models.batching import plan_batches

    items = images(count, image_px)
    embedder.encode(items[: min(8, count)])  # warm-up: kernels, allocator
    sync(device)
    start = time.perf_counter()
    embedder.encode(items)
    sync(device)
    end_to_end = time.perf_counter() - start
    encoded = embedder.prepare(items)
    cfg = embedder.embed_cfg
    batches = plan_batches([len(e) for e in encoded], cfg.batch_tokens, cfg.max_batch_size)
    config = embedder.backbone.model.config
    flops = sum(batch_flops(config, embedder.encoder.collate([encoded[i] for i in b])) for b in batches)
    sync(device)
    start = time.perf_counter()
    embedder.encode_prepared(encoded)
    sync(device)
    model_only = time.perf_counter() - start
    return {"images": count, "tokens_per_image": len(encoded[0]), "images_per_s": count / end_to_end,
            "model_images_per_s": count / model_only, "flops_per_s": flops / model_only}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--train-warmup", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=8, help="query-image pairs per training step")
    parser.add_argument("--embed-images", type=int, default=256)
    parser.add_argument("--image-px", type=int, default=448, help="square images of this side (448: 256 tokens)")
    parser.add_argument("--batch-tokens", type=int, default=65_536, help="embed.batch_tokens of the embedding run")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak, when its name is not in the built-in table")
    parser.add_argument("--size", default="2b", help=argparse.SUPPRESS)  # a tiny preset: CPU checks of the path
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print the figures, leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if not args.allow_cpu:
        require_cuda()
    import torch
    from report import snapshot, write_section  # bench/ is on sys.path when a bench script runs

    before = snapshot()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    peak = peak_flops(name, args.peak_tflops)
    dtype = torch.bfloat16
    embedder, attn = build_embedder(device, dtype, args.size, args.image_px, args.batch_tokens)
    params = sum(p.numel() for p in embedder.backbone.model.parameters())
    emb = embed(embedder, device, args.embed_images, args.image_px)
    print(emb, flush=True)
    tr = train(embedder, device, args.train_batch, args.train_steps, args.train_warmup, args.image_px)
    print(tr, flush=True)

    def mfu(flops_per_s: float) -> str:
        return f"{100 * flops_per_s / peak:.1f}%" if peak else "n/a (peak unknown: --peak-tflops)"

    rows = ["| measurement | figure |", "| --- | ---: |",
            f"| embedding, end to end (preprocessing included) | {emb['images_per_s']:.1f} images/s |",
            f"| embedding, model only | {emb['model_images_per_s']:.1f} images/s |",
            f"| embedding, model TFLOP/s | {emb['flops_per_s'] / 1e12:.1f} |",
            f"| embedding MFU | {mfu(emb['flops_per_s'])} |",
            f"| training step (batch {args.train_batch} pairs) | {tr['step_s'] * 1000:.0f} ms, "
            f"{tr['pairs_per_s']:.1f} pairs/s |",
            f"| training TFLOP/s | {tr['flops_per_s'] / 1e12:.1f} |",
            f"| training MFU | {mfu(tr['flops_per_s'])} |",
            f"| peak GPU memory allocated | {tr['max_memory_gib']:.1f} GiB |"]
    peak_text = f"peak bf16 {peak / 1e12:.0f} TFLOP/s" if peak else "bf16 peak unknown"
    body = (f"Random Qwen2-VL model of {params / 1e9:.2f}B parameters ({args.size} shapes), bf16, {attn} attention, "
            f"on {name} ({peak_text}). Images {args.image_px} px "
            f"({emb['tokens_per_image']} tokens per item with the prompt); embedding: {args.embed_images} images, "
            f"`embed.batch_tokens={args.batch_tokens}`; training: full-parameter AdamW, InfoNCE, median of "
            f"{args.train_steps} steps after {args.train_warmup} warm-up steps.\n\n" + "\n".join(rows))
    print(body, flush=True)
    if not args.no_write:
        command = "python " + shlex.join(["bench/gpu_bench.py", *(argv if argv is not None else sys.argv[1:])])
        write_section("GPU: Qwen2-VL-2B-size model, bf16", command, body, before=before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
