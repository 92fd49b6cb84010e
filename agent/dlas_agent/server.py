"""The agent's TVM RPC server, with the project's own remote functions registered.

TVM's RPC server forks one process per session and serves it from a fresh temporary work dir; the
functions registered here before the fork are visible in every session. Uploads land in that work dir.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import traceback
from pathlib import Path

from . import __version__, devinfo
from .protocol import (FN_BENCHMARK, FN_DEVICE_INFO, FN_PING, FN_TIME_KERNEL, PROTOCOL_VERSION, BenchmarkRequest,
                       BenchmarkResult, KernelTimingRequest, KernelTimingResult, ProtocolError)
from .runner import ArtifactRejected, run_benchmark, time_kernel

log = logging.getLogger("dlas_agent")


def _work_dir() -> Path:
    import tvm  # noqa: PLC0415

    return Path(tvm.get_global_func("tvm.rpc.server.workpath")("probe")).parent


def _handle(request_type, result_type, run, request_json: str) -> str:
    """Never raises across the RPC boundary: failures come back as ``ok=False`` with a one-line reason."""
    try:
        request = request_type.from_json(request_json)
        if request.protocol != PROTOCOL_VERSION:
            raise ProtocolError(f"host speaks protocol {request.protocol}, agent speaks {PROTOCOL_VERSION}")
        return run(request, _work_dir()).to_json()
    except (ArtifactRejected, ProtocolError, FileNotFoundError, ValueError) as exc:
        return result_type(ok=False, error=str(exc)).to_json()
    except Exception as exc:  # noqa: BLE001 - any runtime failure is reported to the host, with its cause
        log.error("%s failed: %s", run.__name__, traceback.format_exc())
        first = str(exc).strip().splitlines()
        return result_type(ok=False, error=f"{type(exc).__name__}: {first[-1] if first else ''}").to_json()


def handle_benchmark(request_json: str) -> str:
    return _handle(BenchmarkRequest, BenchmarkResult, run_benchmark, request_json)


def handle_time_kernel(request_json: str) -> str:
    reply = _handle(KernelTimingRequest, KernelTimingResult, time_kernel, request_json)
    print(f"dlas-agent {os.getpid()}: timed a tuning candidate", file=sys.stderr, flush=True)  # who measured what
    return reply


def register_functions() -> None:
    import tvm_ffi  # noqa: PLC0415

    tvm_ffi.register_global_func(FN_PING, lambda: json.dumps({"agent": __version__, "protocol": PROTOCOL_VERSION,
                                                               "pid": os.getpid()}), override=True)
    tvm_ffi.register_global_func(FN_DEVICE_INFO, lambda: devinfo.collect().to_json(), override=True)
    tvm_ffi.register_global_func(FN_BENCHMARK, handle_benchmark, override=True)
    tvm_ffi.register_global_func(FN_TIME_KERNEL, handle_time_kernel, override=True)


def serve(host: str = "127.0.0.1", port: int = 9190, port_end: int = 9290, tracker: str | None = None,
          key: str = "dlas", custom_addr: str | None = None, threads: int = 0) -> None:
    """Serve until killed. Prints one JSON line ``{"event": "listening", ...}`` once bound."""
    if threads > 0:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    # Sessions are forked so they inherit the registered functions (3.14 changed the default).
    multiprocessing.set_start_method("fork", force=True)
    from tvm.rpc import server as rpc_server  # noqa: PLC0415

    register_functions()
    tracker_addr = None
    if tracker:
        thost, _, tport = tracker.rpartition(":")
        tracker_addr = (thost, int(tport))
    state = rpc_server.PopenRPCServerState(host, port, port_end, False, tracker_addr, key, None, custom_addr,
                                           silent=False)
    print(json.dumps({"event": "listening", "host": host, "port": state.port, "pid": os.getpid(),
                      "tracker": tracker, "key": key, "agent": __version__}), flush=True)
    state.thread.join()
    sys.exit(0)
