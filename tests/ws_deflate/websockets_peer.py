"""A third-party WebSocket client for tests/ws_deflate.rs: Python `websockets`, whose
permessage-deflate is on by default. Subscribes, publishes a telemetry batch (sent
compressed when the extension was negotiated) and waits for it to come back.

Usage: websockets_peer.py URL on|off. Prints one JSON line: the negotiated extensions and
whether the message came back intact."""

import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def request(ws, frame):
    await ws.send(json.dumps(frame))
    while True:
        reply = json.loads(await ws.recv())
        if reply.get("id") == frame["id"]:
            return reply


async def main(url, compression):
    async with connect(url, compression="deflate" if compression == "on" else None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        welcome = json.loads(await ws.recv())
        assert welcome["op"] == "welcome", welcome
        assert (await request(ws, {"op": "sub", "topic": "py/env", "id": "s"}))["op"] == "ok"
        data = {"readings": [{"node": f"n{i}", "t": 21.5 + i, "h": 40.25, "p": 1013.2} for i in range(40)]}
        assert (await request(ws, {"op": "pub", "topic": "py/env", "data": data, "id": "p"}))["op"] == "ok"
        while True:
            frame = json.loads(await ws.recv())
            if frame["op"] == "msg":
                break
        print(json.dumps({"extensions": extensions, "intact": frame["data"] == data}))


asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), 10))
