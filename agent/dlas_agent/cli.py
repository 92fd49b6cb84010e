"""``dlas-agent``: the process a device runs. argparse only, so the agent stays tiny."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dlas-agent", description="DLAS Lab device agent (TVM runtime only)")
    parser.add_argument("--version", action="version", version=f"dlas-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve TVM RPC with the DLAS functions registered")
    serve.add_argument("--host", default=os.environ.get("DLAS_AGENT_HOST", "127.0.0.1"),
                       help="address to bind (default 127.0.0.1: reach it through an SSH tunnel)")
    serve.add_argument("--port", type=int, default=int(os.environ.get("DLAS_AGENT_PORT", "9190")))
    serve.add_argument("--port-end", type=int, default=None, help="search ports up to this one (exclusive)")
    serve.add_argument("--tracker", default=os.environ.get("DLAS_AGENT_TRACKER"), help="HOST:PORT of a TVM RPC tracker")
    serve.add_argument("--key", default=os.environ.get("DLAS_AGENT_KEY", "dlas"), help="device key at the tracker")
    serve.add_argument("--custom-addr", default=None, help="address reported to the tracker")
    serve.add_argument("--threads", type=int, default=int(os.environ.get("DLAS_AGENT_THREADS", "0")),
                       help="TVM runtime threads (0: TVM's default)")

    sub.add_parser("info", help="print this device's description as JSON")

    args = parser.parse_args(argv)
    # The agent never compiles: load the runtime library only, even where the full wheel is installed.
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    if args.command == "info":
        from . import devinfo

        print(json.dumps(json.loads(devinfo.collect().to_json()), indent=2))
        return
    from .server import serve as run_server

    port_end = args.port_end if args.port_end is not None else args.port + 1
    try:
        run_server(args.host, args.port, port_end, args.tracker, args.key, args.custom_addr, args.threads)
    except (OSError, ValueError) as exc:
        print(f"dlas-agent: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
