"""The decode side of the two-process tests, run in a second process (multiprocessing 'spawn'):
it registers a poisoned KV cache on `device` with the `kind` transport, sends its metadata over
the pipe, then answers commands: ("get",) -> the cache as numpy, ("set", array) -> overwrite
it, ("stop",) -> close and exit. A start-up error is sent instead of the metadata."""

from __future__ import annotations


def serve(conn, kind: str, name: str, device: str = "cpu") -> None:
    import torch

    from pdserve.kvxfer import make_transport

    from .kv_helpers import POISON, kv_cache

    try:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # as a worker on its GPU does
        transport = make_transport(kind, name)
        cache = kv_cache(fill=POISON).to(device)
        conn.send(transport.register(cache))
    except Exception as exc:
        conn.send(exc)
        return
    while True:
        command = conn.recv()
        if command[0] == "get":
            conn.send(cache.cpu().numpy())
        elif command[0] == "set":
            cache.copy_(torch.from_numpy(command[1]))
            if cache.is_cuda:
                torch.cuda.synchronize(cache.device)
            conn.send(True)
        elif command[0] == "stop":
            transport.close()
            conn.send(True)
            return


class Peer:
    """This side's end of the pipe to a `serve` process."""

    def __init__(self, conn, process):
        self.conn, self.process = conn, process

    def ask(self, *command):
        self.conn.send(command)
        return self.conn.recv()

    def cache(self):
        import torch

        return torch.from_numpy(self.ask("get"))

    def reset(self) -> None:
        from .kv_helpers import POISON, kv_cache

        self.ask("set", kv_cache(fill=POISON).numpy())

    def stop(self) -> None:
        self.ask("stop")
        self.process.join(10)


def start_peer(kind: str, name: str, device: str = "cpu", start_timeout_s: float = 120.0):
    """(Peer, its metadata bytes); raises RuntimeError with the peer's reason if it failed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    process = ctx.Process(target=serve, args=(there, kind, name, device), daemon=True)
    process.start()
    if not here.poll(start_timeout_s):
        process.kill()
        raise RuntimeError(f"the {kind} peer did not start in {start_timeout_s} s")
    metadata = here.recv()
    if isinstance(metadata, Exception):
        process.join(5)
        raise RuntimeError(f"the {kind} peer failed: {metadata!r}")
    return Peer(here, process), metadata
