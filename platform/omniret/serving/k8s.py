"""The RayService's serveConfigV2, generated from the serve config the project uses locally.

    omniret k8s-serve-config             # rewrite every target listed in k8s/serve-configs.yaml
    omniret k8s-serve-config --check     # exit 1 when a committed serveConfigV2 is stale
    omniret k8s-serve-config --config ray_jobs/configs/serve.yaml serve.embedder.num_gpus=1   # print one

The result is Ray Serve's config schema with one application, ``omniret.serving.app:build_app``,
whose ``args`` are:

- ``config``: the site file each Ray pod mounts from the ``omniret-site`` ConfigMap. It holds the
  cluster facts (:data:`SITE_KEYS`: where the model, the index and uploads live), so the same
  serveConfigV2 works on every cluster and paths always name the pod's filesystem, not a laptop's.
- ``settings``: the serve config plus overrides, less those site keys and less ``serve.host`` /
  ``serve.port`` (on Kubernetes the Serve proxy listens where ``http_options`` says).

``deployments`` are read from the application exactly as ``serve build`` reads them, so replicas,
autoscaling, ``max_ongoing_requests`` and ``ray_actor_options`` are what build_app applies, and are
visible (and reviewable) in the manifest.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from omniret.config import apply_overrides, load_config, merge, parse_override
from omniret.errors import ConfigError

IMPORT_PATH = "omniret.serving.app:build_app"
SITE_FILE = "/etc/omniret/site.yaml"
TARGETS_FILE = Path("k8s/serve-configs.yaml")
SITE_KEYS = ("model.path", "model.adapter", "model.tiny_dir", "index.uri", "index.storage_options",
             "serve.upload_dir", "serve.allowed_roots")
PROXY_KEYS = ("serve.host", "serve.port")
# build_app resolves the model before binding replicas; a stand-in path keeps it from building the
# tiny model here. Deployment options never depend on paths.
_STAND_IN_MODEL = "/model/from/the/site/config"


def load_settings(config: str | Path | None, overrides: list[str]) -> dict[str, Any]:
    """The serve config as written (YAML plus overrides), validated; cluster facts may not be set here."""
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if any(key == k or k.startswith(key + ".") or key.startswith(k + ".") for k in SITE_KEYS):
            raise ConfigError(f"override {text!r}: {key} is (or holds) a cluster fact; set it in the "
                              "site ConfigMap")
    data: dict[str, Any] = {}
    if config is not None:
        try:
            data = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {config}: {exc}") from exc
    data = apply_overrides(copy.deepcopy(data), overrides)
    load_config(None, base=data)  # raises ConfigError naming a bad key
    return data


def _without(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``data`` less the dotted ``keys`` and less top-level sections left empty."""
    out = copy.deepcopy(data)
    for key in keys:
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return {k: v for k, v in out.items() if v != {} and v is not None}


def deployments(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Each deployment's options as Serve's config schema writes them (what ``serve build`` emits)."""
    from ray.serve._private.build_app import build_app as build_serve_app  # what `serve build` uses
    from ray.serve.deployment import deployment_to_schema

    from omniret.serving.app import build_app

    app = build_app({"settings": merge(settings, {"model": {"path": _STAND_IN_MODEL}})})
    built = build_serve_app(app, name="omniret")
    schemas = [deployment_to_schema(d).model_dump(mode="json", exclude_unset=True) for d in built.deployments]
    return sorted(schemas, key=lambda d: d["name"])


def serve_config(settings: dict[str, Any], site_file: str = SITE_FILE) -> dict[str, Any]:
    """Ray Serve's deploy config (``ServeDeploySchema``) for the settings."""
    cfg = load_config(None, base=settings)
    app_settings = _without(settings, SITE_KEYS + PROXY_KEYS)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": cfg.serve.port},
        "applications": [{
            "name": cfg.serve.app_name,
            "route_prefix": "/",
            "import_path": IMPORT_PATH,
            "args": {"config": site_file, "settings": app_settings},
            "deployments": deployments(app_settings),
        }],
    }


def render(config: str | Path | None, overrides: list[str], site_file: str = SITE_FILE,
           label: str | None = None) -> str:
    """serveConfigV2 as YAML text, with a header naming its source (``label``, default the path)."""
    source = label or f"{config or 'the defaults'}{' + overrides' if overrides else ''}"
    header = (f"# Generated by `omniret k8s-serve-config` from {source}; do not edit by hand.\n"
              f"# model.path, index.uri and the other cluster facts come from {site_file} (ConfigMap omniret-site).\n")
    body = yaml.safe_dump(serve_config(load_settings(config, overrides), site_file),
                          sort_keys=False, default_flow_style=False, width=100)
    return header + body


def _indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line if line.strip() else "\n" for line in text.splitlines(keepends=True))


def _patch_text(value: str) -> str:
    return ("# Generated by `omniret k8s-serve-config` (see k8s/serve-configs.yaml); do not edit by hand.\n"
            "# A JSON6902 patch that gives the RayService this serveConfigV2.\n"
            f"- op: replace\n  path: /spec/serveConfigV2\n  value: |\n{_indent(value, 4)}")


_BLOCK = re.compile(r"^(?P<indent> *)serveConfigV2: *\|[-+]? *$")


def _manifest_text(text: str, value: str) -> str:
    """Replace the ``serveConfigV2: |`` block of a RayService manifest, leaving the rest as written."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _BLOCK.match(line.rstrip("\n"))]
    if len(starts) != 1:
        raise ConfigError(f"expected one `serveConfigV2: |` block, found {len(starts)}")
    start = starts[0]
    indent = len(_BLOCK.match(lines[start].rstrip("\n"))["indent"])
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip(" ")) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines after the block stay put
        end -= 1
    return "".join([*lines[:start + 1], _indent(value, indent + 2), *lines[end:]])


def target_text(root: Path, target: dict[str, Any]) -> tuple[Path, str]:
    """(file, the content it should have) for one entry of the targets file; paths are relative to root.

    A ``*.patch.yaml`` target is written whole (a JSON6902 patch); any other target is a RayService
    manifest whose ``serveConfigV2: |`` block is replaced, comments and all else kept.
    """
    path = root / target["manifest"]
    config = target.get("config")
    overrides = list(target.get("overrides") or [])
    label = f"{config or 'the defaults'}{' + the overrides in ' + TARGETS_FILE.as_posix() if overrides else ''}"
    value = render(root / config if config else None, overrides, label=label)
    if path.name.endswith(".patch.yaml"):
        return path, _patch_text(value)
    text = _manifest_text(path.read_text(), value)
    if yaml.safe_load(text)["spec"]["serveConfigV2"] != value:
        raise ConfigError(f"{path}: the rewritten serveConfigV2 does not read back as generated")
    return path, text


def sync(targets_file: Path = TARGETS_FILE, check: bool = False) -> list[Path]:
    """Regenerate every target (or, with ``check``, only compare); returns the files that were stale.

    Paths in the targets file are relative to the repository root, the folder holding k8s/.
    """
    targets_file = Path(targets_file).resolve()
    root = targets_file.parent.parent
    stale = []
    for target in yaml.safe_load(targets_file.read_text())["targets"]:
        path, text = target_text(root, target)
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not check:
                path.write_text(text)
    return stale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", type=Path, default=TARGETS_FILE,
                        help=f"targets file naming each manifest and its source (default {TARGETS_FILE})")
    parser.add_argument("--check", action="store_true", help="only report stale manifests (exit 1 if any)")


def run(args: argparse.Namespace) -> int:
    """``--config``/overrides given: print that serveConfigV2; otherwise sync (or check) every target."""
    if args.config is not None or args.overrides:
        print(render(args.config, list(args.overrides)), end="")
        return 0
    stale = sync(args.targets, check=args.check)
    for path in stale:
        shown = os.path.relpath(path)
        print(f"{'stale' if args.check else 'rewrote'} {shown}", file=sys.stderr if args.check else sys.stdout)
    if args.check and stale:
        print("run `omniret k8s-serve-config` to regenerate", file=sys.stderr)
        return 1
    return 0
