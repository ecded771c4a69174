"""Running the app: a listening socket, uvicorn, and a shutdown that ends streams cleanly.

SIGTERM or Ctrl-C: uvicorn stops accepting connections and lets the open ones finish; the
engine (bridge.Engine.shutdown) refuses new work at once (HTTP 503), gives running generations
``shutdown_timeout`` seconds, then cancels them, each within one prompt chunk or decode step.
A stream cut that way ends with an error event and ``[DONE]``, a complete HTTP response; the
process then exits with status 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import sys

import uvicorn
from uvicorn.config import LOGGING_CONFIG


class _Server(uvicorn.Server):
    """uvicorn's server, which also starts the engine's shutdown on the first signal."""

    def __init__(self, config: uvicorn.Config, engine, shutdown_timeout: float):
        super().__init__(config)
        self.engine = engine
        self.shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Future | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._loop is not None and self._draining is None:
            self._loop.call_soon_threadsafe(self._drain)
        super().handle_exit(sig, frame)
        # uvicorn would raise the signal again once it has shut down, so the process would die of it;
        # a shutdown that went cleanly exits with status 0 instead
        self._captured_signals.clear()

    def _drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self.engine.shutdown(self.shutdown_timeout))


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port; read it back with getsockname)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app, sock: socket.socket, *, shutdown_timeout: float = 5.0, access_log: bool = True) -> None:
    """Serve ``app`` (create_app's) on the listening ``sock`` until a signal; returns after a clean shutdown."""
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["awqinfer.server"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config = uvicorn.Config(app, log_config=log_config, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=shutdown_timeout + 30)  # a backstop: the engine ends first
    server = _Server(config, app.state.server.engine, shutdown_timeout)
    print(f"awqinfer: serving on {url_of(sock)} (playground: {url_of(sock)}/)", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
