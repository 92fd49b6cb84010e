"""``dlas-agent``: the process a device runs. argparse only, so the agent stays tiny."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__


def _local_address(bind: str) -> str:
    """Where a local client reaches a server bound to ``bind`` (a wildcard bind answers on loopback)."""
    return "127.0.0.1" if bind in ("", "0.0.0.0", "::", "[::]") else bind


def _exit_on_sigterm() -> None:
    """As a container's PID 1 the agent gets no default SIGTERM action: stop cleanly on ``docker stop``."""
    import signal  # noqa: PLC0415

    def stop(_sig: int, _frame: object) -> None:
        import psutil  # noqa: PLC0415

        for child in psutil.Process().children(recursive=True):  # forked session workers
            try:
                child.kill()
            except psutil.Error:
                pass
        os._exit(0)  # the RPC server's listening thread would keep a normal exit waiting

    signal.signal(signal.SIGTERM, stop)


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
    serve.add_argument("--secret-file", default=None,
                       help="file with this device's secret (hex, mode 0600); default $DLAS_AGENT_SECRET_FILE, "
                            "else the secret itself in $DLAS_AGENT_SECRET. Required: every connection is "
                            "authenticated with it")

    secret = sub.add_parser("secret", help="write a fresh random secret (hex, mode 0600) to PATH unless it exists")
    secret.add_argument("path")
    secret.add_argument("--force", action="store_true", help="replace an existing secret")

    sub.add_parser("info", help="print this device's description as JSON")

    health = sub.add_parser("health", help="ping the agent serving on this machine; exit 0 if healthy (or busy), 1 if not")
    health.add_argument("--host", default=_local_address(os.environ.get("DLAS_AGENT_HOST", "")),
                        help="address to reach the agent at (default: DLAS_AGENT_HOST, 127.0.0.1 for a wildcard)")
    health.add_argument("--port", type=int, default=int(os.environ.get("DLAS_AGENT_PORT", "9190")))
    health.add_argument("--key", default=os.environ.get("DLAS_AGENT_KEY", "dlas"))
    health.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the ping")
    health.add_argument("--secret-file", default=None, help="as for serve")

    args = parser.parse_args(argv)
    # The agent never compiles: load the runtime library only, even where the full wheel is installed.
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    from . import auth

    if args.command == "secret":
        path = Path(args.path).expanduser()
        if path.exists() and not args.force:
            auth.read_secret_file(path)  # exists: check it is usable (hex, mode 0600)
            print(f"{path}: kept the existing secret (--force replaces it)")
            return
        auth.write_secret(path)
        print(f"{path}: wrote a new secret (mode 0600); the host needs the same file")
        return
    if args.command == "health":
        from . import health as health_mod

        try:
            secret = auth.secret_from_env(args.secret_file)
        except auth.AuthError as exc:
            print(f"dlas-agent: {exc}", file=sys.stderr)
            sys.exit(2)
        result = health_mod.check(args.port, args.host, args.key, args.timeout, secret=secret)
        print(result.to_json(), flush=True)
        sys.exit(result.exit_code)
    if args.command == "info":
        from . import devinfo

        print(json.dumps(json.loads(devinfo.collect().to_json()), indent=2))
        return
    from .server import serve as run_server

    _exit_on_sigterm()
    port_end = args.port_end if args.port_end is not None else args.port + 1
    try:
        secret = auth.secret_from_env(args.secret_file)
        run_server(args.host, args.port, port_end, args.tracker, args.key, args.custom_addr, args.threads,
                   secret=secret)
    except auth.AuthError as exc:
        print(f"dlas-agent: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        sys.exit(2)
    except (OSError, ValueError) as exc:
        print(f"dlas-agent: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
