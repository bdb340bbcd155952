"""Project rules that keep the package importable everywhere: no shadowed stdlib, lint clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_platform_is_still_the_standard_library_module():
    import platform

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(platform.__file__).resolve().parent == stdlib
    assert platform.python_version()
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_omniret_imports_from_the_platform_folder():
    import omniret

    assert Path(omniret.__file__).resolve().parent == ROOT / "platform" / "omniret"


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
