"""Offline rendering and strict validation of the k8s/ manifests: no cluster, no kubectl.

:func:`render` is a kustomize build restricted to what k8s/ uses (resources, JSON6902 patches with
a target, images). Anything else is refused, so a kustomization that starts using another feature
fails here instead of being rendered differently from ``kubectl kustomize``.

:func:`validate` checks an object strictly, as ``kubectl apply --validate=strict`` would: KubeRay
kinds against the CRDs' openAPIV3Schema (from ``../shared/kuberay-crds/`` next to the repository, or
``$KUBERAY_CRDS``) with every object that lists its properties closed to others, core kinds against
the Kubernetes JSON schemas shipped by the kubernetes-validate package (its "strict" variant).
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD_DIR = Path(os.environ.get("KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))
K8S_VERSION = "1.30"  # the oldest Kubernetes release the manifests are checked against

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
TARGET_KEYS = {"group", "version", "kind", "name", "namespace"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}


def kustomize_command() -> list[str] | None:
    """``kustomize build`` or ``kubectl kustomize`` (PATH, or the kubectl the dev extras install next to
    this Python), or None when neither is there."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    return [kubectl, "kustomize"] if kubectl else None


class RenderError(ValueError):
    """A kustomization this renderer cannot build faithfully, or a patch that does not apply."""


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build directory`` produces (for the features listed above)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in kust.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else _load_all(path)
    for patch in kust.get("patches", []):
        _apply_patch(directory, patch, objects)
    for image in kust.get("images", []):
        if set(image) - IMAGE_KEYS:
            raise RenderError(f"{directory}: unsupported image fields {sorted(set(image) - IMAGE_KEYS)}")
        _set_images(objects, image)
    ids = [object_id(obj) for obj in objects]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise RenderError(f"{directory}: duplicate objects {sorted(duplicates)}")
    return objects


def object_id(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def _matches(obj: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    actual = {"group": group, "version": version, "kind": obj["kind"],
              "name": obj["metadata"]["name"], "namespace": obj["metadata"].get("namespace", "")}
    # kustomize matches each selector field as an anchored regular expression.
    return all(re.fullmatch(pattern, actual[key]) for key, pattern in target.items())


def _apply_patch(directory: Path, patch: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    if set(patch) - {"path", "patch", "target"}:
        raise RenderError(f"{directory}: unsupported patch fields {sorted(set(patch))}")
    ops = yaml.safe_load((directory / patch["path"]).read_text() if "path" in patch else patch["patch"])
    target = patch.get("target")
    if not isinstance(ops, list) or not target:
        raise RenderError(f"{directory}: only JSON6902 patches (a list of ops) with a target are supported")
    if set(target) - TARGET_KEYS:
        raise RenderError(f"{directory}: unsupported target fields {sorted(set(target) - TARGET_KEYS)}")
    matched = [i for i, obj in enumerate(objects) if _matches(obj, target)]
    if not matched:
        raise RenderError(f"{directory}: patch {patch.get('path', '(inline)')} matches no object")
    for i in matched:
        objects[i] = apply_json6902(objects[i], ops)


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise RenderError(f"JSON pointer {pointer!r} must start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _child(node: Any, token: str, pointer: str) -> Any:
    try:
        return node[int(token)] if isinstance(node, list) else node[token]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise RenderError(f"{pointer}: no such location") from exc


def apply_json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add / remove / replace / test on a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, pointer = op["op"], op["path"]
        *parents, last = _tokens(pointer)
        node = doc
        for token in parents:
            node = _child(node, token, pointer)
        if kind == "test":
            if _child(node, last, pointer) != op["value"]:
                raise RenderError(f"test failed at {pointer}: {_child(node, last, pointer)!r} != {op['value']!r}")
        elif kind == "remove":
            _child(node, last, pointer)
            del node[int(last) if isinstance(node, list) else last]
        elif kind == "replace":
            _child(node, last, pointer)
            node[int(last) if isinstance(node, list) else last] = copy.deepcopy(op["value"])
        elif kind == "add" and isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if not 0 <= index <= len(node):
                raise RenderError(f"{pointer}: index out of range")
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "add" and isinstance(node, dict):
            node[last] = copy.deepcopy(op["value"])
        else:
            raise RenderError(f"unsupported op {kind!r} at {pointer}")
    return doc


def _retag(image: str, rule: dict[str, str]) -> str:
    name, at, digest = image.partition("@")
    tag = ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    if "newTag" in rule:
        return f"{name}:{rule['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if at else "")


def _set_images(node: Any, rule: dict[str, str]) -> None:
    # Like kustomize's image transformer: every containers/initContainers list, at any depth, so
    # the pod templates inside RayService and RayJob specs are covered too.
    if isinstance(node, list):
        for item in node:
            _set_images(item, rule)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        container["image"] = _retag(container["image"], rule)
            _set_images(value, rule)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with ``additionalProperties: false`` wherever it lists properties and neither
    allows other properties nor preserves unknown fields: what the API server's strict field
    validation (and pruning) enforces for a structural CRD schema."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    return out


@functools.cache
def _crds() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> strict openAPIV3Schema, from every CRD file in CRD_DIR."""
    if not CRD_DIR.is_dir() or not any(CRD_DIR.glob("*.yaml")):
        # Not part of this repository: the KubeRay CRD files (ray.io_rayservices.yaml, ...) of the
        # KubeRay release the manifests target, next to the checkout or where KUBERAY_CRDS points.
        pytest.skip(f"KubeRay CRDs missing: no CRD *.yaml files in {CRD_DIR} (put the KubeRay CRDs there, or set "
                    "KUBERAY_CRDS to their folder)")
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        for version in crd["spec"]["versions"]:
            key = (crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"])
            schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


@functools.cache
def _crd_validator(group: str, version: str, kind: str) -> jsonschema.protocols.Validator | None:
    schema = _crds().get((group, version, kind))
    # OpenAPI v3.0 schema objects are closest to JSON Schema draft 4 (boolean exclusiveMinimum).
    return None if schema is None else jsonschema.Draft4Validator(schema)


def _core_errors(obj: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.absolute_path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {obj['apiVersion']} {obj['kind']} in Kubernetes {K8S_VERSION}"]
    return []


def validate(obj: dict[str, Any]) -> list[str]:
    """Every way ``obj`` breaks its schema, as 'Kind/name: path: message' lines (empty: valid)."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    if group != "ray.io":
        return [f"{where}: {e}" for e in _core_errors(obj)]
    validator = _crd_validator(group, version, obj["kind"])
    if validator is None:
        return [f"{where}: no CRD for {obj['apiVersion']} {obj['kind']} in {CRD_DIR}"]
    errors = [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    # A CRD leaves metadata to the API server, which checks it as ObjectMeta. Validating the
    # metadata as a ConfigMap's (nothing else in a ConfigMap is required) does just that.
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
    return errors + [f"{where}: metadata: {e}" for e in _core_errors(probe)]
