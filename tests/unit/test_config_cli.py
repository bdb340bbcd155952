"""Configuration (YAML + overrides, strict keys) and the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from omniret.cli import main
from omniret.config import OmniretConfig, load_config, parse_override
from omniret.errors import ConfigError


def test_defaults_yaml_and_overrides_compose(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  template: gve\nmedia:\n  pdf_dpi: 72\nembed:\n")
    cfg = load_config(path, ["media.pdf_dpi=144", "embed.dimensions=32", "lora.target_modules=[q_proj, v_proj]"])
    assert cfg.model.template == "gve" and cfg.media.pdf_dpi == 144 and cfg.embed.dimensions == 32
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.media.max_pixels == OmniretConfig().media.max_pixels
    assert OmniretConfig.model_validate(cfg.model_dump()) == cfg  # survives the trip to a Ray worker


@pytest.mark.parametrize(("override", "message"), [
    ("media.pdf_dpix=3", "media.pdf_dpix"),
    ("media.pdf_dpi=7", "media.pdf_dpi"),
    ("media.min_pixels=99999999", "min_pixels"),
    ("nonsense", "key.sub=value"),
    ("media.pdf_dpi.x=1", "media.pdf_dpi"),
])
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])


def test_override_values_are_yaml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=x=y") == (["a"], "x=y")


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "embed", "rerank", "soup", "build-tiny", "config"):
        assert command in out


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("omniret")
    result = subprocess.run([str(script), "embed", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--image" in result.stdout


def test_embed_command_prints_a_unit_vector(tiny_dirs, capsys):
    assert main(["embed", "--text", "a red circle", f"model.path={tiny_dirs['qwen2_vl']}",
                 "embed.dimensions=8"]) == 0
    vector = json.loads(capsys.readouterr().out)["embedding"]
    assert len(vector) == 8 and abs(sum(x * x for x in vector) - 1) < 1e-4


def test_cli_reports_bad_input_without_a_traceback(tiny_dirs, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code = main(["embed", "--image", str(bad), f"model.path={tiny_dirs['qwen2_vl']}"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.png" in err and "Traceback" not in err
    assert main(["config", "media.nope=1"]) == 2
    assert "media.nope" in capsys.readouterr().err
