#!/usr/bin/env python3
"""A Linux / Raspberry Pi sensor node for switchboard, following firmware-examples/README.md.

Reads a real temperature from /sys/class/hwmon (or /sys/class/thermal) when the machine has
one and simulates it otherwise; publishes readings, answers commands, reconnects with backoff.
Needs Python 3.8+ and paho-mqtt 2.x (`pip install 'paho-mqtt>=2,<3'`).

Configuration comes from the environment (all optional except on a real deployment the host):
  SENSOR_HOST (127.0.0.1)  SENSOR_PORT (1883, 8883 with TLS)  SENSOR_NODE (the hostname)
  SENSOR_USER (the node id) SENSOR_PASSWORD (a password from `switchboard passwd`, or a JWT)
  SENSOR_TLS_CA (a CA file: turns TLS on)   SENSOR_PREFIX (sensors)
  SENSOR_INTERVAL_MS (5000)  SENSOR_BACKOFF_MIN_MS (500)  SENSOR_BACKOFF_MAX_MS (30000)
  SENSOR_REFUSED_RETRY_MS (300000)
"""

import glob
import json
import math
import os
import random
import signal
import socket
import ssl
import sys
import time

import paho.mqtt.client as mqtt

MAX_COMMAND = 64  # bytes; the convention's limit, so every board can answer the same commands


def env(name, default):
    return os.environ.get("SENSOR_" + name, default)


NODE = env("NODE", socket.gethostname().split(".")[0])
PREFIX = env("PREFIX", "sensors")
HOST = env("HOST", "127.0.0.1")
TLS_CA = env("TLS_CA", "")
PORT = int(env("PORT", "8883" if TLS_CA else "1883"))
USER = env("USER", NODE)
PASSWORD = env("PASSWORD", "")
BACKOFF_MIN = int(env("BACKOFF_MIN_MS", "500")) / 1000
BACKOFF_MAX = int(env("BACKOFF_MAX_MS", "30000")) / 1000
REFUSED_RETRY = int(env("REFUSED_RETRY_MS", "300000")) / 1000
KEEPALIVE = 30

TOPIC_ENV = f"{PREFIX}/{NODE}/env"
TOPIC_STATUS = f"{PREFIX}/{NODE}/status"
TOPIC_CMD = f"{PREFIX}/{NODE}/cmd"
TOPIC_REPLY = f"{PREFIX}/{NODE}/reply"


def log(*args):
    print(*args, flush=True)


def hwmon_path():
    """The first temperature input the kernel exposes, or None on a machine without one."""
    for pattern in ("/sys/class/hwmon/hwmon*/temp1_input", "/sys/class/thermal/thermal_zone*/temp"):
        for path in sorted(glob.glob(pattern)):
            try:
                with open(path) as f:
                    int(f.read().strip())
                return path
            except (OSError, ValueError):
                continue
    return None


class Node:
    def __init__(self):
        self.interval = int(env("INTERVAL_MS", "5000")) / 1000
        self.seq = 0
        self.started = time.monotonic()
        self.sensor = hwmon_path()
        self.connected = False
        self.refused = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=NODE, protocol=mqtt.MQTTv311
        )
        if PASSWORD:
            self.client.username_pw_set(USER, PASSWORD)
        if TLS_CA:
            self.client.tls_set(ca_certs=TLS_CA, cert_reqs=ssl.CERT_REQUIRED)
        # The retained `offline` the broker publishes if the node vanishes.
        self.client.will_set(TOPIC_STATUS, "offline", qos=1, retain=True)
        self.client.on_connect = self.on_connect
        self.client.on_disconnect = self.on_disconnect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_message = self.on_message

    def temperature(self):
        if self.sensor:
            try:
                with open(self.sensor) as f:
                    return round(int(f.read().strip()) / 1000, 2)
            except (OSError, ValueError):
                pass
        t = time.monotonic() - self.started
        return round(21 + 3 * math.sin(t / 600) + random.uniform(-0.2, 0.2), 2)

    def on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            # Bad credentials or not authorised: retrying soon cannot help.
            log(f"refused: {reason}")
            self.refused = True
            client.disconnect()
            return
        log("connected")
        # Commands first, then `online`: a dashboard that answers `online` with a command
        # must find the node listening.
        client.subscribe(TOPIC_CMD, qos=1)

    def on_subscribe(self, client, userdata, mid, reasons, properties):
        if any(r.is_failure for r in reasons):
            log(f"subscribe refused: {reasons}")
            return
        client.publish(TOPIC_STATUS, "online", qos=1, retain=True)
        self.connected = True
        log("online")

    def on_disconnect(self, client, userdata, flags, reason, properties):
        self.connected = False
        log(f"disconnected: {reason}")

    def on_message(self, client, userdata, msg):
        if len(msg.payload) > MAX_COMMAND:
            self.reply("error too long")
            return
        words = msg.payload.decode("utf-8", "replace").strip().split()
        log(f"command: {' '.join(words)}")
        if words == ["ping"]:
            self.reply("pong")
        elif len(words) == 2 and words[0] == "interval" and words[1].isdigit():
            self.interval = min(max(int(words[1]), 100), 3_600_000) / 1000
            self.reply(f"interval {int(self.interval * 1000)}")
        elif words == ["read"]:
            self.publish_reading()
            self.reply("ok")
        else:
            self.reply("error unknown command")

    def reply(self, text):
        self.client.publish(TOPIC_REPLY, text, qos=0)

    def publish_reading(self):
        self.seq += 1
        reading = {
            "n": self.seq,
            "t": self.temperature(),
            "up": int((time.monotonic() - self.started) * 1000),
            "src": "hwmon" if self.sensor else "sim",
        }
        self.client.publish(TOPIC_ENV, json.dumps(reading, separators=(",", ":")), qos=0)

    def connect(self):
        """Connects once; False when the broker could not be reached."""
        try:
            self.client.connect(HOST, PORT, keepalive=KEEPALIVE)
            return True
        except (OSError, ssl.SSLError) as e:
            log(f"disconnected: could not connect: {e}")
            return False

    def run(self):
        backoff = BACKOFF_MIN
        next_reading = time.monotonic()
        while True:
            if not self.connect():
                # Full jitter: a fleet that lost its broker does not come back in step.
                time.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            while True:
                rc = self.client.loop(timeout=0.05)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self.connected:
                    backoff = BACKOFF_MIN
                    now = time.monotonic()
                    if now >= next_reading:
                        self.publish_reading()
                        next_reading = now + self.interval
            self.connected = False
            if self.refused:
                self.refused = False
                log(f"waiting {REFUSED_RETRY:g} s before trying again")
                time.sleep(REFUSED_RETRY)
            else:
                time.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, BACKOFF_MAX)

    def stop(self, *_):
        # A clean disconnect does not fire the will: say `offline` ourselves.
        if self.connected:
            info = self.client.publish(TOPIC_STATUS, "offline", qos=1, retain=True)
            deadline = time.monotonic() + 2
            while not info.is_published() and time.monotonic() < deadline:
                if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
        self.client.disconnect()
        sys.exit(0)


if __name__ == "__main__":
    node = Node()
    signal.signal(signal.SIGTERM, node.stop)
    signal.signal(signal.SIGINT, node.stop)
    log(f"node {NODE} -> {HOST}:{PORT} sensor={node.sensor or 'simulated'}")
    node.run()
