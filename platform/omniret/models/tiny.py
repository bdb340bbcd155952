"""Build a tiny, randomly initialised Qwen-VL checkpoint offline (no hub access).

The result is an ordinary HF checkpoint directory: config.json + model.safetensors, a byte-level
BPE tokenizer with the Qwen special tokens and chat template, and preprocessor_config.json. Every
other component loads it exactly as it loads a real Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint;
only the sizes differ. Sizes come from :data:`PRESETS`: ``tiny`` (hidden 64, 2 layers: tests run in
seconds on a CPU) and ``small`` (hidden 256, 4 layers, a 4-block vision tower: the demo's model,
trained in minutes on a CPU); ``30m`` and ``150m`` (about 30M and 150M parameters: the size axis of
the benchmarks).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from omniret.models.families import FAMILIES
from omniret.models.vision import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, VisionSpec

# Qwen's special tokens in Qwen's order; the config's token ids are looked up from the tokenizer.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Qwen2's pre-tokenizer split: keeps newlines, digits and punctuation apart as the real tokenizer does.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_WORDS = (
    "a an the of in on at to and or with without is are find me represent given image images video "
    "videos document page pages text query queries caption summarize describe word one user input "
    "judge whether meets requirements based provided answer can only yes no instruct search retrieve "
    "relevant candidates that answers understand content everyday snippet corresponds matches which "
    "shape colour color red green blue yellow purple orange black white circle square triangle star "
    "left right up down moving moves top bottom middle small large big count two three four five "
    "object objects photo picture scene frame clip report chapter section table figure question what "
    "where how many is there you are helpful assistant system seconds null"
).split()


def _corpus(seed: int) -> list[str]:
    """A small synthetic corpus: enough for BPE to learn whole words, prompts and numbers."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    lines += [f"<{t / 2:.1f} seconds>" for t in range(200)]
    lines += [" ".join(_WORDS)] * 20 + ["yes", "no", " yes", " no", "\n", ".\n", ":\n"] * 50
    return lines


def build_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen's pre-tokenizer, special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 32768
    return fast


@dataclass(frozen=True)
class Preset:
    """Sizes of a built model: the language model and the vision tower."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(hidden=64, layers=2, heads=4, kv_heads=2, vision_hidden=32, vision_depth=2, vision_heads=2),
    "mid": Preset(hidden=128, layers=4, heads=4, kv_heads=2, vision_hidden=64, vision_depth=2, vision_heads=2),
    "small": Preset(hidden=256, layers=4, heads=4, kv_heads=2, vision_hidden=128, vision_depth=4, vision_heads=4),
    # Random models of about 30M and 150M parameters (qwen2_vl): the size axis of the benchmarks.
    "30m": Preset(hidden=512, layers=8, heads=8, kv_heads=4, vision_hidden=384, vision_depth=8, vision_heads=6),
    "150m": Preset(hidden=1024, layers=12, heads=16, kv_heads=8, vision_hidden=512, vision_depth=12,
                   vision_heads=8),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def tiny_config(family: str, tokenizer: PreTrainedTokenizerFast, size: str = "tiny"):
    """A config of the family at preset ``size`` whose special-token ids match ``tokenizer``."""
    ids = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>")
           for name in ("image_pad", "video_pad", "vision_start", "vision_end", "endoftext", "im_end")}
    p = preset(size)
    hidden, heads, kv_heads, layers = p.hidden, p.heads, p.kv_heads, p.layers
    head_dim = hidden // heads
    # mrope splits head_dim/2 rotary frequencies across (temporal, height, width).
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=32768, rms_norm_eps=1e-6, bos_token_id=ids["endoftext"],
        eos_token_id=ids["im_end"], pad_token_id=ids["endoftext"],
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope},
    )
    vh, depth = p.vision_hidden, p.vision_depth
    vision: dict = dict(depth=depth, num_heads=p.vision_heads, in_channels=3, spatial_merge_size=2,
                        temporal_patch_size=2)
    if family == "qwen2_vl":
        vision.update(embed_dim=vh, hidden_size=hidden, mlp_ratio=2, patch_size=14)
    elif family == "qwen2_5_vl":
        vision.update(hidden_size=vh, intermediate_size=2 * vh, out_hidden_size=hidden, patch_size=14,
                      window_size=56, fullatt_block_indexes=[depth - 1], tokens_per_second=2)
    elif family == "qwen3_vl":
        text.update(head_dim=head_dim)
        text["rope_parameters"].update(mrope_interleaved=True, rope_theta=5_000_000.0)
        vision.update(hidden_size=vh, intermediate_size=2 * vh, out_hidden_size=hidden, patch_size=16,
                      num_position_embeddings=64, deepstack_visual_indexes=[depth - 1])
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    config_cls = FAMILIES[family].config_class()
    return config_cls(
        text_config=text, vision_config=vision, image_token_id=ids["image_pad"],
        video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"], tie_word_embeddings=False,
    )


def init_tiny_model(family: str = "qwen2_vl", seed: int = 0, size: str = "tiny"):
    """The model of preset ``size`` and its tokenizer in memory; the same seed gives the same weights."""
    tokenizer = build_tokenizer(seed=seed)
    config = tiny_config(family, tokenizer, size)
    torch.manual_seed(seed)
    return FAMILIES[family].model_class()(config), tokenizer


def build_tiny_model(out_dir: str | Path, family: str = "qwen2_vl", seed: int = 0,
                     min_pixels: int = 4 * 28 * 28, max_pixels: int = 256 * 28 * 28, size: str = "tiny") -> Path:
    """Create and save a random checkpoint of preset ``size``; returns its directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = init_tiny_model(family, seed, size)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    patch = 16 if family == "qwen3_vl" else 14
    stats = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if family == "qwen3_vl" else (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    spec = VisionSpec(patch_size=patch, image_mean=stats[0], image_std=stats[1])
    processor = FAMILIES[family].processor_name
    (out / "preprocessor_config.json").write_text(
        json.dumps(spec.to_json(min_pixels, max_pixels, processor), indent=2))
    (out / "omniret_tiny.json").write_text(json.dumps(_marker(family, seed, size)))
    return out


def _marker(family: str, seed: int, size: str) -> dict:
    # The tiny preset keeps its original marker, so folders built before presets existed are reused.
    return {"family": family, "seed": seed} if size == "tiny" else {"family": family, "seed": seed, "size": size}


def ensure_tiny_model(out_dir: str | Path, family: str = "qwen2_vl", seed: int = 0, size: str = "tiny") -> Path:
    """Build the model once; later calls reuse the directory if it matches family, seed and preset."""
    out = Path(out_dir)
    marker = out / "omniret_tiny.json"
    if marker.is_file() and json.loads(marker.read_text()) == _marker(family, seed, size):
        return out
    return build_tiny_model(out, family=family, seed=seed, size=size)


