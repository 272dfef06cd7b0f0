"""An HTTP server on 127.0.0.1 that misbehaves on purpose, for key sources (JWKS) and FHIR servers:
it hangs, trickles, lies about its Content-Length, or answers garbage or HTML. Every path answers
the same way; ``body`` is what a well-behaved answer would carry."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any


class HostileServer:
    MODES = ("ok", "hang", "trickle", "short", "garbage", "html", "slow-headers")

    def __init__(self, body: Any, mode: str = "ok", trickle_gap: float = 0.5) -> None:
        assert mode in self.MODES
        self.body = json.dumps(body).encode()
        self.mode = mode
        self.trickle_gap = trickle_gap
        self.hits = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.base = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/jwks.json") -> str:
        return self.base + path

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self.hits += 1
        try:
            conn.settimeout(5)
            conn.recv(65536)  # the request (small GETs arrive in one segment)
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            if self.mode == "hang":
                self._wait(30)
            elif self.mode == "trickle":
                conn.sendall(f"{head}Content-Length: {len(self.body)}\r\n\r\n".encode())
                for byte in self.body:
                    if self._wait(self.trickle_gap):
                        return
                    conn.sendall(bytes([byte]))
            elif self.mode == "slow-headers":
                for byte in head.encode():
                    if self._wait(self.trickle_gap):
                        return
                    conn.sendall(bytes([byte]))
            elif self.mode == "short":  # says 100000 bytes, sends the body, closes
                conn.sendall(f"{head}Content-Length: 100000\r\n\r\n".encode() + self.body)
            elif self.mode in ("garbage", "html"):
                payload = b"\x00\xff{{{not json" if self.mode == "garbage" else b"<html><body>Sign in</body></html>"
                ctype = "text/html" if self.mode == "html" else "application/json"
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n\r\n"
                             .encode() + payload)
            else:
                conn.sendall(f"{head}Content-Length: {len(self.body)}\r\n\r\n".encode() + self.body)
        except OSError:
            pass
        finally:
            conn.close()

    def _wait(self, seconds: float) -> bool:
        """Sleep, or return True at once when the server is closing."""
        return self._stop.wait(seconds)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        time.sleep(0.05)
