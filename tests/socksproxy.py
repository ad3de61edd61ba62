"""A SOCKS5 proxy on 127.0.0.1 for tests (RFC 1928, with RFC 1929's user and password).

It serves ``CONNECT`` to IPv4 and IPv6 addresses and to host names,
resolving the names it is given in ``names`` itself (so that a test shows that a name went to the
proxy unresolved, as ``socks5h://`` sends it) and others with the system's resolver; it relays
the bytes both ways until either side closes.

    with SocksProxy(names={"data.socks.test": "127.0.0.1"}, login=("user", "secret")) as proxy:
        proxy.url()                 # "socks5h://127.0.0.1:PORT"
        proxy.asked                 # the destinations asked for: ("data.socks.test", 8080), ...
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from typing import Any

from scutil import close_listener

_NO_AUTHENTICATION, _PASSWORD, _NO_METHOD = 0x00, 0x02, 0xFF
_CONNECT = 0x01
_IPV4, _NAME, _IPV6 = 0x01, 0x03, 0x04
_SUCCEEDED, _REFUSED, _UNSUPPORTED, _NO_ADDRESS_TYPE = 0x00, 0x05, 0x07, 0x08


class SocksProxy:
    def __init__(self, names: dict[str, str] | None = None, login: tuple[str, str] | None = None) -> None:
        self.names = dict(names or {})
        self.login = login
        self.asked: list[tuple[str, int]] = []
        self.refused_logins = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SocksProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def url(self, scheme: str = "socks5h", login: str = "") -> str:
        return f"{scheme}://{login}{'@' if login else ''}127.0.0.1:{self.port}"

    def stop(self) -> None:
        close_listener(self._listener)
        self._thread.join(10)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(30)
        try:
            with client:
                upstream = self._negotiate(client)
                if upstream is not None:
                    with upstream:
                        self._relay(client, upstream)
        except (OSError, ValueError):
            pass

    def _negotiate(self, client: socket.socket) -> socket.socket | None:
        version, count = _exactly(client, 2)
        methods = _exactly(client, count)
        if version != 5:
            return None
        wanted = _PASSWORD if self.login is not None else _NO_AUTHENTICATION
        if wanted not in methods:
            client.sendall(bytes([5, _NO_METHOD]))
            return None
        client.sendall(bytes([5, wanted]))
        if self.login is not None:
            _, size = _exactly(client, 2)
            user = _exactly(client, size).decode()
            password = _exactly(client, _exactly(client, 1)[0]).decode()
            if (user, password) != self.login:
                self.refused_logins += 1
                client.sendall(bytes([1, 1]))
                return None
            client.sendall(bytes([1, 0]))
        _, command, _, kind = _exactly(client, 4)
        if kind == _IPV4:
            host = socket.inet_ntop(socket.AF_INET, _exactly(client, 4))
        elif kind == _IPV6:
            host = socket.inet_ntop(socket.AF_INET6, _exactly(client, 16))
        elif kind == _NAME:
            host = _exactly(client, _exactly(client, 1)[0]).decode()
        else:
            client.sendall(_reply(_NO_ADDRESS_TYPE))
            return None
        (port,) = struct.unpack("!H", _exactly(client, 2))
        self.asked.append((host, port))
        if command != _CONNECT:
            client.sendall(_reply(_UNSUPPORTED))
            return None
        try:
            upstream = socket.create_connection((self.names.get(host, host), port), timeout=10)
        except OSError:
            client.sendall(_reply(_REFUSED))
            return None
        client.sendall(_reply(_SUCCEEDED))
        return upstream

    @staticmethod
    def _relay(client: socket.socket, upstream: socket.socket) -> None:
        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(30)


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ValueError("the client closed the connection")
        data += chunk
    return data


def _reply(status: int) -> bytes:
    return bytes([5, status, 0, _IPV4]) + ipaddress.IPv4Address("0.0.0.0").packed + struct.pack("!H", 0)
