"""UME-R1 SFT (train.objective=ume_sft): the four-term loss against a float64 reference, the next-token loss
over the CoT target only, GradCache's gradients equal the plain step's, CoT targets from teacher traces,
and a few worker steps lower the loss and checkpoint a model that has the embedding tokens."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omniret.config import SyntheticConfig, load_config
from omniret.data.mixing import load_mixture
from omniret.data.schema import Pair, Side
from omniret.models.backbone import forward_hidden, load_backbone
from omniret.models.gen_tokens import GEN_EMB, add_embedding_tokens
from omniret.models.generative import GenerativeEmbedder, UmeNetwork, has_embedding_tokens, pad_completions
from omniret.reasoning.attach import attach_to_pairs
from omniret.training.context import LocalContext
from omniret.training.ume_sft import UmeSftStep, cot_target, encode_ume, target_ids


def _clip64(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    a, b = F.normalize(a.double(), dim=-1), F.normalize(b.double(), dim=-1)
    logits = a @ b.T / tau
    labels = torch.arange(len(a))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_loss_is_two_symmetric_infonce_terms_plus_two_token_means_float64():
    from omniret.losses.ume_sft import UmeSftLoss

    torch.manual_seed(0)
    leaves = [torch.randn(4, 8, requires_grad=True) for _ in range(4)]
    sums = [torch.tensor(7.5, requires_grad=True), torch.tensor(3.0, requires_grad=True)]
    out = UmeSftLoss(0.02)(*leaves, (sums[0], torch.tensor(5.0)), (sums[1], torch.tensor(2.0)))
    out.loss.backward()
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    ref_sums = [s.detach().double().requires_grad_() for s in sums]
    dq, dt, gq, gt = ref_leaves
    ref = _clip64(gq, gt, 0.02) + _clip64(dq, dt, 0.02) + ref_sums[0] / 5 + ref_sums[1] / 2
    ref.backward()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for got, want in zip(leaves + sums, ref_leaves + ref_sums, strict=True):
        np.testing.assert_allclose(got.grad.numpy(), want.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert out.metrics["ntp_query"] == pytest.approx(1.5) and out.metrics["ntp_target"] == pytest.approx(1.5)


def test_cot_target_from_teacher_traces():
    assert cot_target("<think>The text says: a red circle.</think> a red circle") == \
        "<think>The text says: a red circle.</think><answer>a red circle</answer>"
    assert cot_target("<think>cut off before the end") == "<think>cut off before the end</think><answer></answer>"


@pytest.fixture(scope="module")
def view(make_config):
    backbone = load_backbone(make_config("qwen2_vl").model)
    add_embedding_tokens(backbone.model, backbone.tokenizer, backbone.family.name)
    return GenerativeEmbedder(backbone)


def test_target_keeps_the_answer_and_tokens_when_cut_and_cannot_forge_gen_emb(view):
    trace = "<think>" + "red " * 200 + "</think> a red circle " + GEN_EMB
    ids = target_ids(view, trace, 32)
    assert len(ids) <= 32 and ids[-2:] == [view.gen_id, view.im_end_id]
    assert ids.count(view.gen_id) == 1  # the trace's own "<gen_emb>" text stays plain text
    assert view.backbone.tokenizer.decode(ids[:-2]).endswith("</think><answer>a red circle <gen_emb></answer>")


def test_next_token_loss_sums_the_cot_target_tokens_only(view):
    net = UmeNetwork(view.model, view)
    prompts = view.prepare(["a red circle", "two blue squares moving left in the video"])
    cots = [target_ids(view, "<think>red</think> circle", 64), target_ids(view, "<think>two blue</think> squares", 64)]
    batch, length, mask = view.completion_batch(view.collate(prompts), *pad_completions(cots, view.pad_id))
    with torch.no_grad():
        disc, gen, found, total, count = net(batch, length, mask)
        hidden = forward_hidden(view.model, batch).double()
    assert found.all() and count.item() == sum(len(c) for c in cots)
    weight = view.model.lm_head.weight.detach().double()
    ref = 0.0
    for row, cot in enumerate(cots):  # by hand: the state before each target token predicts it
        for j, token in enumerate(cot):
            logits = hidden[row, length - 1 + j] @ weight.T
            ref += float(torch.logsumexp(logits, 0) - logits[token])
    assert total.item() == pytest.approx(ref, rel=1e-4)
    # the read-outs are those of the view (disc at the prompt's <disc_emb>, gen at the target's <gen_emb>)
    with torch.no_grad():
        np.testing.assert_allclose(disc.numpy(), view.disc_forward(view.collate(prompts))[0].numpy(), atol=2e-5)
    np.testing.assert_allclose(gen.numpy(), view.embed_completions(["a red circle", "two blue squares moving left in "
                                                                   "the video"], cots)[0], atol=2e-5)


def _hand_pairs(n: int = 4) -> list[Pair]:
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "star", "triangle"]
    return [Pair(Side(text=f"find the {colours[i]} {shapes[i]}", reasoning=f"<think>{colours[i]}</think> {shapes[i]}"),
                 [Side(text=f"a {colours[i]} {shapes[i]} on the left",
                       reasoning=f"<think>The text says: a {colours[i]} {shapes[i]}.</think> {shapes[i]}")],
                 dataset="hand", task="image_retrieval", id=f"p{i}") for i in range(n)]


def _worker(make_config, *overrides):
    cfg = make_config("qwen2_vl", "train.objective=ume_sft", "train.mode=full", "train.negatives=0", *overrides)
    backbone = load_backbone(cfg.model)
    return SimpleNamespace(cfg=cfg, backbone=backbone, ctx=LocalContext("unused"), cache=None, autocast=None,
                           device=torch.device("cpu"), model=backbone.model)


def test_gradcache_gives_the_plain_steps_loss_and_gradients(make_config):
    step = UmeSftStep(_worker(make_config, "train.query_chunk_size=1", "train.target_chunk_size=3"))
    inputs = step.inputs(_hand_pairs())
    assert inputs.rows == 4 and not inputs.dropped
    params = [p for p in step.net.parameters() if p.requires_grad]
    plain = step._plain(inputs)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    step.net.zero_grad(set_to_none=True)
    cached = step._gradcache(inputs)
    assert float(cached.loss) == pytest.approx(float(plain.loss), rel=1e-5)
    for p, want in zip(params, grads, strict=True):
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert cached.metrics["gen_found"] == 1.0


def test_a_pair_without_a_trace_is_left_out(view):
    pairs = _hand_pairs(2)
    pairs[1].positives[0].reasoning = None
    out = encode_ume(pairs, view, 64)
    assert out.rows == 1 and "positive has no teacher trace" in out.dropped[0]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from omniret.data.synthetic import generate_benchmark
    from omniret.reasoning.job import run_teacher

    root = tmp_path_factory.mktemp("ume-bench")
    generate_benchmark(root, SyntheticConfig(train_per_task=8, eval_queries=4, tasks=["syn_t2i"]))
    run_teacher(load_config(None, [f"reason.pairs=[{root / 'train'}]", "reason.sides=both",
                                   f"reason.out={root / 'teacher'}"]))
    return root


@pytest.mark.slow
def test_a_few_worker_steps_lower_the_loss_and_checkpoint_the_tokens(tiny_dirs, bench, tmp_path):
    from omniret.training.loop import TrainWorker

    cfg = load_config(None, [
        f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{bench / 'train'}]", f"train.output_dir={tmp_path}",
        "train.name=sft", "train.objective=ume_sft", "train.mode=full", "train.negatives=0", "model.reasoning=both",
        f"model.reasoning_from=[{bench / 'teacher'}]", "media.max_pixels=50176", "train.batch_size=4",
        "train.lr=1e-3", "train.warmup_ratio=0", "train.checkpoint_every=0", "train.eval_at_end=false",
        "train.torch_threads=1", "train.max_steps=8", "ume.max_target_tokens=48"])
    run_dir = tmp_path / "sft"
    worker = TrainWorker(cfg, LocalContext(run_dir), run_dir)
    worker.setup()
    step = worker.objective
    mixture, _ = load_mixture(cfg.data)
    pairs = [p for group in mixture.groups.values() for p in group[:4]]
    attach_to_pairs(cfg, pairs)  # the teacher traces, as the worker attached them to its own pairs
    probe = step.inputs(pairs)
    assert probe.rows == 4

    def probe_loss() -> float:
        with torch.no_grad(), worker.evaluating():
            dq, gq, _, sq, nq = step._forward(probe.queries, probe.query_cot)
            dt, gt, _, st, nt = step._forward(probe.targets, probe.target_cot)
            return float(step.loss(dq, dt, gq, gt, (sq, nq), (st, nt)).loss)

    before = probe_loss()
    rows = [worker.train_step() for _ in range(8)]
    after = probe_loss()
    assert all(r is not None and np.isfinite(r["loss"]) for r in rows)
    assert rows[0]["gen_found"] == 1.0 and rows[0]["ntp_query"] > 0
    assert after < before - 0.5, (before, after)
    worker.save_checkpoint(rows[-1])
    from omniret.training.context import latest_checkpoint

    saved = load_backbone(load_config(None, [f"model.path={latest_checkpoint(run_dir)}"]).model)
    assert has_embedding_tokens(saved.tokenizer)
    GenerativeEmbedder(saved).disc_embed(["a red circle"])  # loads and embeds as a UME-R1 checkpoint
