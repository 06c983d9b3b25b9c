"""Local placement gives each worker its own GPU (CUDA_VISIBLE_DEVICES), across role fleets."""

from pdserve.deploy import local
from pdserve.deploy.local import LocalFleetConfig, split_gpus, visible_gpus


def test_split_gpus_one_per_worker_in_order_across_fleets():
    assert split_gpus(("0", "1", "2", "3"), [1, 3]) == [("0",), ("1", "2", "3")]
    assert split_gpus(("0", "1"), [2, 1]) == [("0", "1"), ("0",)]  # more workers than GPUs
    assert split_gpus((), [2, 1]) == [(), ()]


def test_worker_env_sets_the_gpu_and_keeps_the_rest():
    config = LocalFleetConfig(3, env={"PDSERVE_CONTROL_TOKEN": "t"}, gpus=("4", "6"))
    assert config.worker_env(0) == {"PDSERVE_CONTROL_TOKEN": "t", "CUDA_VISIBLE_DEVICES": "4"}
    assert config.worker_env(1)["CUDA_VISIBLE_DEVICES"] == "6"
    assert config.worker_env(2)["CUDA_VISIBLE_DEVICES"] == "4"
    assert LocalFleetConfig(1, env={"A": "b"}).worker_env(0) == {"A": "b"}


def test_visible_gpus_from_the_environment_or_nvidia_smi(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpus() == ("2", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == ()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    class Listed:
        returncode = 0
        stdout = "GPU 0: NVIDIA H100 (UUID: a)\nGPU 1: NVIDIA H100 (UUID: b)\n"

    monkeypatch.setattr(local.subprocess, "run", lambda *a, **k: Listed())
    assert visible_gpus() == ("0", "1")

    def missing(*a, **k):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(local.subprocess, "run", missing)
    assert visible_gpus() == ()


def test_index_mode_keeps_every_gpu_visible_and_passes_the_device_flag():
    """CUDA IPC fleets: workers agree on device indices, so each runs on `--device cuda:N`."""
    config = LocalFleetConfig(3, env={"A": "b"}, gpus=("0", "1"), gpu_mode="index")
    assert config.worker_env(1) == {"A": "b"}
    assert [config.device_argv(i) for i in range(3)] == [
        ("--device", "cuda:0"),
        ("--device", "cuda:1"),
        ("--device", "cuda:0"),
    ]
    assert LocalFleetConfig(2, gpus=("0", "1")).device_argv(1) == ()
    args = local.worker_args(config, "tcp://x", "worker-1", config.device_argv(1))
    # the per-worker flag comes after the shared ones, so it wins over a shared --device
    assert args[-2:] == ["--device", "cuda:1"]
