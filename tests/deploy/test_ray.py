"""`pdserve up --ray ADDRESS`: workers as Ray actors on a two-node Ray cluster with token auth.

The cluster (tests/deploy/ray_cluster.py) runs on this machine: a head and a second node, one CPU
each, so the two one-CPU worker actors can only land one per node. `pdserve up` gets the
cluster's token in $RAY_AUTH_TOKEN and no $RAY_AUTH_MODE: turning token mode on for an explicit
address is its job. The test itself joins the cluster as a second driver to look at the actors.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.deploy.ray_cluster import LocalRayCluster, start_two_nodes
from tests.server.conftest import free_port, pid_alive, wait_healthy

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (the `ray` extra: pip install -e '.[ray]')",
)

TINY_MODEL = "dummy:tiny-llama"
MAX_TOKENS = 6
PROMPTS = [[(11 * i + j) % 500 + 1 for j in range(4 + 5 * i)] for i in range(4)]
NODE_JOIN_TIMEOUT_S = 90
OUT_OF_ROTATION_TIMEOUT_S = 5  # the launcher reports a dead actor within 0.1 s
GONE_TIMEOUT_S = 15


@pytest.fixture(scope="module")
def cluster():
    local = start_two_nodes()
    try:
        yield local
    finally:
        local.stop()


@contextlib.contextmanager
def joined(cluster: LocalRayCluster):
    """This process as a second driver, once both nodes are up (token mode is set before ray's
    import, which is when Ray reads it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", cluster.token)
        import ray

        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        try:
            deadline = time.monotonic() + NODE_JOIN_TIMEOUT_S
            while sum(node["Alive"] for node in ray.nodes()) < 2:
                assert time.monotonic() < deadline, "the second Ray node did not join"
                time.sleep(0.2)
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def ray_fleet(cluster: LocalRayCluster):
    """`pdserve up --ray`, started while the second node is still joining (Ray queues the
    actor that needs it)."""
    port = free_port()
    cmd = [sys.executable, "-m", "pdserve.cli", "up", TINY_MODEL, "--ray", cluster.address,
           "--instances", "2", "--port", str(port), "--worker-threads", "1",
           "--max-model-len", "128", "--num-blocks", "64", "--routing", "round_robin"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_TOKEN": cluster.token}
    env.pop("RAY_AUTH_MODE", None)  # pdserve must turn token mode on by itself
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with joined(cluster):
            wait_healthy(proc, url, "pdserve up --ray")
            yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def actors(ray_fleet) -> dict[str, tuple[object, dict]]:
    """instance id -> (actor handle, where it runs), for the fleet's named actors."""
    import ray

    found = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"].startswith("pdserve-"):
            handle = ray.get_actor(entry["name"], namespace=entry["namespace"])
            where = {**ray.get(handle.where.remote()), "namespace": entry["namespace"]}
            found[entry["name"].split(".")[0]] = (handle, where)
    return found


@pytest.fixture(scope="module")
def reference_ids() -> list[list[int]]:
    from pdserve.engine.llm import LLM
    from pdserve.types import SamplingParams

    llm = LLM(TINY_MODEL, max_model_len=128, num_blocks=64)
    sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    return [out.token_ids for out in llm.generate(PROMPTS, sampling)]


def completion_ids(url: str, prompt: list[int]) -> list[int]:
    body = {"model": TINY_MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True, "logprobs": 0}  # fmt: skip
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return [int(t.strip("<>")) for t in r.json()["choices"][0]["logprobs"]["tokens"]]


def metric(url: str, name: str) -> dict[str, float]:
    """label text (or "") -> value of every sample of `name`."""
    samples = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            samples[key[len(name) :]] = float(value)
    return samples


@pytest.mark.parametrize("source", ["env", "path", "home", "empty file", "none"])
def test_a_ray_token_is_found_where_ray_looks(source, tmp_path, monkeypatch):
    from pdserve.deploy.ray_fleet import has_ray_token

    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "t").write_text("" if source == "empty file" else "abc123")
    if source == "env":
        monkeypatch.setenv("RAY_AUTH_TOKEN", "abc123")
    elif source in ("path", "empty file"):
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    elif source == "home":
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("abc123\n")
    assert has_ray_token() is (source in ("env", "path", "home"))


def test_each_worker_is_a_ray_actor_and_they_span_both_nodes(cluster, actors):
    import ray

    node_ids = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert sorted(actors) == ["worker-0", "worker-1"]
    assert {where["node_id"] for _, where in actors.values()} == node_ids
    assert len(node_ids) == 2
    for _, where in actors.values():
        assert pid_alive(where["worker_pid"]) and where["gpu_ids"] == []


def test_greedy_outputs_through_the_ray_fleet_equal_one_engine(ray_fleet, reference_ids):
    _, url = ray_fleet
    assert [completion_ids(url, p) for p in PROMPTS] == reference_ids
    routed = metric(url, "pdserve:controller_routed_requests_total")
    assert routed == {'{instance="worker-0"}': 2.0, '{instance="worker-1"}': 2.0}


def test_a_killed_actor_is_out_of_rotation_and_the_fleet_keeps_serving(
    ray_fleet, actors, reference_ids
):
    import ray

    _, url = ray_fleet
    handle, where = actors["worker-0"]
    routed_before = metric(url, "pdserve:controller_routed_requests_total")
    ray.kill(handle)
    deadline = time.monotonic() + OUT_OF_ROTATION_TIMEOUT_S
    while metric(url, "pdserve:controller_live_instances")[""] != 1.0:
        assert time.monotonic() < deadline, "the killed worker is still in rotation"
        time.sleep(0.1)
    assert [completion_ids(url, p) for p in PROMPTS] == reference_ids
    routed = metric(url, "pdserve:controller_routed_requests_total")
    assert routed['{instance="worker-0"}'] == routed_before.get('{instance="worker-0"}', 0.0)
    assert routed['{instance="worker-1"}'] == routed_before['{instance="worker-1"}'] + 4
    _wait_gone(lambda: pid_alive(where["worker_pid"]), "the killed actor's worker process")


def test_ctrl_c_leaves_no_ray_actors_and_no_worker_processes(ray_fleet, actors):
    import ray

    proc, _ = ray_fleet
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    namespaces = {where["namespace"] for _, where in actors.values()}

    def fleet_actors() -> list:
        named = ray.util.list_named_actors(all_namespaces=True)
        return [e for e in named if e["namespace"] in namespaces]

    _wait_gone(lambda: bool(fleet_actors()), "the fleet's Ray actors")
    for instance_id, (_, where) in actors.items():
        _wait_gone(lambda w=where: pid_alive(w["worker_pid"]), f"{instance_id}'s worker process")


def _wait_gone(is_there, what: str) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while is_there():
        assert time.monotonic() < deadline, f"{what} outlived the fleet"
        time.sleep(0.1)
