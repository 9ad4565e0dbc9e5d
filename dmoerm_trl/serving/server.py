"""Run the reward server with uvicorn: bind (loopback by default), print one "ready" line, drain on SIGTERM.

uvicorn handles SIGINT/SIGTERM: it stops accepting connections, lets the requests in flight finish (their items are
already queued on the batcher, which keeps running), then the app's lifespan stops the batcher with ``drain=True``.

Example:
    >>> from dmoerm_trl.serving.server import run_server                                  # doctest: +SKIP
    >>> run_server(RewardEngine.from_pretrained("./my-dmoerm"), host="127.0.0.1", port=5000)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading

from ..utils.network import is_loopback
from .app import ServeSettings, create_app

logger = logging.getLogger("dmoerm_trl.serve")


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning printed when ``host`` is not a loopback address (None for loopback)."""
    if is_loopback(host):
        return None
    advice = (
        "requests need the bearer token"
        if api_key
        else ("anyone who can reach it can use it: set DMOERM_SERVE_API_KEY to require a bearer token")
    )
    return f"dmoerm serve: warning: binding {host} exposes the reward model beyond this machine; {advice}."


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), IPv4 or IPv6 as the host needs."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(
    engine,
    host: str = "127.0.0.1",
    port: int = 5000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
    access_log: bool = False,
    max_connections: int = 1024,
    graceful_timeout_s: float | None = 60.0,
    keep_alive_s: float = 30.0,
    warn: bool = True,
) -> None:
    """Serve ``engine`` until SIGINT/SIGTERM. Prints ``dmoerm serve: ready at URL`` once requests are accepted."""
    import uvicorn

    settings = settings or ServeSettings()
    warning = exposure_warning(host, settings.api_key) if warn else None
    if warning:
        print(warning, file=sys.stderr, flush=True)
    sock = bind_socket(host, port)
    url = url_of(sock)

    def on_ready(app):
        print(
            f"dmoerm serve: ready at {url} (model {engine.model_id}; POST /get_reward, POST /v1/rewards, "
            "GET /health, GET /metrics)",
            flush=True,
        )

    app = create_app(engine, settings, on_ready=on_ready)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=graceful_timeout_s,
        # uvicorn's 5 s default lets a busy client lose the race for an idle connection (the server closes it just
        # as the client reuses it: a lost request); trainers reuse their connections, so keep them longer.
        timeout_keep_alive=keep_alive_s,
        lifespan="on",
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn catches SIGINT/SIGTERM, shuts down gracefully, then re-raises the signal to the handler it found; a
    # handler of ours there makes a drained shutdown end the process with exit code 0 instead of death by signal.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = (
        {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGINT, signal.SIGTERM)}
        if in_main_thread
        else {}
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
