"""`ray job submit --working-dir . -- python ray_jobs/train.py --config ray_jobs/configs/quickstart.yaml`
against a real `ray start --head` (own temp dir and ports, token auth off): both quickstart stages train,
mine, evaluate and export, the second starting from the first one's output.

The head runs in a Python that has the dependencies but no omniret (a venv whose site-packages path
points at this environment's, without running its .pth files, so the editable install is not seen,
and without PYTHONPATH): the job succeeds only on the code it was submitted with."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from omniret.config import SyntheticConfig
from omniret.data.synthetic import generate_benchmark

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not RAY.is_file(), reason="the ray CLI is not installed")]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _python_without_omniret(folder: Path) -> Path:
    """A venv that sees this environment's packages but not omniret; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    site = next((folder / "lib").glob("python3*/site-packages"))
    # A path line in a .pth file adds that folder to sys.path without processing the .pth files in it,
    # so the editable install's own .pth (which points at the sources) is not run.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder / "bin" / "python"


@pytest.fixture
def ray_head():
    """A head node of our own: explicit ports, a short temp dir, stopped by its PID (never `ray stop`),
    in a Python without omniret."""
    temp = tempfile.mkdtemp(prefix="ort", dir="/tmp")  # unix socket paths must stay short
    python = _python_without_omniret(Path(temp) / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0",
                "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"})  # the job's `python`
    probe = subprocess.run([str(python), "-c", "import ray, torch, transformers, lancedb; import omniret"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert "No module named 'omniret'" in probe.stderr, probe.stderr[-2000:]  # dependencies yes, omniret no
    gcs, dashboard, client, node, objects, agent, agent_grpc, runtime_env, metrics = _free_ports(9)
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        [str(python), "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()",
         "start", "--head", "--block", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client), "--node-manager-port",
         str(node), "--object-manager-port", str(objects), "--dashboard-agent-listen-port", str(agent),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
         "--metrics-export-port", str(metrics), "--num-cpus", "2", "--temp-dir", temp, "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if head.poll() is not None:
                pytest.fail(f"ray start exited: {(Path(temp) / 'head.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{address}/api/version", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the Ray dashboard did not come up")
        # The client side (`ray job submit`) runs from this environment; only the cluster lacks omniret.
        yield address, {**os.environ, "RAY_AUTH_MODE": "disabled"}
    finally:
        # Our head runs in its own process group (start_new_session): stop that group, nothing else.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_the_quickstart_recipe(ray_head, tiny_dirs, tmp_path):
    address, env = ray_head
    bench = tmp_path / "bench"
    generate_benchmark(bench, SyntheticConfig(train_per_task=12, eval_queries=2, tasks=["syn_cls_color", "syn_t2i"]))
    runs = tmp_path / "runs"
    command = [str(RAY), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
               "python", "ray_jobs/train.py", "--config", "ray_jobs/configs/quickstart.yaml", "--root", str(ROOT),
               f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{bench / 'train'}]", f"eval.root={bench / 'eval'}",
               f"train.output_dir={runs}", "train.max_steps=2", "train.batch_size=8", "train.eval_every=0",
               "train.cache_mb=0", "mine.skip_top=0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "succeeded" in output
    stage1, stage2 = runs / "quickstart-stage1", runs / "quickstart-stage2"
    for stage in (stage1, stage2):
        assert (stage / "final" / "config.json").is_file()
        assert (stage / "checkpoint_000002").is_dir() and (stage / "eval" / "final" / "report.json").is_file()
    resolved = yaml.safe_load((stage2 / "config.yaml").read_text())
    assert resolved["model"]["path"] == str(stage1 / "final")  # stage 2 starts from stage 1's output
    assert resolved["data"]["train"] == [str(stage2 / "mined")] and (stage2 / "mined" / "syn_t2i.jsonl").is_file()
    assert f"quickstart-stage2: output {stage2 / 'final'}" in output
    # Progress from the Train workers and the export reaches the submitter's output.
    assert "step 2/2 epoch" in output and "embedded evaluation set" in output and "exported" in output
