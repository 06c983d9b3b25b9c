"""Chrome-trace timeline (chrome://tracing, ui.perfetto.dev): one process row per instance,
its steps on thread 0 and its outgoing KV transfers on thread 1. Times in microseconds."""

from __future__ import annotations

import json
from pathlib import Path


class ChromeTrace:
    def __init__(self, instances) -> None:
        self.events: list[dict] = [
            {"name": "process_name", "ph": "M", "pid": i.index,
             "args": {"name": f"{i.instance_id} ({i.role})"}}
            for i in instances
        ]  # fmt: skip

    def step(self, inst, plan, start_s: float, duration_s: float) -> None:
        self.events.append({
            "name": f"step {plan.step_id}", "ph": "X", "pid": inst.index, "tid": 0,
            "ts": start_s * 1e6, "dur": duration_s * 1e6,
            "args": {"tokens": plan.num_batched_tokens, "seqs": len(plan.seqs),
                     "prefill_tokens": plan.num_prefill_tokens,
                     "decode_seqs": plan.num_decode_seqs},
        })  # fmt: skip

    def transfer(self, src, dst, request_id: str, start_s: float, done_s: float, num_bytes: int):
        self.events.append({
            "name": f"kv {request_id} -> {dst.instance_id}", "ph": "X", "pid": src.index,
            "tid": 1, "ts": start_s * 1e6, "dur": (done_s - start_s) * 1e6,
            "args": {"bytes": num_bytes},
        })  # fmt: skip

    def instant(self, inst, name: str, now: float) -> None:
        self.events.append({"name": name, "ph": "i", "s": "p", "pid": inst.index, "ts": now * 1e6})


def write_trace(events: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return path
