#!/usr/bin/env python3
"""A fleet of simulated sensor nodes that follow firmware-examples/README.md, for demos
(the dashboard, the weather page) and for load. Python 3.8+ standard library only, so it
runs on the box itself or on a laptop: each node is a coroutine with its own MQTT 3.1.1
connection (CONNECT with a retained `offline` will, SUBSCRIBE to its commands, retained
`online`, readings at --rate, `ping` answered with `pong`, optional abrupt disconnects
followed by a jittered reconnect).

  python3 fleet.py --nodes 100 --rate 1                      # demo: 100 nodes, 1 reading/s each
  python3 fleet.py --shape weather --nodes 5 --rate 0.5      # weather/<station>/current, retained
  python3 fleet.py --nodes 1000 --rate 1 --duration 20 --measure   # load: loss and latency

With --duration it stops after that many seconds and prints one JSON line: readings sent,
and with --measure the readings an MQTT subscriber of its own received, the loss and the
latency percentiles (the reading's `ts` against the clock at arrival; same host, same clock).
"""

import argparse
import asyncio
import json
import math
import random
import struct
import sys
import time


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect_packet(client_id, keepalive, will=None, user=None, password=None):
    flags = 0x02  # clean session
    payload = mqtt_str(client_id)
    if will:
        topic, msg = will
        flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
        payload += mqtt_str(topic) + mqtt_str(msg)
    if user is not None:
        flags |= 0x80
        payload += mqtt_str(user)
        if password is not None:
            flags |= 0x40
            payload += mqtt_str(password)
    return packet(0x10, mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload)


def publish_packet(topic, payload, retain=False, qos=0, pid=1):
    body = mqtt_str(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return packet(0x30 | (qos << 1) | int(retain), body)


async def read_packet(reader):
    first = (await reader.readexactly(1))[0]
    n, shift = 0, 0
    while True:
        b = (await reader.readexactly(1))[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, await reader.readexactly(n)


def parse_publish(first, body):
    tlen = struct.unpack("!H", body[:2])[0]
    topic = body[2 : 2 + tlen].decode("utf-8", "replace")
    at = 2 + tlen
    pid = None
    if first & 0x06:
        pid = struct.unpack("!H", body[at : at + 2])[0]
        at += 2
    return topic, body[at:], pid


class Refused(Exception):
    pass


class Stats:
    def __init__(self):
        self.sent = 0
        self.received = 0
        self.latencies = []
        self.connects = 0
        self.refused = 0
        self.disconnects = 0
        # Latency counts only readings sent once every node is connected (wall clock, ms):
        # the ramp's connection storm is not the steady state being measured.
        self.steady_from = float("inf")


class Node:
    def __init__(self, args, index, stats):
        self.args = args
        self.stats = stats
        self.id = f"{args.id_prefix}{index}"
        if args.shape == "weather":
            base = f"weather/{self.id}"
            self.topic_data, self.retain_data = f"{base}/current", True
        else:
            base = f"{args.prefix}/{self.id}"
            self.topic_data, self.retain_data = f"{base}/env", False
        self.topic_status = f"{base}/status"
        self.topic_cmd = f"{base}/cmd"
        self.topic_reply = f"{base}/reply"
        self.period = 1 / args.rate
        self.seq = 0
        self.phase = random.uniform(0, 2 * math.pi)
        self.writer = None

    def reading(self):
        self.seq += 1
        now = time.time()
        day = math.sin(now / 86400 * 2 * math.pi + self.phase)
        r = {"n": self.seq, "t": round(15 + 8 * day + random.uniform(-0.3, 0.3), 2),
             "h": round(60 - 15 * day + random.uniform(-1, 1), 1), "ts": round(now * 1000, 3)}
        if self.args.shape == "weather":
            r["p"] = round(1013 + 5 * math.sin(now / 3600 + self.phase), 1)
            r["wind"] = round(abs(4 + 3 * math.sin(now / 600 + self.phase)), 1)
        return json.dumps(r, separators=(",", ":")).encode()

    async def session(self, until):
        """One connection, until `until` (loop time), an abrupt disconnect, or a lost socket."""
        a = self.args
        reader, writer = await asyncio.open_connection(a.host, a.port)
        self.writer = writer
        try:
            user = a.user if a.user is not None else (self.id if a.password is not None else None)
            writer.write(connect_packet(self.id, 30, (self.topic_status, b"offline"), user, a.password))
            first, body = await read_packet(reader)
            if first != 0x20 or body[1] != 0:
                raise Refused(body[1] if len(body) > 1 else -1)
            self.stats.connects += 1
            # Commands first; `online` once the subscription is granted.
            writer.write(packet(0x82, struct.pack("!H", 1) + mqtt_str(self.topic_cmd) + b"\x01"))
            while True:
                first, body = await read_packet(reader)
                if first & 0xF0 == 0x90:
                    break
            writer.write(publish_packet(self.topic_status, b"online", retain=True, qos=1, pid=2))
            commands = asyncio.ensure_future(self.commands(reader, writer))
            try:
                await self.readings(writer, until)
            finally:
                commands.cancel()
        finally:
            self.writer = None

    async def commands(self, reader, writer):
        while True:
            first, body = await read_packet(reader)
            if first & 0xF0 != 0x30:
                continue
            topic, payload, pid = parse_publish(first, body)
            if pid is not None:
                writer.write(b"\x40\x02" + struct.pack("!H", pid))
            answer = b"pong" if payload.strip() == b"ping" else b"error unknown command"
            writer.write(publish_packet(self.topic_reply, answer))

    async def readings(self, writer, until):
        loop = asyncio.get_running_loop()
        next_at = loop.time() + random.uniform(0, self.period)  # spread the fleet out
        while True:
            now = loop.time()
            if now >= until:
                return
            if next_at > now:
                await asyncio.sleep(min(next_at, until) - now)
                continue
            if writer.is_closing():
                raise ConnectionError("closed")
            writer.write(publish_packet(self.topic_data, self.reading(), retain=self.retain_data))
            self.stats.sent += 1
            if writer.transport.get_write_buffer_size() > 65536:
                await writer.drain()
            next_at += self.period
            if self.args.disconnects and random.random() < self.args.disconnects * self.period / 60:
                self.stats.disconnects += 1
                writer.transport.abort()  # no DISCONNECT: the broker publishes the will
                raise ConnectionError("simulated disconnect")

    async def run(self, until):
        loop = asyncio.get_running_loop()
        backoff = 0.5
        while loop.time() < until:
            try:
                await self.session(until)
                backoff = 0.5
            except Refused as e:
                self.stats.refused += 1
                print(f"{self.id}: refused ({e}); not retrying for {self.args.refused_retry} s", file=sys.stderr)
                await asyncio.sleep(min(self.args.refused_retry, max(0, until - loop.time())))
                continue
            except (OSError, asyncio.IncompleteReadError, ConnectionError):
                pass
            if loop.time() < until:
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, 30)

    async def goodbye(self):
        """A clean stop: `offline` ourselves (a DISCONNECT does not fire the will)."""
        w = self.writer
        if w is None or w.is_closing():
            return
        w.write(publish_packet(self.topic_status, b"offline", retain=True, qos=0))
        w.write(b"\xe0\x00")
        try:
            await w.drain()
            w.close()
        except OSError:
            pass


async def measure(args, stats, ready, until):
    reader, writer = await asyncio.open_connection(args.host, args.port)
    user = args.user if args.user is not None else ("fleet-measure" if args.password is not None else None)
    writer.write(connect_packet(f"{args.id_prefix}measure", 60, None, user, args.password))
    await read_packet(reader)
    flt = "weather/+/current" if args.shape == "weather" else f"{args.prefix}/+/env"
    writer.write(packet(0x82, struct.pack("!H", 1) + mqtt_str(flt) + b"\x00"))
    while (await read_packet(reader))[0] & 0xF0 != 0x90:
        pass
    ready.set()
    loop = asyncio.get_running_loop()
    while True:
        first, body = await asyncio.wait_for(read_packet(reader), max(0.1, until - loop.time() + 2))
        if first & 0xF0 != 0x30 or first & 0x01:  # skip retained values from earlier runs
            continue
        _, payload, _ = parse_publish(first, body)
        arrived = time.time() * 1000
        try:
            sent_at = json.loads(payload)["ts"]
        except (ValueError, KeyError):
            continue
        stats.received += 1
        if sent_at >= stats.steady_from:
            stats.latencies.append(arrived - sent_at)


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p / 100))], 2)


async def main(args):
    stats = Stats()
    loop = asyncio.get_running_loop()
    duration = args.duration if args.duration else float("inf")
    measurer = None
    if args.measure:
        ready = asyncio.Event()
        measurer = asyncio.ensure_future(measure(args, stats, ready, loop.time() + duration + 60))
        await ready.wait()
    nodes = [Node(args, i, stats) for i in range(1, args.nodes + 1)]
    start = loop.time()
    until = start + duration
    tasks = []
    for i, node in enumerate(nodes):
        tasks.append(asyncio.ensure_future(node.run(until)))
        if (i + 1) % args.ramp == 0:
            await asyncio.sleep(1)  # --ramp connections a second, not a SYN flood
    ramp_deadline = loop.time() + 10
    while stats.connects < args.nodes and loop.time() < ramp_deadline:
        await asyncio.sleep(0.05)
    stats.steady_from = time.time() * 1000 + 1000
    await asyncio.gather(*tasks)
    await asyncio.gather(*(n.goodbye() for n in nodes))
    if measurer:
        # Readings still in flight get two seconds to arrive.
        deadline = loop.time() + 2
        while stats.received < stats.sent and loop.time() < deadline:
            await asyncio.sleep(0.05)
        measurer.cancel()
    summary = {"nodes": args.nodes, "rate": args.rate, "duration_s": round(loop.time() - start, 2),
               "sent": stats.sent, "connects": stats.connects, "refused": stats.refused,
               "disconnects": stats.disconnects}
    if args.measure:
        summary.update(received=stats.received, lost=stats.sent - stats.received,
                       p50_ms=percentile(stats.latencies, 50), p99_ms=percentile(stats.latencies, 99),
                       max_ms=percentile(stats.latencies, 100))
    print(json.dumps(summary), flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rate", type=float, default=1.0, help="readings per second per node")
    p.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until interrupted")
    p.add_argument("--shape", choices=["env", "weather"], default="env")
    p.add_argument("--prefix", default="sensors")
    p.add_argument("--id-prefix", default="sim-", help="node ids are this plus 1..N")
    p.add_argument("--user", help="username for every node (default: the node id when --password is set)")
    p.add_argument("--password", help="password, or a JWT, for every node")
    p.add_argument("--disconnects", type=float, default=0, help="abrupt disconnects per node per minute")
    p.add_argument("--refused-retry", type=float, default=300, help="seconds to wait after a refused CONNECT")
    p.add_argument("--ramp", type=int, default=500, help="new connections per second at start")
    p.add_argument("--measure", action="store_true", help="subscribe too, and report loss and latency")
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except KeyboardInterrupt:
        pass
