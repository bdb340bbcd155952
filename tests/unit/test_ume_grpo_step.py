"""The GRPO step on a toy policy (the tiny model with UME-R1's tokens): its loss and gradients equal a float64
re-computation from the tested pieces (HF logits, format and rank x gap rewards, group advantages, the
clipped loss with k3 KL against the frozen starting model), and the reference is the *starting* model."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from omniret.config import load_config
from omniret.errors import ConfigError
from omniret.losses.grpo import grpo_loss
from omniret.models.backbone import load_backbone
from omniret.models.gen_tokens import GEN_EMB, add_embedding_tokens
from omniret.training.checkpoint import copy_side_files
from omniret.training.context import LocalContext
from omniret.training.rl.rewards import embedding_reward, format_reward, group_advantages
from omniret.training.ume_grpo import GrpoStep, Rollout

G = 2
GOOD = "<think>a</think><answer>b</answer><gen_emb>"


def with_tokens(source, out):
    """A copy of a tiny checkpoint with UME-R1's tokens (what an SFT stage starts GRPO from)."""
    backbone = load_backbone(load_config(None, [f"model.path={source}"]).model)
    add_embedding_tokens(backbone.model, backbone.tokenizer, "qwen2_vl")
    backbone.model.save_pretrained(out)
    backbone.tokenizer.save_pretrained(out)
    copy_side_files(source, out)
    return out


@pytest.fixture()
def start_dir(tiny_dirs, tmp_path):
    return with_tokens(tiny_dirs["qwen2_vl"], tmp_path / "start")


def _worker(start_dir, *overrides):
    cfg = load_config(None, [f"model.path={start_dir}", "train.objective=ume_grpo", "train.mode=full",
                             f"grpo.num_generations={G}", "grpo.max_completion_length=6", *overrides])
    backbone = load_backbone(cfg.model.model_copy(update={"dtype": "float32", "device": "cpu"}))
    for p in backbone.model.parameters():
        p.requires_grad_(True)
    return SimpleNamespace(cfg=cfg, device=torch.device("cpu"), world=1, rank=0, backbone=backbone,
                           model=backbone.model, autocast=None, ctx=LocalContext(start_dir), base_dir=start_dir)


def _rollout(tok, gen, gen_rows, texts, seed):
    g = torch.Generator().manual_seed(seed)
    rows, p, t = 4, 5, 6
    prompt = torch.randint(10, 200, (rows, p), generator=g)
    ids = torch.randint(10, 200, (rows, t), generator=g)
    mask = torch.ones(rows, t, dtype=torch.long)
    mask[1, 4:] = 0  # a completion that stopped early: its padding is not trained
    for r in gen_rows:
        ids[r, 3] = gen
    batch = {"input_ids": torch.cat([prompt, ids], 1),
             "attention_mask": torch.cat([torch.ones(rows, p, dtype=torch.long), mask], 1),
             "mm_token_type_ids": torch.zeros(rows, p + t, dtype=torch.long)}
    emb = F.normalize(torch.randn(rows, 8, generator=g), dim=-1)
    return Rollout(batch, p, ids, mask, texts, emb, torch.tensor([r in gen_rows for r in range(rows)]))


def _logp64(model, r):
    logits = model(input_ids=r.batch["input_ids"], attention_mask=r.batch["attention_mask"]).logits
    lp = torch.log_softmax(logits[:, r.prompt_length - 1:-1].double(), dim=-1)
    return torch.gather(lp, 2, r.completion_ids[..., None]).squeeze(-1)


def test_step_loss_and_gradients_match_float64_reference(start_dir):
    worker = _worker(start_dir)
    model = worker.model.double()  # the step runs in the policy's dtype: compare at float64 precision
    with torch.no_grad():  # the policy has moved away from the start: the KL term is not zero
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    step = GrpoStep(worker)
    tok = worker.backbone.tokenizer
    gen = tok.convert_tokens_to_ids(GEN_EMB)
    q = _rollout(tok, gen, [0, 2, 3], [GOOD, "no format", GOOD, "<think></think><answer><gen_emb>"], 1)
    t = _rollout(tok, gen, [1, 2], ["x", GOOD, GOOD, "<answer>only"], 2)
    policy64, start64 = copy.deepcopy(model).double(), load_backbone(
        worker.cfg.model.model_copy(update={"dtype": "float32", "device": "cpu"})).model.double()
    out = step.step_on(q, t)

    sims = q.embeddings.double() @ t.embeddings.double().T
    expected = 0
    for r, s in ((q, sims), (t, sims.T)):
        rewards = format_reward(r.texts).double() + embedding_reward(s, G)
        adv = group_advantages(rewards, G)
        logp = _logp64(policy64, r)
        with torch.no_grad():
            ref = _logp64(start64, r)
        expected = expected + grpo_loss(logp, logp.detach(), ref, adv, r.completion_mask, 6).loss / 2
    expected.backward()
    assert float(out.loss) == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-7)
    assert float(expected.detach()) != 0.0
    grads = dict(policy64.named_parameters())
    checked = 0
    for name, p in model.named_parameters():
        ref_grad = grads[name].grad
        if ref_grad is None:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0
            continue
        torch.testing.assert_close(p.grad.double(), ref_grad, rtol=1e-4, atol=1e-7)
        checked += int(torch.count_nonzero(ref_grad) > 0)
    assert checked > 5
    assert out.metrics["format_reward"] == pytest.approx(5 / 8)
    assert out.metrics["gen_emb_found"] == pytest.approx(5 / 8)
    assert out.metrics["kl"] > 0 and out.metrics["clip_fraction"] == 0.0  # ratio 1: one update per batch


def test_zero_beta_has_no_reference_and_a_checkpoint_without_tokens_is_refused(start_dir, tiny_dirs):
    step = GrpoStep(_worker(start_dir, "grpo.beta=0"))
    assert step.reference is None
    with pytest.raises(ConfigError, match="<disc_emb>"):
        GrpoStep(_worker(tiny_dirs["qwen2_vl"]))
    with pytest.raises(ConfigError, match=r"train\.mode"):
        GrpoStep(_worker(start_dir, "train.mode=head"))


def test_rows_must_be_whole_groups(start_dir):
    step = GrpoStep(_worker(start_dir))
    tok = step.tokenizer
    r = _rollout(tok, tok.convert_tokens_to_ids(GEN_EMB), [0], [GOOD] * 4, 3)
    odd = Rollout({k: v[:3] for k, v in r.batch.items()}, r.prompt_length, r.completion_ids[:3],
                  r.completion_mask[:3], r.texts[:3], r.embeddings[:3], r.found[:3])
    with pytest.raises(ValueError, match="whole groups"):
        step.step_on(odd, odd)


def test_an_unreadable_pair_is_left_out_of_the_step_with_its_reason(start_dir, tmp_path):
    from omniret.data.schema import Pair, Side

    step = GrpoStep(_worker(start_dir))
    good = Pair(Side(text="a red circle"), [Side(text="red")], dataset="d", task="qa", id="good")
    bad = Pair(Side(text="see", images=[str(tmp_path / "missing.png")]), [Side(text="x")], dataset="d", task="qa",
               id="bad")
    inputs = step.inputs([good, bad])
    assert inputs.rows == 1 and inputs.names == ["good"]
    assert len(inputs.dropped) == 1 and inputs.dropped[0].startswith("bad:") and "missing.png" in inputs.dropped[0]


def test_lora_reference_is_the_policy_with_its_adapter_disabled(start_dir):
    from omniret.config import LoraConfig
    from omniret.models.adapters import attach_lora
    from omniret.training.rl.policy import Reference, forward_completions

    worker = _worker(start_dir)
    base = copy.deepcopy(worker.model)
    policy = attach_lora(worker.model, LoraConfig(r=4, dropout=0.0))
    with torch.no_grad():  # a trained adapter: LoRA's B starts at zero, so move it
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    tok = worker.backbone.tokenizer
    r = _rollout(tok, tok.convert_tokens_to_ids(GEN_EMB), [0], [GOOD] * 4, 4)
    ref = Reference(policy, "lora").logprobs(r.batch, r.prompt_length, r.completion_ids)
    with torch.no_grad():
        expected = forward_completions(base, r.batch, r.prompt_length, r.completion_ids)
        trained = forward_completions(policy, r.batch, r.prompt_length, r.completion_ids)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(trained, expected, atol=1e-4)  # the adapter is back on afterwards
