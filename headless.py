"""A headless Chromium for the tests, driven over the DevTools protocol with the standard
library only (a minimal WebSocket client): open a page, evaluate JavaScript, take a
screenshot, see the dialogs the page opened. Debian's `chromium` package (.ci/setup)."""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request

# Chromium must not try the (closed) network on its own: no updates, no sync, no QUIC.
FLAGS = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def chromium_path():
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevToolsError(Exception):
    pass


class WebSocket:
    """The client side of RFC 6455, just enough for DevTools: text frames, masked."""

    def __init__(self, url, timeout=30):
        host_port, _, path = url.split("://", 1)[1].partition("/")
        host, _, port = host_port.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise DevToolsError("the WebSocket handshake was cut")
            head += chunk
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise DevToolsError(f"WebSocket refused: {head[:200]!r}")

    def send(self, text):
        payload, mask = text.encode(), os.urandom(4)
        length = len(payload)
        head = b"\x81" + (bytes([0x80 | length]) if length < 126 else
                          b"\xfe" + struct.pack(">H", length) if length < 65536 else
                          b"\xff" + struct.pack(">Q", length))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise DevToolsError("the browser closed the WebSocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self, timeout):
        """The next text message, or None after `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            message = b""
            while True:
                first, second = self._read(2)
                length = second & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self._read(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self._read(8))[0]
                payload = self._read(length)
                opcode = first & 0x0F
                if opcode == 8:
                    raise DevToolsError("the browser closed the WebSocket")
                if opcode in (0, 1, 2):
                    message += payload
                    if first & 0x80:
                        return message.decode()
        except socket.timeout:
            return None
        finally:
            self.sock.settimeout(None)

    def close(self):
        self.sock.close()


class Browser:
    """A headless Chromium with its own fresh profile; `page()` opens a tab."""

    def __init__(self, timeout=30):
        path = chromium_path()
        if path is None:
            raise DevToolsError("no chromium: install Debian's chromium package (.ci/setup)")
        self.profile = tempfile.mkdtemp(prefix="pihace-chromium-")
        flags = list(FLAGS)
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.process = subprocess.Popen(
            [path, *flags, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise DevToolsError(f"chromium exited with {self.process.returncode}")
            try:
                with open(port_file) as file:
                    lines = file.read().split("\n")
                if len(lines) >= 2 and lines[0]:
                    self.port = int(lines[0])
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise DevToolsError("chromium did not open its DevTools port")
            time.sleep(0.05)

    def page(self):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank",
                                         method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            target = json.load(response)
        return Page(target["webSocketDebuggerUrl"])

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """One tab: call(method, **params) waits for its answer; events are kept in order."""

    def __init__(self, url):
        self.socket, self.next_id, self.events = WebSocket(url), 0, []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method, timeout=30, **params):
        self.next_id += 1
        wanted = self.next_id
        self.socket.send(json.dumps({"id": wanted, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DevToolsError(f"no answer to {method} within {timeout}s")
            message = self.socket.receive(left)
            if message is None:
                continue
            message = json.loads(message)
            if message.get("id") == wanted:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def pump(self, seconds=0.0):
        """Read the events that came (waiting up to `seconds` for the first)."""
        message = self.socket.receive(seconds)
        while message is not None:
            message = json.loads(message)
            if "method" in message:
                self.events.append(message)
            message = self.socket.receive(0.001)

    def evaluate(self, expression, timeout=30):
        """The value of a JavaScript expression (awaited when a promise)."""
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def viewport(self, width, height, mobile=False):
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)

    def navigate(self, url, timeout=30):
        """Load `url` and wait for its load event."""
        del self.events[:]
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not any(event["method"] == "Page.loadEventFired" for event in self.events):
            if time.monotonic() > deadline:
                raise DevToolsError(f"{url} did not load within {timeout}s")
            self.pump(0.1)

    def wait_for(self, expression, timeout, what):
        """Evaluate `expression` until it is truthy; its value, or DevToolsError."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise DevToolsError(f"timed out after {timeout}s waiting for {what}")
            self.pump(0.05)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as file:
            file.write(base64.b64decode(data))

    def dialogs(self):
        self.pump(0)
        return [event for event in self.events if event["method"] == "Page.javascriptDialogOpening"]

    def close(self):
        self.socket.close()
