"""Controller overhead with fake instant workers: routing decision time p50/p99 and routed
requests/s, the controller pinned to one core.

    python benchmarks/bench_controller.py [--routing ttft,round_robin,prefix] [--repeat 3]
        [--mode engine,http] [--instances 4] [--requests 4000] [--out docs/results/F.json]

Workers are `pdserve.deploy.fake_worker` processes (the real worker loop and Scheduler, steps
take no time), pinned to the other core when there is one. Each request is a shared-prefix
prompt (16 system prompts of 512 tokens + a 32-token question) with max_tokens=1, so every
request costs the controller one route (snapshots, prompt hashing, prefix-index lookup, policy),
one SUBMIT, one TOKENS message and the KV events of its blocks.

Two modes, reported apart:
  engine  the controller below HTTP: 64 client tasks call `Controller.generate` (the
          EngineClient interface) in the controller's own process and event loop.
  http    the whole `pdserve up` front end: the OpenAI server app (FastAPI on uvicorn) with the
          controller as its EngineClient in this process; a load-generator process (raw HTTP/1.1
          keep-alive, 64 connections, pinned with the workers) posts /v1/completions.

Besides wall-clock req/s (which on a shared machine depends on what else runs), the controller
process's CPU seconds over the measured window are reported: `cpu_us_per_req` and its inverse
`req_per_cpu_s`, the rate one core fully given to the controller would sustain.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import time

from pdserve.cluster.controller import Controller, ControllerConfig
from pdserve.cluster.prom import ControllerMetrics
from pdserve.deploy.local import FAKE_WORKER_MODULE, LocalFleet, LocalFleetConfig
from pdserve.types import Request, SamplingParams

MODEL_NAME = "fake"
CORES = sorted(os.sched_getaffinity(0))  # before pinning: later runs pin again


class RecordingMetrics(ControllerMetrics):
    def __init__(self, registry=None):
        super().__init__(registry)
        self.route_times_s: list[float] = []

    def observe_route(self, instance_id, seconds, est_ttft_s, num_matched_tokens) -> None:
        self.route_times_s.append(seconds)
        super().observe_route(instance_id, seconds, est_ttft_s, num_matched_tokens)


def prompts(num: int, seed: int = 0) -> list[tuple[int, ...]]:
    """Token ids below 1000 (the fake model's vocabulary is 1024, checked over HTTP)."""
    rng = random.Random(seed)
    systems = [[10 + (512 * s + t) % 990 for t in range(512)] for s in range(16)]
    return [
        tuple(rng.choice(systems) + [rng.randrange(10, 999) for _ in range(32)]) for _ in range(num)
    ]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Window:
    """CPU of this process and of the workers, wall time and load over the measured window."""

    def __init__(self, worker_pids: list[int]):
        self.worker_pids = worker_pids
        self.load_before = os.getloadavg()[0]
        self.cpu0 = time.process_time()
        self.workers0 = sum(proc_cpu_s(p) for p in worker_pids)
        self.wall0 = time.perf_counter()

    def close(self, num_requests: int) -> dict:
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        workers = sum(proc_cpu_s(p) for p in self.worker_pids) - self.workers0
        return {
            "routed_req_per_s": num_requests / wall,
            "cpu_us_per_req": 1e6 * cpu / num_requests,
            "req_per_cpu_s": num_requests / cpu,
            "cpu_busy": cpu / wall,
            "worker_cpu_us_per_req": 1e6 * workers / num_requests,
            "load_1m": (self.load_before + os.getloadavg()[0]) / 2,
        }


def pin(fleet: LocalFleet) -> None:
    """Every thread of this process (the ZMQ I/O thread too) on the first core, the workers
    on the others."""
    if len(CORES) > 1:
        for proc in fleet.procs.values():
            os.sched_setaffinity(proc.pid, set(CORES[1:]))
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {CORES[0]})


async def start(args, routing: str, metrics: ControllerMetrics):
    controller = Controller(ControllerConfig(routing=routing), metrics)
    argv = ("--step-base-ms", "0", "--step-token-us", "0", "--num-blocks", "4096")
    env = {"OMP_NUM_THREADS": "1"}
    fleet_config = LocalFleetConfig(args.instances, argv, FAKE_WORKER_MODULE, env=env)
    fleet = LocalFleet(fleet_config, controller.address, on_exit=controller.mark_dead)
    controller.start()
    fleet.start()
    pin(fleet)
    await controller.wait_for_instances(args.instances, 60)
    return controller, fleet


def summary(routing: str, mode: str, args, times_s: list[float], window: dict) -> dict:
    times = sorted(times_s)
    return {
        "routing": routing,
        "mode": mode,
        "instances": args.instances,
        "requests": args.requests,
        "route_p50_ms": 1e3 * statistics.median(times),
        "route_p99_ms": 1e3 * times[int(0.99 * (len(times) - 1))],
        **window,
    }


async def run_engine(args, routing: str) -> dict:
    metrics = RecordingMetrics()
    controller, fleet = await start(args, routing, metrics)
    sampling = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    work = prompts(args.requests + args.warmup)
    next_i = 0

    async def client() -> None:
        nonlocal next_i
        while next_i < len(work):
            i, next_i = next_i, next_i + 1
            async for _ in controller.generate(Request(f"r{i}", work[i], sampling)):
                pass

    await asyncio.gather(*(client() for _ in range(args.concurrency)))  # warm-up: fills caches
    work, next_i = prompts(args.requests, seed=1), 0
    metrics.route_times_s.clear()
    window = Window([p.pid for p in fleet.procs.values()])
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    result = window.close(args.requests)
    await controller.close()
    await fleet.close()
    return summary(routing, "engine", args, metrics.route_times_s, result)


async def run_http(args, routing: str) -> dict:
    import socket

    import uvicorn

    from pdserve.server.app import build_app
    from pdserve.server.generation import ServerConfig, ServerState

    state = ServerState(None, None, ServerConfig(MODEL_NAME, max_waiting=1 << 20))
    metrics = RecordingMetrics(state.metrics.registry)
    controller, fleet = await start(args, routing, metrics)
    state.engine, state.is_ready = controller, True
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(build_app(state), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    cmd = [sys.executable, __file__, "--load-client", str(port), "--requests", str(args.requests),
           "--warmup", str(args.warmup), "--concurrency", str(args.concurrency)]  # fmt: skip
    client = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE
    )
    if len(CORES) > 1:
        os.sched_setaffinity(client.pid, set(CORES[1:]))
    assert (await client.stdout.readline()).strip() == b"warm"
    metrics.route_times_s.clear()
    window = Window([p.pid for p in fleet.procs.values()])
    client.stdin.write(b"go\n")
    await client.stdin.drain()
    line = await client.stdout.readline()
    result = window.close(args.requests)
    errors = int(line.split()[1])
    if errors:
        raise RuntimeError(f"{errors} HTTP requests failed")
    await client.wait()
    server.should_exit = True
    await serving
    await controller.close()
    await fleet.close()
    return summary(routing, "http", args, metrics.route_times_s, result)


async def load_client(port: int, args) -> None:
    """Raw HTTP/1.1 keep-alive load: warm-up, print "warm", wait for "go", measure, print."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def body(tokens: tuple[int, ...]) -> bytes:
        data = json.dumps({"model": MODEL_NAME, "prompt": list(tokens), "max_tokens": 1,
                           "temperature": 0, "ignore_eos": True}).encode()  # fmt: skip
        head = (f"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: "
                f"application/json\r\ncontent-length: {len(data)}\r\n\r\n")  # fmt: skip
        return head.encode() + data

    errors = 0

    async def connection(queue: list[bytes]) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            writer.write(queue.pop())
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            data = await reader.readexactly(length)
            if b" 200 " not in status:
                errors += 1
                if errors == 1:
                    print(status, data[:300], file=sys.stderr)
        writer.close()

    async def phase(work: list[tuple[int, ...]]) -> None:
        queue = [body(t) for t in reversed(work)]
        await asyncio.gather(*(connection(queue) for _ in range(args.concurrency)))

    await phase(prompts(args.warmup))
    print("warm", flush=True)
    await stdin.readline()
    await phase(prompts(args.requests, seed=1))
    print("done", errors, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--routing", default="ttft", help="comma-separated policies")
    parser.add_argument("--mode", default="engine", help="comma-separated: engine, http")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; median shown")
    parser.add_argument("--out", default=None, help="write all runs and medians as JSON")
    parser.add_argument("--load-client", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_client is not None:
        asyncio.run(load_client(args.load_client, args))
        return
    runs, medians = [], []
    keys = ("route_p50_ms", "route_p99_ms", "routed_req_per_s", "cpu_us_per_req",
            "req_per_cpu_s", "cpu_busy", "worker_cpu_us_per_req", "load_1m")  # fmt: skip
    for mode in args.mode.split(","):
        for routing in args.routing.split(","):
            group = []
            for _ in range(args.repeat):
                bench = run_engine if mode == "engine" else run_http
                group.append(asyncio.run(bench(args, routing)))
                print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in group[-1].items()), flush=True)  # fmt: skip
            runs += group
            medians.append(
                {**group[0], **{k: statistics.median(r[k] for r in group) for k in keys}}
            )
    print(f"\nmedian of {args.repeat} run(s)")
    columns = (("mode", "mode", "7"), ("routing", "routing", "12"),
               ("p50 ms", "route_p50_ms", "7.3f"), ("p99 ms", "route_p99_ms", "7.3f"),
               ("req/s", "routed_req_per_s", "7.0f"),
               ("cpu us/req", "cpu_us_per_req", "10.0f"), ("req/cpu-s", "req_per_cpu_s", "9.0f"),
               ("busy", "cpu_busy", "5.2f"), ("worker us/req", "worker_cpu_us_per_req", "13.0f"),
               ("load", "load_1m", "5.2f"))  # fmt: skip
    print(" ".join(f"{title:>{fmt.split('.')[0]}}" for title, _, fmt in columns))
    for m in medians:
        print(" ".join(f"{m[key]:{fmt}}" for _, key, fmt in columns))
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()  # fmt: skip
        meta = {"date": datetime.date.today().isoformat(), "commit": commit,
                "cpus": os.cpu_count(), "argv": sys.argv[1:]}  # fmt: skip
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "medians": medians, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
