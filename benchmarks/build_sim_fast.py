"""An optional compiled build of the simulator's hot modules: the same source, compiled with mypyc.

    python benchmarks/build_sim_fast.py            # build/simfast/ (skipped when up to date)
    PYTHONPATH=build/simfast python benchmarks/bench_sim_scale.py   # runs the compiled modules
    python benchmarks/bench_sim_scale.py --build compiled          # the same, building first

The checkout stays pure Python: tests monkeypatch scheduler internals, the engine and the GPU
machine run the tree as it is. This copies the `pdserve` package into `build/simfast/` (ignored
by git) and compiles `MODULES` there in place, so `build/simfast/pdserve/sched/scheduler.py`
sits beside its extension module and Python imports the extension. Every other module of the
copy stays interpreted. A stamp (a hash of the package's files, this script, the Python and the
mypy version) says which source a build was made from; a build whose stamp differs is redone.

The compiled build must behave exactly as the pure one: `tests/sim/sim_digests.py` runs the
same scenarios through both (`tests/sim/test_sim_fast.py` checks it in CI).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "build" / "simfast"
# Compiled; everything else in the package stays interpreted. The messages of types.py and
# the policies' RouteDecision are built per step or per request: compiled, their written-out
# `__init__`s store fields directly (`types.fast_init` leaves them be).
MODULES = (
    "pdserve/types.py",
    "pdserve/blake2b64.py",
    "pdserve/hashing.py",
    "pdserve/cluster/policies.py",
    "pdserve/cluster/cost_model.py",
    "pdserve/metrics.py",
    "pdserve/sched/block_pool.py",
    "pdserve/sched/prefix_cache.py",
    "pdserve/sched/request.py",
    "pdserve/sched/plan.py",
    "pdserve/sched/queue_policy.py",
    "pdserve/sched/kv_manager.py",
    "pdserve/sched/scheduler.py",
    "pdserve/sim/events.py",
    "pdserve/sim/instance.py",
    "pdserve/sim/cluster.py",
)
EXTRA_CFLAGS = "-fno-semantic-interposition"
# Only the package's torch-free rooms are analysed (for the types the compiled modules read);
# the rest, and third-party packages, are Any to mypyc (following torch takes minutes).
MYPY_INI = """\
[mypy]
python_version = {major}.{minor}
ignore_missing_imports = True
follow_imports = skip

[mypy-pdserve.*]
follow_imports = silent

[mypy-pdserve.engine.*,pdserve.model.*,pdserve.kvxfer.*,pdserve.server.*,pdserve.deploy.*]
follow_imports = skip
"""
# (mypyc 2.4.1 fails on a compiled method with **kwargs after a parameter with a default: it
# writes the docstring's text signature with the **kwargs positional-only. None is left.)
SETUP_PY = """\
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="pdserve_simfast",
    ext_modules=mypycify(["--config-file", "mypy.ini", *{modules!r}], opt_level="{opt_level}"),
)
"""


def fingerprint() -> str:
    """What a build is made from: the package's files, this script, Python and mypy."""
    import mypy.version

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{sys.version} mypy {mypy.version.__version__}\n".encode())
    h.update(Path(__file__).read_bytes())
    for path in sorted((ROOT / "pdserve").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def is_current(dest: Path = DEST) -> bool:
    stamp = dest / "STAMP"
    return stamp.is_file() and stamp.read_text().strip() == fingerprint()


def build(dest: Path = DEST, force: bool = False, opt_level: str = "3", quiet: bool = True) -> Path:
    """Build `dest` unless it is current; returns it. Raises CalledProcessError (with mypyc's
    output) when the build fails, e.g. on a type error in a compiled module."""
    if not force and is_current(dest):
        return dest
    stamp = fingerprint()
    tmp = dest.parent / f".{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ROOT / "pdserve", tmp / "pdserve",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))  # fmt: skip
    major, minor = sys.version_info[:2]
    (tmp / "mypy.ini").write_text(MYPY_INI.format(major=major, minor=minor))
    (tmp / "setup.py").write_text(SETUP_PY.format(modules=MODULES, opt_level=opt_level))
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--parallel", "2"]
    # The compiled functions are global symbols of one shared object: without this, -fPIC code
    # may not inline them into each other (a symbol could be interposed at load time), and
    # every small helper (blake2b64._g, 96 calls per compression) stays a call.
    cflags = f"{os.environ.get('CFLAGS', '')} {EXTRA_CFLAGS}".strip()
    env = dict(os.environ, CFLAGS=cflags)
    try:
        subprocess.run(cmd, cwd=tmp, check=True, text=True, capture_output=quiet, env=env)
        (tmp / "STAMP").write_text(stamp + "\n")
        shutil.rmtree(tmp / "build", ignore_errors=True)  # the C sources and objects
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--check", action="store_true", help="exit 1 unless the build is current")
    p.add_argument("--opt-level", default="3", help="C optimization level (mypyc's opt_level)")
    args = p.parse_args()
    if args.check:
        sys.exit(0 if is_current() else 1)
    t = time.perf_counter()
    try:
        build(force=args.force, opt_level=args.opt_level, quiet=False)
    except subprocess.CalledProcessError as e:
        sys.exit(f"mypyc build failed ({e.returncode})")
    print(f"{DEST.relative_to(ROOT)}: {len(MODULES)} modules compiled with mypyc, "
          f"{time.perf_counter() - t:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
