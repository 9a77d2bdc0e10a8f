#!/usr/bin/python3
"""Line-protocol driver for the Python clients of conformance/clients.

    driver.py websockets        python3-websockets (asyncio; offers permessage-deflate)
    driver.py websocket-client  python3-websocket (websocket-client; no compression)

Reads one JSON command per line on stdin and answers one JSON line on
stdout (see conformance/clients/doc.go). The fanout protocol is spoken
here, with the client library's framing and Debian's python3-msgpack, so
the test checks what a Python user of that library gets.
"""

import asyncio
import hashlib
import json
import queue
import sys
import threading

import msgpack

TIMEOUT = 60  # seconds for one command; the Go side waits as long


class Closed:
    """The end of a connection, as the library reported it."""

    def __init__(self, code=None, reason="", raised=""):
        self.code, self.reason, self.raised = code, reason, raised


class Session:
    """The protocol side, shared by both libraries: encoding, ids, the
    queue of messages not yet asked for."""

    def __init__(self, lib):
        self.lib = lib
        self.enc = "json"
        self.next_id = 0
        self.inbox = queue.Queue()  # decoded messages, then a Closed
        self.pending = []
        self.closed = None

    def encode(self, msg):
        if self.enc == "msgpack":
            return msgpack.packb(msg, use_bin_type=True)
        return json.dumps(msg)

    def sink(self):
        """What a connection's reader delivers to: this connection's inbox
        and encoding, bound now, so that a late message of a previous
        connection cannot land in the next one's inbox."""
        inbox, enc = self.inbox, self.enc

        def deliver(data):
            inbox.put(msgpack.unpackb(data, raw=False) if enc == "msgpack" else json.loads(data))
        return inbox, deliver

    def wait(self, match):
        for i, m in enumerate(self.pending):
            if match(m):
                return self.pending.pop(i)
        while True:
            if self.closed is not None:
                raise RuntimeError("connection closed while waiting: code %s %r %s" %
                                   (self.closed.code, self.closed.reason, self.closed.raised))
            m = self.inbox.get(timeout=TIMEOUT)
            if isinstance(m, Closed):
                self.closed = m
                continue
            if match(m):
                return m
            self.pending.append(m)

    def request(self, op, fragments=0, **fields):
        self.next_id += 1
        msg = dict(op=op, id=self.next_id, **fields)
        self.lib.send(self.encode(msg), fragments)
        want = self.next_id
        r = self.wait(lambda m: "push" not in m and m.get("id") == want)
        if "error" in r:
            return {"error": json.dumps(r["error"])}
        return {"offset": r.get("offset", 0)}

    def handle(self, cmd):
        c = cmd["cmd"]
        if c == "version":
            return self.lib.version()
        if c == "connect":
            self.lib.close()
            self.enc, self.next_id, self.pending, self.closed = cmd["encoding"], 0, [], None
            self.inbox = queue.Queue()
            proto, ext = self.lib.connect(cmd["url"], "fanout.v1." + self.enc, self)
            m = self.wait(lambda m: m.get("push") == "connected")
            return {"protocol": proto, "extensions": ext or "", "client": m.get("client")}
        if c == "subscribe":
            return self.request("subscribe", channel=cmd["channel"])
        if c == "publish":
            return self.request("publish", fragments=cmd.get("fragments", 0),
                                channel=cmd["channel"], data=cmd["data"])
        if c == "recv":
            ch = cmd["channel"]
            m = self.wait(lambda m: m.get("push") == "pub" and m.get("channel") == ch)
            data = m.get("data")
            r = {"offset": m.get("offset"), "type": type(data).__name__,
                 "publisher": (m.get("info") or {}).get("client")}
            if isinstance(data, str):
                r["len"] = len(data.encode())
                r["sha256"] = hashlib.sha256(data.encode()).hexdigest()
            return r
        if c == "send":
            # The server answers with a close, not a reply.
            try:
                self.lib.send(self.encode(dict(op="publish", id=999999, channel=cmd["channel"],
                                               data=cmd["data"])), 0)
            except Exception as e:  # closed while still sending: wait_close tells
                sys.stderr.write("send: %r\n" % e)
            return {}
        if c == "wait_close":
            while self.closed is None:
                m = self.inbox.get(timeout=TIMEOUT)
                if isinstance(m, Closed):
                    self.closed = m
            return {"code": self.closed.code if self.closed.code is not None else -1,
                    "reason": self.closed.reason, "raised": self.closed.raised}
        return {"error": "unknown command %r" % c}


class WebsocketsLib:
    """python3-websockets: its asyncio client runs on a loop of its own
    thread; sends are handed to it and waited for."""

    def __init__(self):
        import websockets
        self.websockets = websockets
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.ws = None

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def version(self):
        return {"client": "python3-websockets", "version": self.websockets.__version__,
                "runtime": "python " + sys.version.split()[0]}

    def connect(self, url, proto, session):
        async def dial():
            # compression="deflate" is the default: say so.
            return await self.websockets.connect(url, subprotocols=[proto], compression="deflate",
                                                 max_size=4 << 20, open_timeout=TIMEOUT)
        self.ws = self.run(dial())
        ws = self.ws
        inbox, deliver = session.sink()

        async def reader():
            try:
                async for data in ws:
                    deliver(data)
                await ws.wait_closed()
                inbox.put(Closed(ws.close_code, ws.close_reason))
            except self.websockets.ConnectionClosed as e:
                rcvd = e.rcvd
                inbox.put(Closed(rcvd.code if rcvd else ws.close_code,
                                         rcvd.reason if rcvd else ws.close_reason,
                                         "" if rcvd else "%s: %s" % (type(e).__name__, e)))
            except Exception as e:
                inbox.put(Closed(None, "", "%s: %s" % (type(e).__name__, e)))
        asyncio.run_coroutine_threadsafe(reader(), self.loop)
        return ws.subprotocol, ws.response_headers.get("Sec-WebSocket-Extensions")

    def send(self, data, fragments):
        if fragments > 1:
            step = -(-len(data) // fragments)
            # An iterable is sent as a fragmented message, one frame each.
            data = [data[i:i + step] for i in range(0, len(data), step)]
        self.run(self.ws.send(data))

    def close(self):
        if self.ws is not None:
            try:
                self.run(self.ws.close())
            except Exception:
                pass
            self.ws = None


class WebsocketClientLib:
    """python3-websocket (websocket-client): blocking; a thread reads."""

    def __init__(self):
        import websocket
        self.websocket = websocket
        self.ws = None

    def version(self):
        return {"client": "python3-websocket (websocket-client)", "version": self.websocket.__version__,
                "runtime": "python " + sys.version.split()[0]}

    def connect(self, url, proto, session):
        wsmod = self.websocket
        self.ws = wsmod.create_connection(url, subprotocols=[proto], timeout=TIMEOUT)
        ws = self.ws
        inbox, deliver = session.sink()

        def reader():
            try:
                while True:
                    op, data = ws.recv_data(control_frame=True)
                    if op in (wsmod.ABNF.OPCODE_TEXT, wsmod.ABNF.OPCODE_BINARY):
                        deliver(data)
                    elif op == wsmod.ABNF.OPCODE_CLOSE:
                        code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                        inbox.put(Closed(code, data[2:].decode("utf-8", "replace")))
                        return
            except Exception as e:
                inbox.put(Closed(None, "", "%s: %s" % (type(e).__name__, e)))
                # What a user does with the exception: drop the connection
                # (the server would otherwise wait for a close frame).
                ws.shutdown()
        threading.Thread(target=reader, daemon=True).start()
        return ws.getsubprotocol(), ws.getheaders().get("sec-websocket-extensions")

    def send(self, data, fragments):
        abnf = self.websocket.ABNF
        op = abnf.OPCODE_BINARY if isinstance(data, bytes) else abnf.OPCODE_TEXT
        if fragments <= 1:
            self.ws.send(data, op)
            return
        step = -(-len(data) // fragments)
        parts = [data[i:i + step] for i in range(0, len(data), step)]
        for i, part in enumerate(parts):
            self.ws.send_frame(abnf.create_frame(part, op if i == 0 else abnf.OPCODE_CONT,
                                                 fin=1 if i == len(parts) - 1 else 0))

    def close(self):
        if self.ws is not None:
            try:
                self.ws.close(timeout=5)
            except Exception:
                pass
            self.ws = None


def main():
    lib = {"websockets": WebsocketsLib, "websocket-client": WebsocketClientLib}[sys.argv[1]]()
    session = Session(lib)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            r = session.handle(json.loads(line))
        except Exception as e:
            r = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(r) + "\n")
        sys.stdout.flush()
    lib.close()


if __name__ == "__main__":
    main()
