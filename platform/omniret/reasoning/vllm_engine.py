"""The ECR job's optional vLLM engine: ``reason.engine=vllm`` runs the reasoner through ``ray.data.llm``.

Same work rows, same store, same record keys (content hash + template id + reasoner id) as the
transformers engine, so either engine resumes the other's output. Only the generation differs:
each row becomes an OpenAI-style chat (the reasoning template's system turn; the item's media and
the template prompt + task instruction + text as the user turn; the template's assistant prefix,
``<think>``, as an assistant turn that vLLM continues), and the engine's output is split by
:func:`~omniret.reasoning.ecr.parse_ecr`.

Differences from the transformers engine, by design or by what the engine reports:

- Media reach vLLM as URLs (``file://`` for image and video files, ``data:`` for image bytes and
  rendered PDF pages) and vLLM resizes them with the model's own processor, not ``media.*``.
  A frame folder or a clip with start/end bounds has no vLLM form here: that item is an error of
  its own (``reason.engine=transformers`` reads them).
- ``ray.data.llm`` reports no finish reason, so "hit the limit" is
  ``num_generated_tokens >= reason.max_new_tokens``; that count includes the stop token.
- Sampled decoding is seeded per item (``reason.seed`` and the item's key), not per batch.
- The chat template of the checkpoint renders the prompt; it applies the assistant prefix
  without its trailing newline (``continue_final_message`` strips it).

``ray.data.llm`` needs vLLM (``pip install "ray[data,llm]"``) and a GPU; nothing here imports either
until the job runs, and :func:`require_vllm` fails at start with that install command.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omniret.config import MediaConfig, OmniretConfig, ReasonConfig
from omniret.data.schema import Side
from omniret.errors import ConfigError, MediaError
from omniret.reasoning.ecr import parse_ecr
from omniret.reasoning.templates import get_reason_template

INSTALL = 'pip install "ray[data,llm]"'
_MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif", b"RIFF": "image/webp"}


def require_vllm() -> None:
    """Raise a ConfigError naming ``reason.engine`` and the install command unless vLLM is importable."""
    missing = [m for m in ("vllm", "ray.data.llm") if _find(m) is None]
    if missing:
        raise ConfigError(f"reason.engine=vllm needs {' and '.join(missing)}, which is not installed; "
                          f"install it with `{INSTALL}` on a GPU machine, or set reason.engine=transformers")


def _find(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except ImportError:  # a parent package that is missing or fails to import
        return None


def sampling_params(cfg: ReasonConfig, key: str) -> dict[str, Any]:
    """vLLM sampling parameters of one item: greedy, or sampled and seeded from ``reason.seed`` + its key."""
    if not cfg.do_sample:
        return {"max_tokens": cfg.max_new_tokens, "temperature": 0.0}
    return {"max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "seed": zlib.crc32(f"{cfg.seed}/{key}".encode())}


def _data_url(data: bytes, mime: str | None = None) -> str:
    mime = mime or next((m for head, m in _MIME.items() if data.startswith(head)), "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _visuals(side: Side, root: str | None, name: str, media: MediaConfig) -> tuple[list[dict[str, Any]], str]:
    """(content parts, page text): video, then images, then the page, in the order Qwen-VL's encoder uses."""
    item = side.to_item(root=root, name=name)
    parts: list[dict[str, Any]] = []
    if item.video is not None:
        video = item.video
        if Path(video.path).is_dir() or video.start is not None or video.end is not None:
            raise MediaError(name, "reason.engine=vllm passes whole video files only, not frame folders or "
                             "clips with start/end; use reason.engine=transformers for this item")
        parts.append({"type": "video_url", "video_url": {"url": Path(video.path).absolute().as_uri()}})
    for image in item.images:
        url = _data_url(image) if isinstance(image, bytes) else Path(image).absolute().as_uri()
        parts.append({"type": "image_url", "image_url": {"url": url}})
    page_text = ""
    if item.page is not None:
        import io

        from omniret.media.pdf import render_page

        page = render_page(item.page.path, item.page.page, dpi=media.pdf_dpi, text_chars=media.pdf_text_chars,
                           max_bytes=media.max_file_bytes, name=f"{name} page {item.page.page}")
        buf = io.BytesIO()
        page.image.save(buf, format="PNG")
        parts.append({"type": "image_url", "image_url": {"url": _data_url(buf.getvalue(), "image/png")}})
        page_text = page.text
    return parts, page_text


def to_messages(row: dict[str, Any], media: MediaConfig | None = None) -> list[dict[str, Any]]:
    """The chat of one work row (see the module docstring); MediaError if its media have no vLLM form."""
    template = get_reason_template(row["template_name"])
    side = Side.from_dict(json.loads(row["side"]), where=row["name"])
    parts, page_text = _visuals(side, row.get("root"), row["name"], media or MediaConfig())
    text = "\n".join(t for t in (side.text or "", page_text) if t)
    # The same body as the transformers prompt: template prompt (+ task instruction), newline, item text.
    body = f"{template.instruction(side.instruction)}\n{text}"
    return [{"role": "system", "content": template.system},
            {"role": "user", "content": [*parts, {"type": "text", "text": body}]},
            {"role": "assistant", "content": template.assistant_prefix}]


class Preprocess:
    """Work row -> the row ``ray.data.llm`` reads (``messages``, ``sampling_params``) plus the row itself.

    An item whose media have no vLLM form still goes through, as a one-token text-only request, with
    ``prep_error`` set, so that it reaches the error table by name instead of failing the dataset.
    """

    def __init__(self, config: dict[str, Any]):
        cfg = OmniretConfig.model_validate(config)
        self.reason, self.media = cfg.reason, cfg.media

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            messages, error = to_messages(row, self.media), ""
            params = sampling_params(self.reason, row["key"])
        except (MediaError, ValueError, KeyError) as exc:
            error = exc.reason if isinstance(exc, MediaError) else f"unreadable side: {exc}"
            messages = [{"role": "user", "content": [{"type": "text", "text": "-"}]}]
            params = {"max_tokens": 1, "temperature": 0.0}
        return {**row, "messages": messages, "sampling_params": params, "prep_error": error}


def postprocess(row: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    """Engine output row -> the job's result row (the work row's fields, ``ok``/``error`` and the ECR)."""
    keep = {k: row[k] for k in ("key", "content_hash", "template", "template_name", "reasoner", "name", "role",
                                "dataset")}
    error = row.get("prep_error") or row.get("__inference_error__") or ""
    if error:
        return {**keep, "ok": False, "error": str(error), "text": None, "think": None, "summary": None,
                "closed": None, "truncated": None, "new_tokens": None}
    template = get_reason_template(row["template_name"])
    tokens = int(row["num_generated_tokens"])
    ecr = parse_ecr(template.assistant_prefix, row["generated_text"], hit_limit=tokens >= max_new_tokens,
                    new_tokens=tokens)
    return {**keep, "ok": True, "error": "", **ecr.to_dict()}


class Postprocess:
    def __init__(self, max_new_tokens: int):
        self.max_new_tokens = max_new_tokens

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return postprocess(row, self.max_new_tokens)


def media_root(rows: list[dict[str, Any]], root: str) -> str:
    """The deepest folder holding every local media file of the rows: vLLM reads ``file://`` URLs below it only."""
    paths = [os.path.join(root, p) for row in rows for p in Side.from_dict(json.loads(row["side"])).media_paths()]
    if not paths:
        return root
    common = os.path.commonpath([os.path.abspath(p) for p in paths])
    return common if os.path.isdir(common) else os.path.dirname(common)


def processor_config(cfg: OmniretConfig, rows: list[dict[str, Any]], root: str) -> dict[str, Any]:
    """Keyword arguments of ``vLLMEngineProcessorConfig`` from ``reason.*`` (plain data, no Ray import)."""
    r = cfg.reason
    if r.model.adapter:
        raise ConfigError("reason.engine=vllm loads a full checkpoint only; merge reason.model.adapter first "
                          "(omniret merge) or use reason.engine=transformers")
    return {
        "model_source": str(r.model.path),
        "batch_size": r.batch_rows,
        "concurrency": r.actors,
        "engine_kwargs": {"tensor_parallel_size": max(1, int(r.num_gpus)),
                          "max_model_len": r.max_length + r.max_new_tokens},
        "prepare_multimodal_stage": {"enabled": True,
                                     "model_config_kwargs": {"allowed_local_media_path": media_root(rows, root)}},
        "chat_template_stage": True, "tokenize_stage": True, "detokenize_stage": True,
        "should_continue_on_error": True,  # a failing item gets __inference_error__; the job goes on
    }


def stream_vllm(cfg: OmniretConfig, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Result batches (columns) of the job's rows, generated by vLLM through ``ray.data.llm``."""
    require_vllm()
    import ray.data
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from omniret.cluster import ensure_ray

    ensure_ray(cfg.reason.ray_num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    root = os.getcwd()
    rows = [{**row, "root": root} for row in rows]
    processor = build_processor(vLLMEngineProcessorConfig(**processor_config(cfg, rows, root)),
                                preprocess=Preprocess(cfg.model_dump()))
    # Our postprocess runs after the processor's, which hands rows that failed in the engine back
    # unprocessed; mapping every row here gives one schema and turns those into error rows.
    ds = processor(ray.data.from_items(rows)).map(Postprocess(cfg.reason.max_new_tokens))
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")
