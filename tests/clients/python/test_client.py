"""herald against python-socketio's synchronous client.

Starts the testbed from $HERALD_TESTBED (the same binary the JS suites use),
then connects with socketio.Client over WebSocket and over HTTP long-polling.

Run:  HERALD_TESTBED=target/debug/examples/testbed pytest -q tests/clients/python
"""

import atexit
import collections
import os
import queue
import re
import select
import signal
import subprocess
import threading
import time

import pytest
import socketio

WAIT = float(os.environ.get("HERALD_TEST_WAIT_MS", "5000")) / 1000.0
START_TIMEOUT = 15.0
LISTENING_RE = re.compile(r"^listening on (\S+):(\d+)\s*$")

_children = set()


def _kill_children():
    for proc in list(_children):
        if proc.poll() is None:
            proc.kill()


atexit.register(_kill_children)


class HeraldTestbed:
    def __init__(self):
        bin_path = os.environ.get("HERALD_TESTBED")
        if not bin_path:
            pytest.fail("HERALD_TESTBED is not set", pytrace=False)
        if not (os.path.isfile(bin_path) and os.access(bin_path, os.X_OK)):
            pytest.fail(f"HERALD_TESTBED={bin_path} is not an executable file", pytrace=False)

        env = dict(os.environ, PORT="0")
        self.proc = subprocess.Popen(
            [bin_path],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _children.add(self.proc)
        self._stderr = collections.deque(maxlen=500)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        try:
            self.host, self.port = self._wait_listening()
        except BaseException:
            self.stop()
            raise
        # Keep stdout drained so the testbed never blocks on a full pipe.
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        self.url = f"http://{self.host}:{self.port}"

    def _drain_stderr(self):
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr.append(line.decode("utf-8", "replace"))

    def _drain_stdout(self):
        for _ in iter(self.proc.stdout.readline, b""):
            pass

    def logs(self):
        return "".join(self._stderr)

    def _wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"testbed did not print its listening line within {START_TIMEOUT}s\n{self.logs()}"
                )
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(
                    f"testbed exited before listening (code={self.proc.wait()})\n{self.logs()}"
                )
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                m = LISTENING_RE.match(line.decode("utf-8", "replace").rstrip("\r"))
                if m:
                    return m.group(1), int(m.group(2))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _children.discard(self.proc)
        return self.proc.returncode


@pytest.fixture(scope="module")
def testbed():
    tb = HeraldTestbed()
    yield tb
    crashed = tb.proc.poll() is not None
    code = tb.stop()
    if crashed:
        pytest.fail(f"testbed exited during the tests (code={code})\n{tb.logs()}", pytrace=False)


class Recorder:
    """Collects the arguments of received events, one queue per event name."""

    def __init__(self):
        self._queues = collections.defaultdict(queue.Queue)

    def handler(self, event):
        def on_event(*args):
            self._queues[event].put(args)

        return on_event

    def next(self, event, timeout=WAIT):
        try:
            return self._queues[event].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout}s waiting for {event!r}") from None


def _connect(testbed, transport, namespace):
    sio = socketio.Client(reconnection=False)
    rec = Recorder()
    for event in ("welcome", "echo", "answer"):
        sio.on(event, rec.handler(event), namespace=namespace)
    sio.connect(
        testbed.url,
        transports=[transport],
        namespaces=[namespace],
        auth={"token": "abc"},
        socketio_path="socket.io",
        wait_timeout=WAIT,
    )
    return sio, rec


def _disconnect(sio):
    """Disconnect, but never block the suite for long.

    python-engineio's polling client can lose its CLOSE packet when the
    disconnect races with its write loop; it then waits for the server's next
    ping to end the pending long-poll (up to pingInterval, 25 s by default).
    That is a client-side quirk, so give disconnect() a bounded time and let a
    straggling thread finish on its own (it is a daemon thread).
    """
    t = threading.Thread(target=sio.disconnect, daemon=True)
    t.start()
    t.join(WAIT)


TRANSPORTS = ["websocket", "polling"]
NAMESPACES = ["/", "/custom"]


@pytest.fixture(params=[(t, n) for t in TRANSPORTS for n in NAMESPACES], ids=lambda p: f"{p[0]}-{p[1]}")
def client(request, testbed):
    transport, namespace = request.param
    sio, rec = _connect(testbed, transport, namespace)
    try:
        yield sio, rec, transport, namespace
    finally:
        _disconnect(sio)


def test_welcome(client):
    sio, rec, transport, namespace = client
    (welcome,) = rec.next("welcome")
    assert welcome["nsp"] == namespace
    assert welcome["auth"] == {"token": "abc"}
    assert welcome["query"]["EIO"] == "4"
    assert welcome["query"]["transport"] == transport
    assert sio.transport() == transport
    assert sio.connected


ECHO_CASES = [
    pytest.param("hello", id="string"),
    pytest.param("", id="empty-string"),
    pytest.param(42, id="int"),
    pytest.param(-3.5, id="float"),
    pytest.param(True, id="bool"),
    pytest.param({"a": 1, "b": {"c": [1, 2, {"d": None}]}}, id="nested"),
    pytest.param([1, "two", [3]], id="list-as-one-arg"),
    pytest.param("日本語 中文 😀🎉", id="unicode"),
    pytest.param(b"\x00\x01\x02\xff" * 64, id="bytes"),
    pytest.param({"name": "f.bin", "data": bytes(range(256))}, id="nested-bytes"),
]


@pytest.mark.parametrize("payload", ECHO_CASES)
def test_echo_with_ack(client, payload):
    sio, _rec, _transport, namespace = client
    assert sio.call("echo", payload, namespace=namespace, timeout=WAIT) == payload


def test_echo_with_ack_multiple_args(client):
    sio, _rec, _transport, namespace = client
    args = (1, "two", {"three": 3}, b"\x04")
    assert sio.call("echo", args, namespace=namespace, timeout=WAIT) == args


def test_echo_without_ack(client):
    sio, rec, _transport, namespace = client
    sio.emit("echo", ("plain", {"n": 1}, b"bin"), namespace=namespace)
    assert rec.next("echo") == ("plain", {"n": 1}, b"bin")


def test_large_message(client):
    sio, _rec, _transport, namespace = client
    big = ("abcdefghij-é€😀" * 8000)[: 100 * 1024]
    assert sio.call("echo", big, namespace=namespace, timeout=WAIT) == big


def test_server_to_client_ack(client):
    sio, rec, _transport, namespace = client
    received = queue.Queue()

    def on_q(*args):
        received.put(args)
        return "reply", {"ok": True}, "返事"

    sio.on("q", on_q, namespace=namespace)
    sio.emit("ask", ("q", 1, "two", {"x": [3]}), namespace=namespace)
    try:
        args = received.get(timeout=WAIT)
    except queue.Empty:
        raise AssertionError("'q' was not received") from None
    assert args == (1, "two", {"x": [3]})
    assert rec.next("answer") == ("reply", {"ok": True}, "返事")
