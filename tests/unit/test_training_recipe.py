"""Recipes (stages in one file or several), path rebasing for `ray job submit`, stage chaining with mining,
the ablation rows, the run log and its plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from omniret.config import SyntheticConfig
from omniret.data.readers import read_pairs
from omniret.data.synthetic import generate_benchmark
from omniret.errors import ConfigError
from omniret.training.ablation import ROWS, Cell, markdown_table, row_configs, summarize
from omniret.training.logbook import CsvLog, read_events, read_rows, record_event
from omniret.training.plot import plot_run
from omniret.training.recipe import load_stages, run_stages

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "ray_jobs" / "configs"


def test_quickstart_recipe_follows_qwen3_vl_embedding_stages():
    stage1, stage2, rerank, distill, merged = load_stages([CONFIGS / "quickstart.yaml"], ["train.output_dir=/runs"])
    assert (stage1.train.name, stage2.train.name) == ("quickstart-stage1", "quickstart-stage2")
    assert not stage1.train.instructions and stage1.train.negatives == 0
    assert stage2.train.instructions and stage2.train.negatives > 0 and stage2.mine.before_training
    assert stage1.train.mode == stage2.train.mode == "full" and stage1.model.path is None
    assert stage1.train.output_dir == stage2.train.output_dir == "/runs"  # overrides reach every stage
    assert rerank.train.objective == "rerank" and rerank.eval.rerank_top_k > 0 and rerank.mine.before_training
    assert stage1.train.objective == stage2.train.objective == "contrastive" and not stage2.eval.rerank_top_k
    # distillation: the reranker scores the pairs it trained on (same negatives), InfoNCE + weighted distill
    assert distill.score.before_training and distill.mine.before_training
    assert distill.mine.out == rerank.mine.out == ".omniret/runs/quickstart-stage2/mined"  # stage 2's, reused
    assert distill.loss.name == "distill" and distill.loss.options["base"] == "infonce"
    assert distill.loss.options["distill_weight"] > 0 and distill.train.negatives > 0
    # the merge stage merges the distilled embedder with stage 2's; both are evaluated with the reranker
    assert merged.train.objective == "merge" and merged.merge.method in ("linear", "ties")
    assert distill.eval.rerank_top_k == merged.eval.rerank_top_k == rerank.eval.rerank_top_k


@pytest.mark.slow
def test_seed16_text_stage_loads_and_trains_two_steps_on_its_text_pairs(tiny_dirs, tmp_path):
    (stage,) = load_stages([CONFIGS / "seed16_text.yaml"], [
        f"model.path={tiny_dirs['qwen2_vl']}", f"train.output_dir={tmp_path}", "train.max_steps=2",
        "train.torch_threads=1"], root=ROOT)
    assert (stage.train.name, stage.train.mode, stage.loss.name) == ("seed16-text", "lora", "infonce")
    assert not stage.lora.include_vision and stage.data.train == [str(ROOT / "ray_jobs/data/text_pairs.jsonl")]
    (result,) = run_stages([stage], local=True)
    assert (result.final / "config.json").is_file()
    rows = [line.split(",") for line in (result.run_dir / "metrics.csv").read_text().splitlines()]
    steps = [r[rows[0].index("step")] for r in rows[1:] if r[rows[0].index("loss")]]
    assert steps[-1] == "2"


def test_relative_reranker_paths_are_rebased_on_root(tmp_path):
    (stage,) = load_stages([CONFIGS / "stage1.yaml"], ["rerank.model.path=models/rr", "rerank.model.adapter=/a"],
                           root=tmp_path)
    assert stage.rerank.model.path == str(tmp_path / "models/rr") and stage.rerank.model.adapter == "/a"


def test_lora_stage_files_chain_by_init_from():
    stage1, stage2 = load_stages([CONFIGS / "stage1.yaml", CONFIGS / "stage2.yaml"])
    assert stage1.train.mode == stage2.train.mode == "lora"
    assert not stage1.train.instructions and stage2.train.instructions and stage2.train.negatives > 0
    assert stage2.train.init_from.endswith(stage1.train.name)
    # stage 1 is plain InfoNCE; RzenEmbed's FN mask, hardness weighting and task temperatures are stage 2's
    assert (stage1.loss.name, stage1.loss.options, stage1.loss.temperature) == ("infonce", {}, 0.02)
    assert stage2.loss.name == "rzen" and stage2.loss.options["task_temperature"] is True


def test_relative_paths_are_rebased_on_root(tmp_path):
    (stage,) = load_stages([CONFIGS / "stage1.yaml"], ["model.path=models/base", "eval.root=/abs/eval"],
                           root=tmp_path)
    assert stage.model.path == str(tmp_path / "models/base") and stage.eval.root == "/abs/eval"
    assert all(Path(p).is_relative_to(tmp_path) for p in stage.data.train)
    assert Path(stage.train.output_dir).is_relative_to(tmp_path)


def test_bad_recipes_are_reported_by_name(tmp_path):
    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text(yaml.safe_dump({"stages": [{"train": {"name": "a"}}, {"train": {"name": "a"}}]}))
    with pytest.raises(ConfigError, match=r"distinct train\.name"):
        load_stages([duplicate])
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"stages": [{"train": {"name": "a", "learning_rate": 1}}]}))
    with pytest.raises(ConfigError, match=r"(?s)stage 1.*train.learning_rate"):
        load_stages([typo])


def tiny_recipe(tmp_path: Path, model: Path, stages: list[dict], per_task: int, **train) -> Path:
    """A recipe file over a generated two-task benchmark: 2 steps of batch 4 per stage, no evaluation."""
    bench = tmp_path / "bench"
    generate_benchmark(bench, SyntheticConfig(train_per_task=per_task, eval_queries=2,
                                              tasks=["syn_cls_color", "syn_t2i"]))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(model)}, "data": {"train": [str(bench / "train")]}, "eval": {"root": str(bench / "eval")},
        "train": {"output_dir": str(tmp_path / "runs"), "mode": "full", "batch_size": 4, "max_steps": 2,
                  "checkpoint_every": 0, "eval_at_end": False, "torch_threads": 1, **train},
        "stages": stages}))
    return recipe


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.slow
def test_stages_chain_and_mine_between(tiny_dirs, tmp_path):
    recipe = tiny_recipe(tmp_path, tiny_dirs["qwen2_vl"], per_task=8, stages=[
        {"train": {"name": "one", "instructions": False}},
        {"train": {"name": "two", "negatives": 1}, "mine": {"before_training": True, "top_k": 1, "skip_top": 0}},
        {"train": {"name": "merged", "objective": "merge", "eval_at_end": True}}])
    first, second, merged = run_stages(load_stages([recipe]), local=True)
    resolved = yaml.safe_load((second.run_dir / "config.yaml").read_text())
    assert resolved["model"]["path"] == str(first.final)
    assert resolved["data"]["train"] == [str(second.run_dir / "mined")]
    mined = read_pairs(second.run_dir / "mined")
    assert len(mined.pairs) == 16 and all(len(p.negatives) == 1 for p in mined.pairs)
    assert (second.final / "config.json").is_file()
    # the merge stage averages the two stages' outputs (linear, equal weights) and evaluates the result
    a, b, m = weights(first.final), weights(second.final), weights(merged.final)
    assert m.keys() == a.keys() and all(torch.allclose(m[k], (a[k] + b[k]) / 2, atol=1e-6) for k in m)
    assert (merged.run_dir / "eval" / "final" / "report.json").is_file() and "Overall" in merged.metrics
    again = run_stages(load_stages([recipe]), local=True)  # finished stages are not trained again
    assert [r.skipped for r in again] == [True, True, True]


@pytest.mark.slow
def test_reranker_distill_and_merge_stages_chain_in_order(tiny_dirs, tmp_path):
    """contrastive -> reranker -> distillation scored by that reranker -> merge of the two embedder stages."""
    from omniret.config import OmniretConfig
    from omniret.models.reranker import Reranker
    from omniret.training.teacher_scores import pair_logits

    recipe = tiny_recipe(tmp_path, tiny_dirs["qwen2_vl"], per_task=4, negatives=1, stages=[
        {"train": {"name": "one", "negatives": 0}},
        {"train": {"name": "rr", "objective": "rerank", "lr": 1.0e-2}, "rerank": {"init_from_embedder": True}},
        {"train": {"name": "distill"}, "score": {"before_training": True},
         "loss": {"name": "distill", "options": {"base": "infonce", "distill_weight": 0.5}}},
        {"train": {"name": "merged", "objective": "merge"}}])
    one, rr, distill, merged = run_stages(load_stages([recipe]), local=True)
    resolved = yaml.safe_load((distill.run_dir / "config.yaml").read_text())
    # the distillation stage starts from the embedder (not the reranker) and trains on the scored pairs
    assert resolved["model"]["path"] == str(one.final)
    assert resolved["rerank"]["model"]["path"] == str(rr.final)
    assert resolved["data"]["train"] == [str(distill.run_dir / "scored")]
    scored = read_pairs(distill.run_dir / "scored").pairs
    assert len(scored) == 8 and all(len(p.teacher_scores) == 1 + len(p.negatives) for p in scored)
    # the scores are the trained reranker's logits, not the embedder's head
    reranker = Reranker.from_config(OmniretConfig.model_validate(resolved))
    assert pair_logits(reranker, scored[0]) == pytest.approx(scored[0].teacher_scores, abs=1e-4)
    a, b, m = weights(one.final), weights(distill.final), weights(merged.final)
    assert not all(torch.equal(a[k], b[k]) for k in a)  # distillation trained the embedder
    assert all(torch.allclose(m[k], (a[k] + b[k]) / 2, atol=1e-6) for k in m)


def test_ablation_rows_are_cumulative():
    (template,) = load_stages([CONFIGS / "ablation.yaml"])[-1:]
    rows = dict(row_configs(template))
    assert list(rows) == [label for label, _ in ROWS]
    plain, last = rows["InfoNCE"], rows["+ resampling"]
    assert plain.loss.name == "rzen" and plain.loss.options["alpha"] == 0 and plain.loss.options["fn_threshold"] is None
    assert rows["+ hardness weighting"].loss.options["alpha"] == 9 and \
        rows["+ hardness weighting"].loss.options["fn_threshold"] is None
    assert last.loss.options == {"alpha": 9.0, "fn_threshold": 0.95, "task_temperature": True}
    assert last.model.template == "rzen_embed_paper" and rows["+ task temperature"].model.template == "rzen_embed"
    assert last.data.weights["image_retrieval"] == 2 and not rows["+ system prompt"].data.weights


def test_ablation_table_gives_mean_spread_and_delta():
    cells = [Cell("A", 0, {"Overall": 10.0}), Cell("A", 1, {"Overall": 12.0}), Cell("B", 0, {"Overall": 15.0}),
             Cell("B", 1, {"Overall": 15.0})]
    summary = summarize(cells)
    assert summary[0]["Overall"] == 11.0 and summary[0]["Overall_sd"] == pytest.approx(2 ** 0.5)
    table = markdown_table(summary)
    assert "| A | 2 | n/a | n/a | n/a | 11.0 ± 1.4 |  |" in table
    assert "| B | 2 | n/a | n/a | n/a | 15.0 ± 0.0 | +4.0 |" in table


def test_logbook_keeps_the_last_row_per_step_and_plot_draws_it(tmp_path):
    log = CsvLog(tmp_path / "metrics.csv")
    for step, loss in [(1, 3.0), (2, 2.5), (3, 2.0), (2, 2.4), (3, 1.9), (4, 1.5)]:  # 2-3 redone after a resume
        log.write({"step": step, "loss": loss, "group": "g"})
    CsvLog(tmp_path / "metrics.csv").write({"step": 5, "loss": 1.0, "extra": 1})  # header kept from the file
    rows = read_rows(tmp_path / "metrics.csv")
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "3"), ("2", "2.4"), ("3", "1.9"), ("4", "1.5"), ("5", "1")]
    CsvLog(tmp_path / "eval.csv").write({"step": 4, "Overall": 30.0, "Image": 25.0})
    record_event(tmp_path, "start", step=0)
    assert read_events(tmp_path)[0]["event"] == "start"
    png = plot_run(tmp_path)
    image = Image.open(png)
    assert image.size == (900, 600)
    # the loss curve was drawn: its colour appears in the top panel
    assert (30, 80, 170) in {image.getpixel((x, y)) for x in range(60, 880, 3) for y in range(20, 260, 3)}
    assert json.loads(json.dumps(read_rows(tmp_path / "eval.csv")))[0]["Overall"] == "30"


def test_stage_model_finds_a_previous_stage_output(tmp_path):
    from omniret.config import load_config
    from omniret.training.trainer import resolve, stage_model

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "omniret_checkpoint.json").write_text(json.dumps({"mode": "full", "base": "/b"}))
    assert stage_model(run) == [f"model.path={run / 'final'}"]
    lora = tmp_path / "run2" / "checkpoint_000010"
    lora.mkdir(parents=True)
    (lora / "omniret_checkpoint.json").write_text(json.dumps({"mode": "lora", "base": "/models/base"}))
    assert stage_model(lora) == ["model.path=/models/base", f"model.adapter={lora}"]
    plain = tmp_path / "hf"
    plain.mkdir()
    assert stage_model(plain) == [f"model.path={plain}", "model.adapter=null"]
    with pytest.raises(ConfigError, match="not a run folder"):
        stage_model(tmp_path / "missing")
    with pytest.raises(ConfigError, match="full checkpoint"):
        resolve(load_config(None, [f"train.init_from={lora}", "train.mode=lora"]))
    with pytest.raises(ConfigError, match="batch_size"):
        resolve(load_config(None, ["train.workers=4", "train.batch_size=2", f"model.path={plain}"]))
