"""`pdserve up [MODEL] --instances N`: a fleet of workers behind one controller serving the same
OpenAI API as `pdserve serve` (the server app with the controller as its EngineClient).

    pdserve up dummy:tiny-llama --instances 3 --routing ttft --slo-ttft-ms 500
    pdserve up dummy:tiny-llama --prefill 1 --decode 1 --pd-disaggregation cost
    pdserve up --attach 2 --control-address tcp://0.0.0.0:5555 --control-token T
        # then, on any host:  python -m pdserve.engine.worker --driver tcp://HOST:5555 ...

Workers register with the control token (PDSERVE_CONTROL_TOKEN in their environment, or
`--control-token`), which is separate from the user API key (`--api-key`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import time

LOOPBACK = ("tcp://127.0.0.1:", "tcp://localhost:", "ipc://", "inproc://")
# PD link assumed by the cost model unless --pd-link-gbps says: CUDA IPC measured 100 GB/s for
# a 1 k-token 8B request between two H100s (docs/benchmarks.md); NIXL over a 100 Gb/s NIC ~10.
CUDA_IPC_LINK_GBPS = 100.0
DEFAULT_LINK_GBPS = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pdserve.cluster.policies import DEFAULT_POLICY, POLICIES
    from pdserve.config import env_str
    from pdserve.server.cli import add_arguments as add_server_arguments

    add_server_arguments(parser)
    parser.add_argument("--instances", type=int, default=2, help="local workers to start")
    parser.add_argument(
        "--attach",
        type=int,
        default=0,
        metavar="N",
        help="start no workers; wait for N to connect to --control-address",
    )
    parser.add_argument(
        "--control-address",
        default="tcp://127.0.0.1:*",
        help="where workers connect (ZMQ bind address)",
    )
    parser.add_argument(
        "--control-token",
        default=env_str("PDSERVE_CONTROL_TOKEN") or None,
        help="workers must register with it (default: random when the control "
        "address is not loopback)",
    )
    parser.add_argument("--routing", default=DEFAULT_POLICY, choices=sorted(POLICIES))
    parser.add_argument(
        "--slo-ttft-ms",
        type=float,
        default=None,
        help="refuse (429) requests whose best estimated TTFT misses this",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=1,
        help="re-routes of a request whose instance died before its first token",
    )
    parser.add_argument("--heartbeat-timeout-s", type=float, default=1.0)
    parser.add_argument("--prefill", type=int, default=0, metavar="P", help="PD: prefill workers")
    parser.add_argument("--decode", type=int, default=0, metavar="D", help="PD: decode workers")
    parser.add_argument(
        "--pd-disaggregation",
        default="cost",
        choices=("cost", "always", "never"),
        help="PD: prefill on a prefill instance when the cost model says it beats prefilling on "
        "the decode instance (cost), or force either",
    )
    parser.add_argument(
        "--pd-link-gbps",
        type=float,
        default=None,
        help="PD: prefill -> decode link, GB/s (default: 100 with cuda_ipc, measured on two "
        "H100s; else 10)",
    )
    parser.add_argument(
        "--pd-link-latency-ms", type=float, default=1.0, help="PD: per-transfer latency, ms"
    )
    parser.add_argument(
        "--pd-max-decode-step-ms",
        type=float,
        default=50.0,
        help="PD cost mode: a busy decode instance prefills locally only if the step with the "
        "prefill stays under this (the running requests' TBT budget)",
    )
    parser.add_argument("--kv-transport", default="nixl", choices=("nixl", "inproc", "cuda_ipc"))
    parser.add_argument(
        "--prefix-pull",
        default="off",
        choices=("off", "cost", "always"),
        help="pull a longer cached prefix from another instance when the cost model says it is "
        "faster than recomputing it (cost), or whenever one holds more (always); link as "
        "--pd-link-gbps / --pd-link-latency-ms",
    )
    parser.add_argument(
        "--restart-workers", action="store_true", help="start a local worker again when it exits"
    )
    parser.add_argument(
        "--fake-workers",
        action="store_true",
        help="scheduler-only workers without a model (tests, benchmarks)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="place the workers as Ray actors on the Ray cluster at ADDRESS (default: the "
        "one running here); the controller binds on this node's IP",
    )


def controller_config(args: argparse.Namespace):
    from pdserve.cluster.controller import ControllerConfig
    from pdserve.cluster.pd_router import PDConfig
    from pdserve.cluster.policies import PolicyConfig
    from pdserve.cluster.pull import PullConfig

    slo = None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1000
    policy = PolicyConfig(max_batched_tokens=args.max_num_batched_tokens)
    link_gbps = args.pd_link_gbps
    if link_gbps is None:
        link_gbps = CUDA_IPC_LINK_GBPS if args.kv_transport == "cuda_ipc" else DEFAULT_LINK_GBPS
    return ControllerConfig(
        args.control_address,
        args.routing,
        policy,
        args.heartbeat_timeout_s,
        args.max_retries,
        slo,
        control_token=args.control_token,
        pd=PDConfig(
            args.pd_disaggregation,
            link_gbps,
            args.pd_link_latency_ms / 1000,
            max_decode_step_s=args.pd_max_decode_step_ms / 1000,
        ),
        pull=None
        if args.prefix_pull == "off"
        else PullConfig(args.prefix_pull, link_gbps, args.pd_link_latency_ms / 1000),
    )


def fleet_roles(args: argparse.Namespace) -> list[tuple[str, int, list[str]]]:
    """(id prefix, number, extra worker flags) per group of local workers."""
    transport = ["--kv-transport", args.kv_transport]
    if not (args.prefill or args.decode):
        return [("worker", args.instances, transport if args.prefix_pull != "off" else [])]
    return [
        (role, num, ["--role", role, *transport])
        for role, num in (("prefill", args.prefill), ("decode", args.decode))
        if num
    ]


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from pdserve.cluster.controller import Controller
    from pdserve.cluster.prom import ControllerMetrics
    from pdserve.deploy.local import (
        FAKE_WORKER_MODULE,
        WORKER_MODULE,
        LocalFleet,
        LocalFleetConfig,
        split_gpus,
        visible_gpus,
    )
    from pdserve.server.app import build_app
    from pdserve.server.cli import Progress, load_server_tokenizer, worker_argv
    from pdserve.server.generation import ServerConfig, ServerState

    fleet_class = LocalFleet
    if args.ray is not None:
        if args.attach:
            print("pdserve up: --ray places workers; --attach waits for them", file=sys.stderr)
            return 2
        from pdserve.deploy.ray_fleet import RayFleet, connect, disconnect

        try:
            node_ip = connect(args.ray)
        except (ConnectionError, ImportError) as e:
            print(f"pdserve up: {e}", file=sys.stderr)
            return 2
        for loopback in LOOPBACK[:2]:  # other nodes must reach it: bind on this node's IP
            if args.control_address.startswith(loopback):
                port = args.control_address[len(loopback) :]
                args.control_address = f"tcp://{node_ip}:{port}"
        fleet_class = RayFleet
    args.model = args.model_arg or args.model
    if args.control_token is None and not args.control_address.startswith(LOOPBACK):
        args.control_token = secrets.token_urlsafe(16)
        print(f"[pdserve] control token: {args.control_token}", file=sys.stderr)
    progress = Progress()
    config = ServerConfig(
        args.served_model_name, args.api_key, args.max_body_bytes, args.max_waiting
    )
    state = ServerState(None, None, config)
    controller = Controller(controller_config(args), ControllerMetrics(state.metrics.registry))
    state.engine = controller
    roles = fleet_roles(args)
    num = args.attach or sum(n for _, n, _ in roles)
    fleets = []
    if not args.attach:
        argv = worker_argv(args) if not args.fake_workers else _fake_argv(args)
        env = {"PDSERVE_CONTROL_TOKEN": args.control_token} if args.control_token else {}
        module = FAKE_WORKER_MODULE if args.fake_workers else WORKER_MODULE
        # One GPU per local worker (Ray places its own): worker i of the fleet gets GPU i.
        on_gpu = (
            fleet_class is LocalFleet and args.device in ("auto", "cuda") and not args.fake_workers
        )
        # CUDA IPC hands device indices between workers: they all see every GPU, each runs
        # on its own by index (`--device cuda:N`) instead of CUDA_VISIBLE_DEVICES.
        gpu_mode = "index" if args.kv_transport == "cuda_ipc" else "env"
        visible = visible_gpus() if on_gpu else ()
        if gpu_mode == "index":
            visible = tuple(str(i) for i in range(len(visible)))
        gpus = split_gpus(visible, [n for _, n, _ in roles])
        for (prefix, n, extra), fleet_gpus in zip(roles, gpus):
            fleet_config = LocalFleetConfig(
                n, (*argv, *extra), module, id_prefix=prefix, restart=args.restart_workers,
                env=env, gpus=fleet_gpus, gpu_mode=gpu_mode,
            )  # fmt: skip
            fleets.append(fleet_class(fleet_config, controller.address, controller.mark_dead))
    failure: list[str] = []
    server: uvicorn.Server | None = None

    async def start() -> None:
        spinner = asyncio.create_task(progress.spin())
        progress.update(f"waiting for {num} worker(s) on {controller.address}")
        try:
            if not args.fake_workers:
                state.tokenizer = await asyncio.to_thread(load_server_tokenizer, args.model)
            expected = [i for fleet in fleets for i in fleet.instance_ids]
            await controller.wait_for_instances(num, expected=expected)
            state.is_ready = True
            elapsed = time.monotonic() - progress.start
            progress.done(
                f"ready in {elapsed:.1f} s: {num} instance(s) of "
                f"{', '.join(state.model_names())}, routing {args.routing}, "
                f"on http://{args.host}:{args.port}"
            )
        except Exception as e:
            failure.append(str(e))
            progress.done(f"error: {e}")
            server.should_exit = True
        finally:
            spinner.cancel()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        controller.start()
        for fleet in fleets:
            fleet.start()
        starting = asyncio.create_task(start())
        try:
            yield
        finally:
            starting.cancel()
            await controller.close(shutdown_workers=bool(fleets))
            for fleet in fleets:
                await fleet.close()
            if args.ray is not None:
                disconnect()

    app = build_app(state, lifespan, enable_debug=args.enable_debug_endpoints)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=5,
        )
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        for fleet in fleets:
            fleet.kill_all()  # last resort: never leave workers behind
    return 1 if failure else 0


def _fake_argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "--block-size",
        str(args.block_size),
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--max-num-batched-tokens",
        str(args.max_num_batched_tokens),
    ]
    if args.num_blocks is not None:
        argv += ["--num-blocks", str(args.num_blocks)]
    if args.max_model_len:
        argv += ["--max-model-len", str(args.max_model_len)]
    return argv
