"""`vaelab explore RUN`: serve the browser explorer (FastAPI + uvicorn) for a trained run.

Loopback only unless `--host` says otherwise; on loopback the Host header is also checked, so a
web page elsewhere cannot reach the explorer through DNS rebinding.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import socket
import sys
import threading
import webbrowser

from vaelab.errors import ConfigError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand(s) to the `vaelab` parser."""
    p = sub.add_parser("explore", help="steer a trained model's latent space in the browser",
                       description="Serve a local web page to explore RUN's latent space: the map of the test "
                                   "split, one slider per latent dimension, interpolation and uploads.")
    p.add_argument("run", metavar="RUN", help="a run folder (config.json + model.safetensors)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.add_argument("--data-dir", help="where the run's dataset lives, if not where its config says")
    p.add_argument("--max-points", type=int, default=10_000, help="test images on the map (default 10000)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where the model runs")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch threads (default 1: small decodes are fastest on one, and the web server "
                        "keeps a core; 0 = PyTorch's default)")
    p.set_defaults(func=run_explore)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_host_names(host: str) -> tuple[str, ...]:
    """The Host header values a server on loopback `host` answers: the usual loopback names plus
    `host` itself as a browser writes it (IPv6 in brackets, also in its shortest spelling), so
    `--host 127.0.0.5` works while a DNS-rebinding page (Host: attacker.example) is refused."""
    bare = host.strip("[]")
    spellings = [bare]
    try:
        spellings.append(str(ipaddress.ip_address(bare)))  # e.g. 0:0:0:0:0:0:0:1 -> ::1
    except ValueError:
        pass
    own = [f"[{name}]" if ":" in name else name for name in spellings]
    return tuple(dict.fromkeys([*LOOPBACK_NAMES, *own]))


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a busy port is one clear error before the model loads."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    try:
        family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, IndexError) as exc:
        raise ConfigError(f"cannot use --host {host}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit TCP_NODELAY (Linux): without it, the standard asyncio loop lets
        # Nagle's algorithm hold small PNG responses back for a delayed ACK (~5x lower throughput).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
        # Listening now: a browser or client that connects before uvicorn is up waits in the backlog.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port") from None
    sock.set_inheritable(True)
    return sock


def run_explore(args: argparse.Namespace) -> int:
    """Carry out `vaelab explore` with the parsed `args`; return the exit code."""
    try:
        import uvicorn

        from vaelab.explorer.server import create_app
    except ImportError as exc:
        raise ConfigError(f"vaelab explore needs the explorer extra ({exc.name} is missing): "
                          "pip install 'vaelab[explorer]'") from None
    import torch

    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    if args.max_points < 1:
        raise ConfigError(f"--max-points must be >= 1, got {args.max_points}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    loopback = is_loopback(args.host)
    sock = bind_socket(args.host, args.port)
    try:
        print(f"loading {args.run} ...", file=sys.stderr)
        app = create_app(args.run, data_dir=args.data_dir, device=device, max_points=args.max_points,
                         allowed_hosts=allowed_host_names(args.host) if loopback else None)
        # Everything loaded so far (torch, the model, the data, the map) lives as long as the server:
        # moving it out of the collector's reach keeps full collections from pausing every request
        # at once (~100 ms stalls under load otherwise).
        gc.collect()
        gc.freeze()
        port = sock.getsockname()[1]
        shown_host = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
        url = f"http://{shown_host}:{port}/"
        print(f"vaelab explorer: {url}  (Ctrl+C to stop)", flush=True)
        if not loopback:
            print(f"note: listening on {args.host}: anyone who can reach this machine can use the explorer",
                  file=sys.stderr)
        if args.open:
            threading.Timer(0.5, webbrowser.open, [url]).start()
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
