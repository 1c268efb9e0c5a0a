"""`lcmvideo live --serve`: the page and its WebSocket, starlette on uvicorn, around the live loop.

Threads: the live loop stylizes on the main thread (Ctrl-C stops it there, as without --serve);
uvicorn runs its event loop on another. A client's frames go from the socket straight into the
loop's one-frame slot (`Loop.offer`), after the size checks of protocol.check_frame; the loop
answers through the client's outbox, which holds control messages and only the newest frame,
so a slow network drops frames instead of queueing them.

Safe by default: the socket is bound to 127.0.0.1; any other address needs a token (random,
printed in the URL, or --token), checked on every page request and on the socket. Without a
token, the Host header must name the loopback (no DNS rebinding), and a socket's Origin must be
the page's own (no other site's script can use the camera stream). Only the page's three files
are served. A malformed message is answered with an error and logged; the session goes on.
"""

from __future__ import annotations

import asyncio
import errno
import json
import re
import secrets
import socket
import threading
import time
from collections import deque
from importlib import resources

from .. import live
from ..errors import LcmvideoError, runtime, usage
from . import protocol

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
LOGGED_ERRORS = 20  # per client, then every 100th: a client sending garbage does not flood the log
MAX_CLIENTS = 16


def needs_token(host: str) -> bool:
    return host not in LOCAL_HOSTS


def make_token(host: str, token: str | None) -> str | None:
    """The token for this bind: the given one (checked), a random one for a non-loopback host, else none."""
    if token is not None:
        if not TOKEN_RE.fullmatch(token):
            raise usage("--token: 16-128 characters of A-Z, a-z, 0-9, '_' or '-'")
        return token
    return secrets.token_urlsafe(24) if needs_token(host) else None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so that a busy port fails before the models load."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise usage(f"--host {host}: not an address or a name this machine can resolve") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(64)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise runtime(f"--port {port}: already in use on {host} (another server?); "
                          "choose another --port, or --port 0 for any free one") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise usage(f"--host {host}: not an address of this machine") from None
        if e.errno == errno.EACCES:
            raise runtime(f"--port {port}: not allowed here (ports below 1024 need privileges)") from None
        raise runtime(f"--host {host} --port {port}: cannot listen ({e.strerror})") from None
    sock.setblocking(False)
    return sock


def url(sock: socket.socket, host: str, token: str | None, tls: bool = False) -> str:
    port = sock.getsockname()[1]
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"{'https' if tls else 'http'}://{shown}:{port}/" + (f"?token={token}" if token else "")


class Client:
    """One WebSocket. The live loop's thread posts into its outbox; one task sends from it."""

    def __init__(self, ws, aloop: asyncio.AbstractEventLoop, name: str):
        self.ws, self.aloop, self.name = ws, aloop, name
        self.messages: deque = deque(maxlen=256)
        self.newest = None  # (id, image, info): only the newest stylized frame waits to go out
        self.wake = asyncio.Event()
        self.sent = self.dropped_out = self.errors = 0
        self.open = True

    # from any thread
    def frame(self, ident, image, info):
        self._call(self._put_frame, (ident, image, info))

    def notice(self, kind: str, ident=None, text: str | None = None):
        msg = {"type": kind}
        if ident is not None:
            msg["id"] = ident
        if text is not None:
            msg["message" if kind == "error" else "path"] = text
        self.post(msg)

    def post(self, msg: dict):
        self._call(self._put, msg)

    def _call(self, fn, arg):
        if not self.open:
            return
        try:
            self.aloop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the server's loop has closed
            self.open = False

    # on the event loop
    def _put(self, msg):
        self.messages.append(msg)
        self.wake.set()

    def _put_frame(self, item):
        old, self.newest = self.newest, item
        if old is not None:  # not sent yet: the newer one wins; the client still hears of it
            self.dropped_out += 1
            if old[0] is not None:
                self.messages.append({"type": "dropped", "id": old[0]})
        self.wake.set()

    async def send_loop(self):
        try:
            while self.open:
                await self.wake.wait()
                self.wake.clear()
                while self.messages:
                    await self.ws.send_text(json.dumps(self.messages.popleft()))
                if self.newest is not None:
                    (ident, image, info), self.newest = self.newest, None
                    data = await self.aloop.run_in_executor(None, protocol.encode_frame, ident, image, info)
                    await self.ws.send_bytes(data)
                    self.sent += 1
        except Exception:  # noqa: BLE001 - the socket closed under us: the receiving side ends the session
            self.open = False


class Hub:
    """The clients of one live loop; the loop shows its source's frames to every client (a view)."""

    def __init__(self, token: str | None, say=print, max_bytes: int = protocol.MAX_FRAME_BYTES,
                 max_pixels: int = protocol.MAX_FRAME_PIXELS):
        self.token, self.say = token, say
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.loop: live.Loop | None = None
        self.clients: set[Client] = set()
        self.lock = threading.Lock()
        self.watch = False
        self.size = (64, 64)
        self.n = 0

    def attach(self, loop: live.Loop, watch: bool):
        self.loop, self.watch = loop, watch
        self.size = (loop.opts.width, loop.opts.height)

    def window(self) -> int:
        """Frames a client may keep in flight: one being stylized and one waiting, or with the
        stream batch one per step and one waiting (the batch fills from successive frames)."""
        return self.loop.params.steps + 1 if self.loop.stream else 2

    # the live loop's view
    def show(self, image, info):
        if info.get("from_client"):
            return  # answered to the client that sent it
        with self.lock:
            clients = list(self.clients)
        for c in clients:
            c.frame(None, image, info)

    def pump(self):
        pass

    def close(self):
        pass

    # requests
    def refusal(self, headers, query, websocket: bool) -> str | None:
        """Why a request is refused, or None: the token, else a loopback Host; a socket's Origin."""
        host = headers.get("host", "")
        if self.token is not None:
            given = query.get("token", "")
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return "wrong token" if given else "missing token (open the URL printed at the start, with ?token=)"
        else:
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.find("]")]
            if name not in LOCAL_HOSTS:
                return f"Host {host[:80]!r} is not this machine's loopback (start with --host and a token to serve others)"
        origin = headers.get("origin")
        if websocket and origin is not None and origin.split("://", 1)[-1] != host:
            return f"Origin {origin[:80]!r} is not this page"
        return None

    def hello(self) -> dict:
        return {"type": "hello", "params": self.loop.state(), "prompts": self.loop.opts.prompts, "size": self.size,
                "window": self.window(), "watch": self.watch,
                "limits": {"bytes": self.max_bytes, "pixels": self.max_pixels}}

    def receive(self, client: Client, data: bytes | None, text: str | None):
        """One message from a client; a bad one is answered with an error and logged, never fatal."""
        ident = None
        try:
            if data is not None:
                try:
                    ident, body = protocol.check_frame(data, self.max_bytes, self.max_pixels)
                except protocol.FrameError as e:
                    ident = e.ident
                    raise usage(e.message) from None
                if self.watch:
                    raise usage("this server stylizes its own source (--source/--camera); it takes no frames")
                self.loop.offer(body, reply=client, ident=ident)
            elif text is not None:
                self.command(client, protocol.parse_message(text))
        except LcmvideoError as e:
            client.errors += 1
            if client.errors <= LOGGED_ERRORS or client.errors % 100 == 0:
                self.say(f"client {client.name}: {e.message}" + (" (and more)" if client.errors == LOGGED_ERRORS else ""))
            client.notice("error", ident, e.message)

    def command(self, client: Client, msg: dict):
        kind = msg.pop("type")
        if kind == "settings":
            self.loop.update(**msg)
            self.broadcast({"type": "settings", "params": self.loop.state(), "window": self.window()})
        elif kind in ("record", "pause"):
            self.loop.request(kind, reply=client, on=msg.get("on", True))
        elif kind == "snapshot":
            self.loop.request("snapshot", reply=client)

    def broadcast(self, msg: dict):
        with self.lock:
            clients = list(self.clients)
        for c in clients:
            c.post(msg)

    def add(self, client: Client) -> bool:
        with self.lock:
            if len(self.clients) >= MAX_CLIENTS:
                return False
            self.clients.add(client)
            self.n += 1
        return True

    def remove(self, client: Client):
        client.open = False
        with self.lock:
            self.clients.discard(client)


def app(hub: Hub):
    """The starlette application: the page's three files and the socket, nothing else."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocketDisconnect

    files = {path: ((resources.files("lcmvideo") / "data" / "web" / name).read_text(encoding="utf-8"), kind)
             for path, (name, kind) in ASSETS.items()}

    async def page(request):
        why = hub.refusal(request.headers, request.query_params, websocket=False)
        if why:
            hub.say(f"refused {request.url.path} from {request.client.host if request.client else '?'}: {why}")
            return PlainTextResponse(f"403 forbidden: {why}\n", status_code=403, headers=HEADERS)
        body, kind = files[request.url.path]
        if request.url.path == "/":
            body = body.replace("%TOKEN%", hub.token or "")
        return Response(body, media_type=kind, headers=HEADERS)

    async def socket_(ws):
        why = hub.refusal(ws.headers, ws.query_params, websocket=True)
        if why:
            hub.say(f"refused a socket from {ws.client.host if ws.client else '?'}: {why}")
            await ws.close(code=1008)  # before accept: the handshake is answered 403
            return
        await ws.accept()
        client = Client(ws, asyncio.get_running_loop(), f"{ws.client.host}:{ws.client.port}" if ws.client else "?")
        if not hub.add(client):
            await ws.close(code=1013, reason="too many clients")
            return
        sender = asyncio.create_task(client.send_loop())
        client.post(hub.hello())
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                hub.receive(client, msg.get("bytes"), msg.get("text"))
        except WebSocketDisconnect:
            pass
        finally:
            hub.remove(client)
            sender.cancel()

    return Starlette(routes=[*[Route(p, page) for p in ASSETS], WebSocketRoute("/ws", socket_)])


class Server:
    """uvicorn on its own thread, on a socket bound beforehand."""

    def __init__(self, application, sock: socket.socket, tls: tuple[str, str] | None = None):
        import logging

        import uvicorn

        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        ssl = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if tls else {}
        limit = protocol.MAX_FRAME_BYTES + protocol.MAX_TEXT + 16
        config = uvicorn.Config(application, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                ws_max_size=max(limit, 2 * protocol.MAX_FRAME_BYTES), ws_max_queue=4,
                                ws_per_message_deflate=False, proxy_headers=False, server_header=False,
                                timeout_graceful_shutdown=3, **ssl)
        self.sock, self.server = sock, uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True, name="web")
        self.error: BaseException | None = None

    def _run(self):
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # noqa: BLE001 - uvicorn exits with SystemExit on a bad TLS file
            self.error = e

    def start(self, timeout: float = 20.0):
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            self.stop()
            raise runtime("--serve: the web server did not start" + (" (check --tls-cert/--tls-key)"
                                                                     if self.server.config.is_ssl else ""))

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve(stylizer, source, opts: live.Options, sock: socket.socket, host: str, token: str | None, say=print,
          controls=None, open_browser: bool = False, tls: tuple[str, str] | None = None, hub: Hub | None = None,
          announce=None) -> live.Summary:
    """Run the live loop with the page as its window: the browser's camera (or `source`, watched)."""
    hub = hub or Hub(token, say)
    opts.window = False  # the page is the window; nothing is recorded unless asked (--out, the Record button)
    loop = live.Loop(stylizer, source, opts, say, controls, views=[hub])
    hub.attach(loop, watch=source is not None)
    server = Server(app(hub), sock, tls)
    server.start()
    address = url(sock, host, token, tls is not None)
    (announce or say)(f"serving {address}  (Ctrl-C stops)")
    if open_browser:
        import webbrowser

        webbrowser.open(address)
    try:
        return loop.run()
    finally:
        server.stop()
