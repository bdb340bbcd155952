"""Model merging: identity, weighted sums, TIES on a hand-made example, DARE's drop-and-rescale, full
checkpoints and LoRA adapters saved as loadable checkpoints, and refusals by name."""

from __future__ import annotations

import pytest
import torch

from omniret.config import LoraConfig, ModelConfig
from omniret.models import adapters
from omniret.models.backbone import load_backbone
from omniret.models.families import detect_family
from omniret.models.merge import MergeError, merge_adapters, merge_checkpoints, merge_state_dicts


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 4, generator=gen), "b.bias": torch.randn(5, generator=gen),
            "pos_ids": torch.arange(4)}


@pytest.mark.parametrize("method", ["linear", "ties", "dare_linear", "dare_ties"])
def test_merging_a_model_with_itself_is_the_identity(method):
    state, base = _state(0), _state(1)
    merged = merge_state_dicts([state, state], method=method, base=base)  # density 1: nothing trimmed
    for key in state:
        torch.testing.assert_close(merged[key], state[key], rtol=0, atol=1e-6)
    torch.testing.assert_close(merge_state_dicts([state, state])["a.weight"], state["a.weight"])


def test_linear_merge_is_the_weighted_sum():
    a, b, base = _state(0), _state(1), _state(2)
    merged = merge_state_dicts([a, b], [0.3, 0.7])
    torch.testing.assert_close(merged["a.weight"], 0.3 * a["a.weight"] + 0.7 * b["a.weight"])
    with_base = merge_state_dicts([a, b], [0.5, 0.25], base=base)
    expected = base["b.bias"] + 0.5 * (a["b.bias"] - base["b.bias"]) + 0.25 * (b["b.bias"] - base["b.bias"])
    torch.testing.assert_close(with_base["b.bias"], expected)
    assert torch.equal(merged["pos_ids"], a["pos_ids"])


def test_ties_trims_elects_signs_and_averages_the_agreeing_entries():
    base = {"w": torch.zeros(2, 2)}
    tasks = [torch.tensor([[3.0, -1.0], [0.5, -2.0]]),
             torch.tensor([[-4.0, -5.0], [2.0, 1.0]]),
             torch.tensor([[2.0, 1.0], [-0.2, -3.0]])]
    # density 0.5 keeps the 2 largest |values| of each: [3, ., ., -2], [-4, -5, ., .], [2, ., ., -3].
    # Elected signs (sum of kept values): +1 (3-4+2), - (-5), + (nothing kept: sum 0 counts as +), - (-5).
    # Disjoint mean of the kept entries with the elected sign: (3+2)/2, -5, 0 (none), (-2-3)/2.
    merged = merge_state_dicts([{"w": t} for t in tasks], method="ties", base=base, density=0.5)
    torch.testing.assert_close(merged["w"], torch.tensor([[2.5, -5.0], [0.0, -2.5]]))
    # the weights scale each task vector before the disjoint mean (lambda = 2 doubles the result)
    doubled = merge_state_dicts([{"w": t} for t in tasks], [2.0, 2.0, 2.0], "ties", base, density=0.5)
    torch.testing.assert_close(doubled["w"], 2 * merged["w"])


def test_dare_drops_with_probability_p_and_rescales_by_one_over_one_minus_p():
    base = {"w": torch.zeros(20000)}
    task = {"w": torch.full((20000,), 0.35)}
    p = 0.3
    merged = merge_state_dicts([task], [1.0], "dare_linear", base, density=1 - p, seed=7)["w"]
    kept = merged != 0
    torch.testing.assert_close(merged[kept], torch.full((int(kept.sum()),), 0.35 / (1 - p)))
    assert abs(1 - kept.float().mean().item() - p) < 0.02  # 20000 Bernoulli draws: sd 0.0032
    again = merge_state_dicts([task], [1.0], "dare_linear", base, density=1 - p, seed=7)["w"]
    other = merge_state_dicts([task], [1.0], "dare_linear", base, density=1 - p, seed=8)["w"]
    assert torch.equal(again, merged) and not torch.equal(other, merged)


def test_bad_merges_are_refused():
    a, b = _state(0), _state(1)
    with pytest.raises(MergeError, match="needs a base"):
        merge_state_dicts([a, b], method="ties")
    with pytest.raises(MergeError, match="unknown merge method"):
        merge_state_dicts([a, b], method="slerp")
    with pytest.raises(MergeError, match="shape"):
        merge_state_dicts([a, {**b, "b.bias": torch.zeros(6)}])
    with pytest.raises(MergeError, match="different parameters"):
        merge_state_dicts([a, {k: v for k, v in b.items() if k != "b.bias"}])
    with pytest.raises(MergeError, match="2 weights for 1"):
        merge_state_dicts([a], [0.5, 0.5])


def _perturbed(src, out, seed):

    net = detect_family(src).model_class().from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=gen))
    net.save_pretrained(out, safe_serialization=True)
    for name in adapters.SIDE_FILES:
        if (src / name).is_file():
            (out / name).write_bytes((src / name).read_bytes())
    return out


def test_merged_checkpoint_is_the_weighted_sum_and_loads_with_model_path(tiny_dirs, tmp_path):
    a = tiny_dirs["qwen2_vl"]
    b = _perturbed(a, tmp_path / "b", 1)
    out = merge_checkpoints([a, b], tmp_path / "merged", weights=[0.25, 0.75])
    assert (out / "model.safetensors").is_file()
    merged = load_backbone(ModelConfig(path=str(out), dtype="float32")).model.state_dict()
    first = load_backbone(ModelConfig(path=str(a), dtype="float32")).model.state_dict()
    second = load_backbone(ModelConfig(path=str(b), dtype="float32")).model.state_dict()
    for key in list(first)[:20]:
        torch.testing.assert_close(merged[key], 0.25 * first[key] + 0.75 * second[key])


def test_checkpoints_of_different_architectures_are_refused_by_name(tiny_dirs, tmp_path):
    with pytest.raises(MergeError, match=r"Qwen2VLForConditionalGeneration.*Qwen3VLForConditionalGeneration"):
        merge_checkpoints([tiny_dirs["qwen2_vl"], tiny_dirs["qwen3_vl"]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapter_merge_adds_the_merged_deltas_to_the_base(tiny_dirs, tmp_path):
    base = tiny_dirs["qwen2_vl"]
    deltas = []
    for seed in (0, 1):
        net = detect_family(base).model_class().from_pretrained(base, dtype=torch.float32)
        peft_model = adapters.attach_lora(net, LoraConfig(r=2, target_modules=["q_proj"], include_vision=False))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        deltas.append(adapters.lora_deltas(peft_model))
        peft_model.save_pretrained(tmp_path / f"adapter{seed}")
    out = merge_adapters(base, [tmp_path / "adapter0", tmp_path / "adapter1"], tmp_path / "merged",
                         weights=[0.5, 2.0])
    merged = load_backbone(ModelConfig(path=str(out), dtype="float32")).model.state_dict()
    original = load_backbone(ModelConfig(path=str(base), dtype="float32")).model.state_dict()
    assert deltas[0]
    for key in deltas[0]:
        torch.testing.assert_close(merged[key], original[key] + 0.5 * deltas[0][key] + 2.0 * deltas[1][key],
                                   atol=1e-6, rtol=1e-5)
    untouched = next(k for k in original if "k_proj.weight" in k)
    assert torch.equal(merged[untouched], original[untouched])
    from omniret.cli import main  # the command line: adapters merge on model.path

    assert main(["merge", "--adapters", str(tmp_path / "adapter0"), str(tmp_path / "adapter1"), "--weights", "0.5",
                 "2.0", "--out", str(tmp_path / "cli"), f"model.path={base}"]) == 0
    from_cli = load_backbone(ModelConfig(path=str(tmp_path / "cli"), dtype="float32")).model.state_dict()
    assert all(torch.equal(from_cli[k], merged[k]) for k in deltas[0])


def test_merge_command_writes_a_checkpoint_and_refuses_mixed_architectures(tiny_dirs, tmp_path, capsys):
    from omniret.cli import main

    a = tiny_dirs["qwen2_vl"]
    assert main(["merge", "--checkpoints", str(a), str(a), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "config.json").is_file()
    assert main(["merge", "--checkpoints", str(a), str(tiny_dirs["qwen3_vl"]), "--out", str(tmp_path / "x")]) == 2
    assert "different architectures" in capsys.readouterr().err


def test_merge_section_of_a_config_runs_as_a_stage(tiny_dirs, tmp_path):
    from omniret.config import load_config
    from omniret.models.merge import merge_from_config

    a = tiny_dirs["qwen2_vl"]
    b = _perturbed(a, tmp_path / "b", 2)
    cfg = load_config(None, [f"merge.checkpoints=[{a}, {b}]", "merge.method=ties", f"merge.base={a}",
                             "merge.density=1.0", "merge.weights=[1.0, 1.0]", f"merge.out={tmp_path / 'm'}"])
    out = merge_from_config(cfg)
    merged = load_backbone(ModelConfig(path=str(out), dtype="float32")).model.state_dict()
    second = load_backbone(ModelConfig(path=str(b), dtype="float32")).model.state_dict()
    # a's task vector is zero: TIES keeps b's (the only non-zero entries with the elected sign)
    for key in list(second)[:10]:
        torch.testing.assert_close(merged[key], second[key], atol=1e-6, rtol=1e-5)
    with pytest.raises(MergeError, match=r"merge\.out"):
        merge_from_config(load_config(None, [f"merge.checkpoints=[{a}, {b}]"]))
