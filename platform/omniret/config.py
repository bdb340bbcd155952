"""Configuration: pydantic models with defaults in code, YAML files for runs, ``a.b=c`` overrides.

Every section forbids unknown keys, so a typo in a YAML file or an override is an error that names
the key instead of a silently ignored setting. The same object travels to Ray workers with
``model_dump()`` / ``model_validate()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omniret.errors import ConfigError

Family = Literal["auto", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """Which checkpoint to load and how to run it."""

    path: str | None = Field(
        None, description="Local HF checkpoint directory (Qwen2-VL, Qwen2.5-VL, Qwen3-VL). "
        "None builds (once) and uses the tiny offline model under `tiny_dir`.")
    family: Family = Field("auto", description="Model family; auto reads config.json's model_type.")
    adapter: str | None = Field(None, description="PEFT adapter directory applied on top of `path`.")
    tiny_family: Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] = "qwen2_vl"
    tiny_dir: str = ".omniret/models/tiny"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU.")
    device: str = Field("auto", description="auto: cuda if available, else cpu.")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 on CUDA when installed, else sdpa.")
    template: str = Field("qwen3_vl_embedding", description="Prompt template name (omniret.models.prompts).")
    max_length: int = Field(8192, ge=16, description="Token limit of one embedded item.")
    seed: int = 0


class MediaConfig(Section):
    """Pixel, frame and token budgets; limits that protect the process from hostile inputs."""

    min_pixels: int = Field(4 * 28 * 28, ge=1, description="Lower bound of an image's resized area.")
    max_pixels: int = Field(1280 * 28 * 28, ge=1, description="Upper bound of an image's resized area.")
    video_frames: int | None = Field(8, ge=1, description="Fixed frame count per video (None: use fps).")
    video_fps: float = Field(1.0, gt=0, description="Sampling rate when video_frames is None.")
    video_max_frames: int = Field(64, ge=1)
    video_max_pixels: int = Field(160 * 28 * 28, ge=1, description="Upper bound of one frame's area.")
    video_total_pixels: int = Field(
        8192 * 28 * 28, ge=1, description="Upper bound of all frames together; frames shrink to fit.")
    clip_seconds: float | None = Field(
        None, gt=0, description="Cut videos longer than this into clips of this length (ingest).")
    pdf_dpi: int = Field(100, ge=36, le=600)
    pdf_text_chars: int = Field(2000, ge=0, description="Characters of a page's text kept with it.")
    max_file_bytes: int = Field(200 * 2**20, ge=1, description="Files larger than this are refused.")
    max_image_pixels: int = Field(
        64 * 2**20, ge=1, description="Decoded image area above which an image is refused.")

    @model_validator(mode="after")
    def _check_order(self) -> MediaConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class EmbedConfig(Section):
    """Batching of the embedder."""

    batch_tokens: int = Field(16384, ge=1, description="Token budget of one batch (padded length x rows).")
    max_batch_size: int = Field(64, ge=1)
    dimensions: int | None = Field(None, ge=1, description="Matryoshka: keep this many leading dims.")
    progress: bool = True


class RerankConfig(Section):
    instruction: str = "Given a search query, retrieve relevant candidates that answer the query."
    max_length: int = Field(10240, ge=32)
    batch_size: int = Field(8, ge=1)


class LoraConfig(Section):
    """LoRA on every linear layer of the language model and (optionally) the vision tower."""

    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or a list of module-name suffixes (q_proj, ...).")
    include_vision: bool = Field(True, description="Also adapt the vision tower and merger.")


class OmniretConfig(Section):
    model: ModelConfig = ModelConfig()
    media: MediaConfig = MediaConfig()
    embed: EmbedConfig = EmbedConfig()
    rerank: RerankConfig = RerankConfig()
    lora: LoraConfig = LoraConfig()

    @field_validator("*", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        # An empty section in YAML (`media:`) parses as None; treat it as "all defaults".
        return {} if value is None else value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=c`` into (["a", "b"], value); the value is parsed as YAML (so 3, true, null, [1, 2])."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                schema: type[BaseModel] = OmniretConfig) -> Any:
    """Read a YAML file (or start from defaults), apply overrides, validate against ``schema``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        data = loaded or {}
    apply_overrides(data, overrides or [])
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"invalid configuration{where}:\n" + "\n".join(lines)) from exc
