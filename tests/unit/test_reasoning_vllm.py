"""reason.engine=vllm without vLLM or a GPU: the row -> chat mapping, the output -> ECR mapping, and the
clear error at start when vLLM is absent. The engine itself is never run here."""

from __future__ import annotations

import base64
import importlib.util
import json
import zlib

import pytest
from PIL import Image

from omniret.cli import main
from omniret.config import load_config
from omniret.data.schema import Side
from omniret.reasoning.templates import get_reason_template
from omniret.reasoning.vllm_engine import (
    Preprocess,
    postprocess,
    processor_config,
    sampling_params,
    to_messages,
)

_HAS_VLLM = importlib.util.find_spec("vllm") is not None
_QA = get_reason_template("qa")


def _row(side: Side, root: str | None = None, template: str = "qa") -> dict:
    t = get_reason_template(template)
    return {"key": "k1", "content_hash": "h1", "template": t.id, "template_name": t.name, "reasoner": "r@1",
            "name": "ds 0 query", "role": "query", "dataset": "ds", "side": json.dumps(side.to_dict()), "root": root}


def test_a_row_becomes_the_reasoner_chat_with_its_media(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    side = Side(text="How many red squares?", images=["a.png", png], instruction="Answer the question.")
    messages = to_messages(_row(side, root=str(tmp_path)))
    assert messages == [
        {"role": "system", "content": _QA.system},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": (tmp_path / "a.png").as_uri()}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
            {"type": "text", "text": f"{_QA.prompt}\nTask: Answer the question.\nHow many red squares?"}]},
        {"role": "assistant", "content": "<think>\n"}]


def test_sampling_params_greedy_and_seeded_per_item():
    greedy = load_config(None, ["reason.max_new_tokens=32"]).reason
    assert sampling_params(greedy, "k1") == {"max_tokens": 32, "temperature": 0.0}
    sampled = load_config(None, ["reason.do_sample=true", "reason.temperature=0.5", "reason.top_p=0.9",
                                 "reason.seed=7"]).reason
    assert sampling_params(sampled, "k1") == {"max_tokens": 256, "temperature": 0.5, "top_p": 0.9,
                                              "seed": zlib.crc32(b"7/k1")}


def test_an_item_without_a_vllm_form_is_its_own_error(tmp_path):
    (tmp_path / "frames").mkdir()
    row = _row(Side(text="clip"), root=str(tmp_path))
    row["side"] = json.dumps({"text": "clip", "video": {"path": "frames"}})
    cfg = load_config(None, [])
    out = Preprocess(cfg.model_dump())(row)
    assert "frame folders" in out["prep_error"] and out["sampling_params"]["max_tokens"] == 1
    result = postprocess({**out, "generated_text": "x", "num_generated_tokens": 1}, 256)
    assert (result["ok"], result["name"], result["error"], result["text"]) == (False, "ds 0 query",
                                                                             out["prep_error"], None)


def _engine_out(text: str, tokens: int, **extra) -> dict:
    return {**_row(Side(text="q")), "generated_text": text, "num_generated_tokens": tokens, **extra}


def test_output_with_think_closed_becomes_the_ecr():
    r = postprocess(_engine_out("two red squares\n</think>\nTwo red squares.", 12), 64)
    assert r == {**{k: v for k, v in _row(Side(text="q")).items() if k not in ("side", "root")},
                      "ok": True, "error": "", "text": "<think>\ntwo red squares\n</think>\nTwo red squares.",
                      "think": "two red squares", "summary": "Two red squares.", "closed": True,
                      "truncated": False, "new_tokens": 12}


def test_output_cut_at_the_limit_is_kept_and_marked_truncated():
    r = postprocess(_engine_out("one square, then another", 64), 64)
    assert (r["ok"], r["think"], r["summary"], r["closed"], r["truncated"], r["new_tokens"]) == (
        True, "one square, then another", "", False, True, 64)
    short = postprocess(_engine_out("stopped early", 5), 64)  # stopped by itself: unclosed, not truncated
    assert (short["closed"], short["truncated"]) == (False, False)


def test_an_engine_failure_is_an_error_row():
    r = postprocess(_engine_out("", 0, __inference_error__="CUDA out of memory"), 64)
    assert (r["ok"], r["error"], r["summary"]) == (False, "CUDA out of memory", None)


def test_processor_config_from_reason_settings(tmp_path):
    (tmp_path / "img").mkdir()
    rows = [_row(Side(images=["img/a.png"])), _row(Side(images=["img/b.png"]))]
    cfg = load_config(None, ["reason.model.path=/ckpt/qwen", "reason.batch_rows=32", "reason.actors=2",
                             "reason.num_gpus=2", "reason.max_length=1024", "reason.max_new_tokens=128"])
    kw = processor_config(cfg, rows, str(tmp_path))
    assert (kw["model_source"], kw["batch_size"], kw["concurrency"]) == ("/ckpt/qwen", 32, 2)
    assert kw["engine_kwargs"] == {"tensor_parallel_size": 2, "max_model_len": 1152}
    assert kw["prepare_multimodal_stage"]["model_config_kwargs"] == {"allowed_local_media_path": str(tmp_path / "img")}
    # Ray's own config class (importable without vLLM, extra keys forbidden) accepts them as they are.
    from ray.data.llm import vLLMEngineProcessorConfig

    ray_cfg = vLLMEngineProcessorConfig(**kw)
    assert (ray_cfg.batch_size, ray_cfg.concurrency, ray_cfg.should_continue_on_error) == (32, 2, True)


@pytest.mark.skipif(_HAS_VLLM, reason="vLLM is installed: the missing-vLLM error cannot happen")
def test_without_vllm_the_job_stops_at_start_with_the_install_command(tmp_path, capsys):
    code = main(["reason", "--pairs", str(tmp_path / "none.jsonl"), "reason.engine=vllm",
                 f"reason.out={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and "reason.engine=vllm" in err and 'pip install "ray[data,llm]"' in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
