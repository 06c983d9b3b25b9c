"""`pdserve serve [MODEL] --host --port`: the OpenAI server over one engine worker process.

The HTTP server comes up at once and answers 503 while the worker loads (progress on stderr);
Ctrl-C shuts the worker down; a worker whose parent dies exits by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

DUMMY_PREFIX = "dummy:"  # as pdserve.model.loader (not imported here: it pulls in torch)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pdserve.engine.cli import add_engine_arguments

    parser.add_argument("model_arg", nargs="?", default=None, metavar="MODEL",
                        help="same as --model")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--max-body-bytes", type=int, default=8 * 2**20)
    parser.add_argument("--max-waiting", type=int, default=1024,
                        help="requests without a first token before answering 429")  # fmt: skip
    parser.add_argument("--worker-threads", type=int, default=None,
                        help="torch threads of the worker (default: all cores)")  # fmt: skip
    parser.add_argument("--enable-debug-endpoints", action="store_true",
                        help="GET /debug/status, POST /debug/check_integrity (tests)")  # fmt: skip
    parser.add_argument("--log-level", default="warning")
    add_engine_arguments(parser)


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The engine flags of `args`, for the worker's command line."""
    argv = ["--model", args.model, "--dtype", args.dtype, "--device", args.device,
            "--block-size", str(args.block_size), "--max-num-seqs", str(args.max_num_seqs),
            "--max-num-batched-tokens", str(args.max_num_batched_tokens),
            "--max-model-len", str(args.max_model_len), "--seed", str(args.seed),
            "--gpu-memory-utilization", str(args.gpu_memory_utilization),
            "--async-scheduling", args.async_scheduling]  # fmt: skip
    if args.enforce_eager:
        argv.append("--enforce-eager")
    if args.num_blocks is not None:
        argv += ["--num-blocks", str(args.num_blocks)]
    if args.no_prefix_caching:
        argv.append("--no-prefix-caching")
    if args.worker_threads:
        argv += ["--threads", str(args.worker_threads)]
    return argv


def load_server_tokenizer(model: str):
    if model.startswith(DUMMY_PREFIX):
        return None  # random weights: token ids only
    from pdserve.model.tokenizer import load_tokenizer

    return load_tokenizer(model)


class Progress:
    """One status line on stderr while the worker loads."""

    def __init__(self):
        self.start = time.monotonic()
        self.stage = "starting worker"
        self.is_tty = sys.stderr.isatty()

    def update(self, stage: str) -> None:
        self.stage = stage
        if not self.is_tty:
            print(f"[pdserve] {stage}", file=sys.stderr, flush=True)

    async def spin(self) -> None:
        while self.is_tty:
            elapsed = time.monotonic() - self.start
            sys.stderr.write(f"\r\033[K[pdserve] {self.stage} ... {elapsed:.1f} s")
            sys.stderr.flush()
            await asyncio.sleep(0.2)

    def done(self, message: str) -> None:
        prefix = "\r\033[K" if self.is_tty else ""
        print(f"{prefix}[pdserve] {message}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from pdserve.engine.client import WorkerClient
    from pdserve.server.app import build_app
    from pdserve.server.generation import ServerConfig, ServerState

    args.model = args.model_arg or args.model
    progress = Progress()
    engine = WorkerClient(worker_argv(args), on_progress=progress.update)
    config = ServerConfig(args.served_model_name, args.api_key, args.max_body_bytes,
                          args.max_waiting)  # fmt: skip
    state = ServerState(engine, None, config)
    failure: list[str] = []
    server: uvicorn.Server | None = None

    async def start() -> None:
        spinner = asyncio.create_task(progress.spin())
        try:
            tokenizer = asyncio.to_thread(load_server_tokenizer, args.model)
            state.tokenizer, info = await asyncio.gather(tokenizer, engine.wait_ready())
            state.is_ready = True
            elapsed = time.monotonic() - progress.start
            progress.done(f"ready in {elapsed:.1f} s: {', '.join(state.model_names())} "
                          f"({info.num_total_blocks} KV blocks, context {info.max_model_len}) "
                          f"on http://{args.host}:{args.port}")  # fmt: skip
        except Exception as e:
            failure.append(str(e))
            progress.done(f"error: {e}")
            server.should_exit = True
        finally:
            spinner.cancel()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        starting = asyncio.create_task(start())
        try:
            yield
        finally:
            starting.cancel()
            await engine.close()

    app = build_app(state, lifespan, enable_debug=args.enable_debug_endpoints)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level=args.log_level,
                                           timeout_graceful_shutdown=5))  # fmt: skip
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    finally:
        if engine.proc is not None and engine.proc.poll() is None:
            engine.proc.kill()  # last resort: never leave the worker behind
    return 1 if failure else 0
