"""The Kubernetes manifests (k8s/), checked offline: every kustomization renders, every object
validates strictly against its schema (KubeRay CRDs, Kubernetes core), the RayService's
serveConfigV2 is Ray Serve's config for an application that builds and matches the project's serve
config, the RayJobs run files that exist, and the image matches the pinned Ray."""

from __future__ import annotations

import copy
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8s_manifests import (
    K8S,
    REPO,
    RenderError,
    apply_json6902,
    kustomizations,
    kustomize_command,
    render,
    validate,
)

from omniret.config import load_config
from omniret.serving import k8s as serve_k8s

DIRS = [str(d.relative_to(K8S)) for d in kustomizations()]
STACKS = [d for d in DIRS if not d.endswith("jobs")]
JOBS = [d for d in DIRS if d.endswith("jobs")]
DOCKERFILE = K8S / "image" / "Dockerfile"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {d: render(K8S / d) for d in DIRS}


def pinned_ray() -> str:
    return re.search(r"^ray==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)[1]


def app_dir() -> str:
    return re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M)[-1]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def ray_pods(cluster: dict) -> list[tuple[str, dict]]:
    """(group name, pod spec) of the head and every worker group of a RayCluster spec."""
    return [("head", cluster["headGroupSpec"]["template"]["spec"])] + [
        (g["groupName"], g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]


def site_config(objects: list[dict], tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(one(objects, "ConfigMap", "omniret-site")["data"]["site.yaml"])
    return path


def test_every_layout_has_its_kustomization():
    assert {"base", "base/jobs", "overlays/dev", "overlays/dev/jobs", "overlays/gpu", "overlays/gpu/jobs"} <= set(DIRS)


@pytest.mark.parametrize("directory", DIRS)
def test_objects_validate_strictly(rendered, directory):
    objects = rendered[directory]
    assert objects
    errors = [error for obj in objects for error in validate(obj)]
    assert not errors, "\n".join(errors)


def _container(obj):
    return obj["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(("directory", "kind", "mutate", "expected"), [
    ("base", "RayService", lambda o: _container(o).update(imagePullPolicyy="Always"), "imagePullPolicyy"),
    ("base", "RayService", lambda o: o["spec"].update(serveConfigV3=""), "serveConfigV3"),
    ("base", "RayService", lambda o: o["metadata"].update(labelz={}), "labelz"),
    ("base", "RayService", lambda o: o["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update(
        {"num-cpus": 0}), "is not of type 'string'"),
    ("base/jobs", "RayJob", lambda o: o["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplica=1),
     "minReplica"),
    ("base/jobs", "RayJob", lambda o: o["spec"].update(shutdownAfterJobFinish=True), "shutdownAfterJobFinish"),
    ("base", "Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(commandd=[]), "commandd"),
    ("base", "CronJob", lambda o: o["spec"].update(schedulee="x"), "schedulee"),
])
def test_validation_rejects_unknown_fields(rendered, directory, kind, mutate, expected):
    obj = copy.deepcopy(next(o for o in rendered[directory] if o["kind"] == kind))
    assert validate(obj) == []
    mutate(obj)
    errors = validate(obj)
    assert errors and expected in "\n".join(errors)


@pytest.mark.parametrize("directory", STACKS)
def test_serve_config_is_a_serve_app_that_builds(rendered, directory, tmp_path):
    from ray._common.utils import import_attr
    from ray.serve._private.build_app import build_app as build_serve_app
    from ray.serve.deployment import Application, deployment_to_schema
    from ray.serve.schema import ServeDeploySchema

    from omniret.serving.app import build_app

    objects = rendered[directory]
    service = one(objects, "RayService")
    config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert import_attr(app.import_path) is build_app
    assert app.args["config"] == serve_k8s.SITE_FILE
    # The site file of this overlay's ConfigMap, and a model path that keeps build_app from
    # building the tiny model: the graph and its options are built, nothing runs.
    args = {**app.args, "config": str(site_config(objects, tmp_path)), "overrides": [f"model.path={tmp_path}"]}
    application = build_app(args)
    assert isinstance(application, Application)
    built = build_serve_app(application, name=app.name)
    got = sorted((deployment_to_schema(d).model_dump(mode="json", exclude_unset=True) for d in built.deployments),
                 key=lambda d: d["name"])
    want = sorted(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["deployments"],
                  key=lambda d: d["name"])
    assert got == want
    for _, pod in ray_pods(service["spec"]["rayClusterConfig"])[1:]:
        ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        assert ports["serve"] == config.http_options.port


def test_committed_serve_configs_are_regenerated():
    stale = serve_k8s.sync(K8S / "serve-configs.yaml", check=True)
    assert not stale, f"stale serveConfigV2 in {stale}: run `omniret k8s-serve-config`"


def test_a_serve_config_change_is_caught_and_rewritten(tmp_path):
    """The drift check fails when serve.yaml changes, and a sync rewrites only serveConfigV2."""
    targets = yaml.safe_load((K8S / "serve-configs.yaml").read_text())["targets"]
    for rel in {"k8s/serve-configs.yaml", *(t["manifest"] for t in targets), *(t["config"] for t in targets)}:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    targets_file = tmp_path / "k8s/serve-configs.yaml"
    assert serve_k8s.sync(targets_file, check=True) == []
    serve_yaml = tmp_path / "ray_jobs/configs/serve.yaml"
    serve_yaml.write_text(serve_yaml.read_text().replace("max_inputs: 64", "max_inputs: 65"))
    assert len(serve_k8s.sync(targets_file, check=True)) == len(targets)
    assert len(serve_k8s.sync(targets_file)) == len(targets)
    assert serve_k8s.sync(targets_file, check=True) == []
    manifest = tmp_path / "k8s/base/rayservice.yaml"
    before, after = (REPO / "k8s/base/rayservice.yaml").read_text(), manifest.read_text()
    assert after != before and "max_inputs: 65" in after
    strip = re.compile(r"^ *serveConfigV2: \|\n(?: {4,}.*\n|\n)*", re.M)
    assert strip.sub("", after) == strip.sub("", before)  # comments and everything else kept


def test_cluster_facts_cannot_be_set_in_the_serve_config():
    with pytest.raises(ValueError, match="cluster fact"):
        serve_k8s.load_settings(REPO / "ray_jobs/configs/serve.yaml", ["index.uri=/tmp/x"])


@pytest.mark.parametrize("directory", STACKS)
def test_search_cluster_shape(rendered, directory):
    objects = rendered[directory]
    spec = one(objects, "RayService")["spec"]
    cluster = spec["rayClusterConfig"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    assert cluster["rayVersion"] == pinned_ray()
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert "omniret/site-revision" in cluster["headGroupSpec"]["template"]["metadata"]["annotations"]
    groups = {name: pod for name, pod in ray_pods(cluster)}
    assert "cpu" in groups and ("gpu" in groups) == (directory != "overlays/dev")
    serve = yaml.safe_load(spec["serveConfigV2"])["applications"][0]
    gpus = {d["name"]: d["ray_actor_options"]["num_gpus"] for d in serve["deployments"]}
    assert all("autoscaling_config" in d for d in serve["deployments"])
    if directory == "overlays/gpu":
        group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
        assert group["minReplicas"] >= 1 and gpus["EmbedderDeployment"] >= 1 and gpus["RerankerDeployment"] >= 1
    else:
        assert set(gpus.values()) == {0}
    for name, pod in groups.items():
        container = pod["containers"][0]
        assert container["livenessProbe"] and container["readinessProbe"]
        if name != "head":  # workers take traffic only once their Serve proxy is up
            assert "/-/healthz" in " ".join(container["readinessProbe"]["exec"]["command"])
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts[posixpath.dirname(serve_k8s.SITE_FILE)]["name"]]["configMap"]["name"] == "omniret-site"
    check_gpu_groups(cluster)


def check_gpu_groups(cluster: dict) -> None:
    for group in cluster.get("workerGroupSpecs", []):
        pod = group["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        gpu = resources.get("limits", {}).get("nvidia.com/gpu")
        assert (gpu is not None) == (group["groupName"] == "gpu")
        if gpu is not None:
            assert resources["requests"]["nvidia.com/gpu"] == gpu and int(gpu) >= 1
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


@pytest.mark.parametrize("directory", DIRS)
def test_pods_share_the_image_and_the_volume(rendered, directory):
    """One image, run from its WORKDIR; Ray pods mount the data PVC where relative paths resolve."""
    workdir = app_dir()
    on_volume = {f"{workdir}/.omniret", f"{workdir}/runs", f"{workdir}/data"}
    images, pods = set(), []  # (pod spec, is a Ray pod)
    for obj in rendered[directory]:
        spec = obj.get("spec", {})
        if obj["kind"] in ("RayService", "RayJob"):
            pods += [(pod, True) for _, pod in ray_pods(spec.get("rayClusterConfig") or spec["rayClusterSpec"])]
        elif obj["kind"] == "Deployment":
            pods.append((spec["template"]["spec"], False))
        elif obj["kind"] == "CronJob":
            pods.append((spec["jobTemplate"]["spec"]["template"]["spec"], False))
    for pod, is_ray in pods:
        container = pod["containers"][0]
        images.add(container["image"])
        assert container["workingDir"] == workdir
        claims = {v["name"] for v in pod.get("volumes", [])
                  if v.get("persistentVolumeClaim", {}).get("claimName") == "omniret-data"}
        mounted = {m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in claims}
        assert mounted == on_volume if is_ray else mounted <= on_volume
    assert len(images) == 1 and re.fullmatch(r"[\w./-]+:[\w.-]+", images.pop())


@pytest.mark.parametrize("directory", STACKS)
def test_site_paths_are_on_the_volume(rendered, directory, tmp_path):
    cfg = load_config(site_config(rendered[directory], tmp_path))
    roots = (f"{app_dir()}/.omniret/", f"{app_dir()}/runs/", f"{app_dir()}/data/")
    for path in (cfg.index.uri, cfg.model.path or cfg.model.tiny_dir, cfg.serve.upload_dir):
        assert "://" in path or path.startswith(roots), path


def job_commands(entrypoint: str) -> list[list[str]]:
    """The commands a RayJob entrypoint runs, as argv lists.

    KubeRay pastes the entrypoint unquoted into the submitter pod's bash command line, so shell
    operators and expansions are allowed only inside `bash -c '...'`; anywhere else they would act in
    the submitter pod instead of the Ray cluster.
    """
    def words(text: str) -> list[str]:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        return list(lexer)

    outer = words(entrypoint)
    assert not any(set(w) <= set("&|;<>()") for w in outer), f"shell operators outside bash -c: {entrypoint}"
    assert "$" not in entrypoint and "`" not in entrypoint, f"expansions would happen in the submitter: {entrypoint}"
    if outer[:2] != ["bash", "-c"]:
        return [outer]
    assert len(outer) == 3
    commands, current = [], []
    for word in words(outer[2]):
        if word == "&&":
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [*commands, current]


def entrypoint(job: dict) -> list[str]:
    """The `python ray_jobs/<script>.py --config <file> [key=value ...]` command of a RayJob."""
    (command,) = [c for c in job_commands(job["spec"]["entrypoint"]) if c[0] == "python"]
    return command


@pytest.mark.parametrize("directory", JOBS)
def test_rayjobs_are_bounded_one_shot_runs(rendered, directory):
    from omniret.cli import build_parser

    missing = []
    for job in rendered[directory]:
        assert job["kind"] == "RayJob"
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert spec["activeDeadlineSeconds"] > 0 and spec["submissionMode"] == "K8sJobMode"
        assert spec["rayClusterSpec"]["rayVersion"] == pinned_ray()
        assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        assert job["metadata"]["name"] == f"omniret-{job['metadata']['labels']['omniret/job']}"
        check_gpu_groups(spec["rayClusterSpec"])
        for command in job_commands(spec["entrypoint"]):
            assert command[0] in ("python", "omniret"), command
            if command[0] == "omniret":  # a real command of the console script, with real options
                build_parser().parse_args(command[1:])
        command = entrypoint(job)
        assert command[1].startswith("ray_jobs/")
        missing += [f for f in (command[1], command[command.index("--config") + 1]) if not (REPO / f).is_file()]
    assert not missing, f"RayJob entry points or configs missing from the repository: {sorted(set(missing))}"


def embedding_identity(cfg, workdir: str) -> dict:
    """What must be equal for query vectors to be comparable with the indexed ones, and where."""
    def resolve(path):
        return path if path is None or "://" in path else posixpath.normpath(posixpath.join(workdir, path))
    return {"model": resolve(cfg.model.path) or (resolve(cfg.model.tiny_dir), cfg.model.tiny_family),
            "adapter": resolve(cfg.model.adapter), "template": cfg.model.template,
            "dimensions": cfg.embed.dimensions, "index": resolve(cfg.index.uri), "table": cfg.index.table}


@pytest.mark.parametrize("stack", STACKS)
def test_ingest_writes_what_search_reads(rendered, stack, tmp_path):
    objects = rendered[stack]
    settings = yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])["applications"][0]["args"]
    served = load_config(site_config(objects, tmp_path), base=settings["settings"])
    command = entrypoint(one(rendered[f"{stack}/jobs"], "RayJob", "omniret-ingest"))
    config = command[command.index("--config") + 1]
    overrides = [a for a in command[2:] if "=" in a and not a.startswith("-")]
    ingested = load_config(REPO / config, overrides)
    assert embedding_identity(ingested, app_dir()) == embedding_identity(served, app_dir())


@pytest.mark.parametrize("directory", STACKS)
def test_index_cronjob_runs_a_real_command_on_the_site_config(rendered, directory):
    from omniret.cli import build_parser, cmd_index

    container = one(rendered[directory], "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == "omniret"
    args = build_parser().parse_args(container["command"][1:])
    assert args.func is cmd_index and args.optimize and str(args.config) == serve_k8s.SITE_FILE


@pytest.mark.parametrize("directory", STACKS)
def test_ui_points_at_the_serve_service(rendered, directory):
    objects = rendered[directory]
    command = one(objects, "Deployment", "omniret-ui")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "ui/app.py"] and (REPO / command[1]).is_file()
    options = dict(zip(command[2::2], command[3::2], strict=True))
    service = one(objects, "RayService")
    port = yaml.safe_load(service["spec"]["serveConfigV2"])["http_options"]["port"]
    assert options["--api-url"] == f"http://{service['metadata']['name']}-serve-svc:{port}"
    assert options["--host"] == "0.0.0.0"
    ui_service = one(objects, "Service", "omniret-ui")["spec"]
    assert ui_service["ports"][0]["port"] == int(options["--port"])


def test_entry_points_answer_help(rendered):
    """Each RayJob script and the UI start and print their usage (run side by side: imports are slow)."""
    scripts = {entrypoint(job)[1] for d in JOBS for job in rendered[d]}
    ui = one(rendered["base"], "Deployment", "omniret-ui")["spec"]["template"]["spec"]["containers"][0]["command"]
    scripts.add(ui[1])
    present = sorted(s for s in scripts if (REPO / s).is_file())
    runs = {s: subprocess.Popen([sys.executable, s, "--help"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for s in present}
    outputs = {s: p.communicate(timeout=120)[0] for s, p in runs.items()}
    failed = {s: out for s, out in outputs.items() if runs[s].returncode != 0}
    assert not failed, failed
    assert all(flag in outputs[ui[1]] for flag in ui[2::2])
    assert present == sorted(scripts), f"entry points missing: {sorted(scripts - set(present))}"


def test_dockerfile_uses_the_pinned_ray_and_installs_the_package():
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    base = re.search(r"^FROM\s+(\S+)", text, re.M)[1]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
    image, _, tag = base.partition(":")
    assert image == "rayproject/ray" and tag.endswith("-gpu")
    assert tag.split("-")[0] == pinned_ray()
    run = " ".join(re.findall(r"^RUN\s+((?:.*\\\n)*.*)", text, re.M))
    torch_at, project_at = run.index("grep '^torch==' constraints.txt"), run.index("pip install -c constraints.txt .")
    assert torch_at < project_at and " -e " not in run and "--editable" not in run
    installs = [command for command in re.split(r"&&|;", run) if "pip install" in command]
    assert len(installs) == 2 and not any("torchvision" in command for command in installs)
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+(\S+)", text, re.M)
    assert ("ray_jobs/", "ray_jobs/") in copied and ("ui/", "ui/") in copied
    assert ("platform/", "platform/") not in copied  # never into the working directory
    ignore = [line for line in (K8S / "image" / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "**" and not any(".venv" in line or ".omniret" in line for line in ignore)


def test_renderer_applies_json6902_like_rfc_6902():
    doc = {"a": {"b/c": [1, 2]}, "d": 1}
    out = apply_json6902(doc, [
        {"op": "test", "path": "/a/b~1c/1", "value": 2},
        {"op": "add", "path": "/a/b~1c/-", "value": 3},
        {"op": "add", "path": "/a/b~1c/0", "value": 0},
        {"op": "replace", "path": "/d", "value": {"e": 1}},
        {"op": "remove", "path": "/a/b~1c/1"},
    ])
    assert out == {"a": {"b/c": [0, 2, 3]}, "d": {"e": 1}} and doc == {"a": {"b/c": [1, 2]}, "d": 1}
    for bad in ({"op": "test", "path": "/d", "value": 2}, {"op": "replace", "path": "/x", "value": 1},
                {"op": "remove", "path": "/a/b~1c/5"}, {"op": "move", "from": "/d", "path": "/e"}):
        with pytest.raises(RenderError):
            apply_json6902(doc, [bad])


@pytest.mark.parametrize("kustomization", [
    "resources: [cm.yaml]\nnamePrefix: x-\n",
    "resources: [cm.yaml]\npatches:\n- patch: '{metadata: {labels: {a: b}}}'\n  target: {kind: ConfigMap}\n",
    "resources: [cm.yaml]\npatches:\n- patch: '[{op: remove, path: /data}]'\n  target: {kind: Secret}\n",
])
def test_renderer_refuses_what_it_cannot_render_faithfully(tmp_path, kustomization):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: b}\n")
    (tmp_path / "kustomization.yaml").write_text(kustomization)
    with pytest.raises(RenderError):
        render(tmp_path)


@pytest.mark.skipif(kustomize_command() is None, reason="no kustomize or kubectl (pip install '.[dev]' brings kubectl)")
@pytest.mark.parametrize("directory", DIRS)
def test_renderer_agrees_with_kustomize(rendered, directory):
    tool = kustomize_command()
    out = subprocess.run([*tool, str(K8S / directory)], capture_output=True, text=True, check=True, timeout=120)
    key = yaml.safe_dump
    assert sorted(map(key, yaml.safe_load_all(out.stdout))) == sorted(map(key, rendered[directory]))


# ---- hardening: security contexts, token auth, network policies ------------------------------------
HARDENED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}
#: Labels KubeRay adds to every Ray pod, beside the template's own.
KUBERAY_LABELS = {"head": {"ray.io/node-type": "head", "ray.io/is-ray-node": "yes"},
                  "worker": {"ray.io/node-type": "worker", "ray.io/is-ray-node": "yes"}}


def pod_templates(objects: list[dict]) -> list[tuple[str, dict]]:
    """(where, pod template) of every pod the objects create, KubeRay's submitter pods included."""
    out = []
    for obj in objects:
        spec, name = obj.get("spec", {}), f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("RayService", "RayJob"):
            cluster = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
            out.append((f"{name} head", cluster["headGroupSpec"]["template"]))
            out += [(f"{name} {g['groupName']}", g["template"]) for g in cluster.get("workerGroupSpecs", [])]
            if "submitterPodTemplate" in spec:
                out.append((f"{name} submitter", spec["submitterPodTemplate"]))
        elif obj["kind"] == "Deployment":
            out.append((name, spec["template"]))
        elif obj["kind"] == "CronJob":
            out.append((name, spec["jobTemplate"]["spec"]["template"]))
    return out


@pytest.mark.parametrize("directory", DIRS)
def test_every_container_runs_hardened(rendered, directory):
    """Non-root with a fixed uid, no privilege escalation, no capabilities, the runtime's seccomp
    profile, a read-only root filesystem with /tmp an emptyDir; RayJobs declare their submitter pod."""
    templates = pod_templates(rendered[directory])
    assert templates
    for where, template in templates:
        pod = template["spec"]
        empty = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container.get("securityContext", {})
            assert {k: context.get(k) for k in HARDENED} == HARDENED, f"{where} {container['name']}"
            assert context.get("runAsUser", 0) > 0 and context.get("readOnlyRootFilesystem") is True
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and tmp[0]["name"] in empty, f"{where} {container['name']}: /tmp"
    for obj in rendered[directory]:
        if obj["kind"] == "RayJob":
            assert "submitterPodTemplate" in obj["spec"], obj["metadata"]["name"]


@pytest.mark.parametrize("directory", DIRS)
def test_ray_clusters_use_token_auth_from_a_secret_and_a_hardened_autoscaler(rendered, directory):
    clusters = [o["spec"].get("rayClusterConfig") or o["spec"]["rayClusterSpec"] for o in rendered[directory]
                if o["kind"] in ("RayService", "RayJob")]
    assert clusters
    for cluster in clusters:
        assert cluster["authOptions"] == {"mode": "token", "secretName": "omniret-ray-auth"}
        if cluster.get("enableInTreeAutoscaling"):
            context = cluster["autoscalerOptions"]["securityContext"]
            assert {k: context.get(k) for k in HARDENED} == HARDENED


def _selects(selector: dict, labels: dict) -> bool:
    expressions = selector.get("matchExpressions", [])
    assert not expressions, "this check reads matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admits(policies: list[dict], target: dict, source: dict, port: int, source_ns: dict | None = None) -> bool:
    """Whether the NetworkPolicies let a pod labelled ``source`` (in the same namespace, unless
    ``source_ns`` gives the labels of another one) reach port ``port`` of a pod labelled ``target``."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True  # no policy selects the pod: everything is allowed
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            for peer in rule.get("from", []):
                ns_ok = _selects(peer["namespaceSelector"], source_ns or {}) if "namespaceSelector" in peer \
                    else source_ns is None
                pod_ok = _selects(peer["podSelector"], source) if "podSelector" in peer else True
                if ns_ok and pod_ok:
                    return True
    return False


@pytest.mark.parametrize("directory", STACKS)
def test_network_policies_close_the_ray_head_and_the_ui(rendered, directory):
    objects = rendered[directory]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    service = one(objects, "RayService")["spec"]["rayClusterConfig"]
    head = {**service["headGroupSpec"]["template"]["metadata"]["labels"], **KUBERAY_LABELS["head"]}
    worker = {**service["workerGroupSpecs"][0]["template"]["metadata"]["labels"], **KUBERAY_LABELS["worker"]}
    ui = one(objects, "Deployment", "omniret-ui")["spec"]["template"]["metadata"]["labels"]
    submitter = {"app.kubernetes.io/name": "omniret", "omniret/ray-client": "true"}
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    stranger, control = {"app": "something-else"}, (6379, 8265, 10001)
    assert any(_selects(p["spec"]["podSelector"], head) for p in policies)  # a policy selects the head
    for port in (*control, 8000):
        assert not admits(policies, head, stranger, port) and not admits(policies, worker, stranger, port)
        assert not admits(policies, head, stranger, port, source_ns={"kubernetes.io/metadata.name": "other"})
        assert admits(policies, head, worker, port)  # Ray traffic inside the cluster
    assert admits(policies, head, operator, 8265, source_ns={"kubernetes.io/metadata.name": "ray-system"})
    assert admits(policies, head, submitter, 8265) and not admits(policies, head, submitter, 6379)
    assert admits(policies, worker, ui, 8000) and not any(admits(policies, head, ui, p) for p in control)
    assert admits(policies, worker, {}, 8000, source_ns={"omniret/api-ingress": "true"})
    # The UI holds the API key and has no login: reachable only from pods labelled for it.
    assert not admits(policies, ui, stranger, 7860) and not admits(policies, ui, worker, 7860)
    assert admits(policies, ui, {"omniret/ui-access": "true"}, 7860)
