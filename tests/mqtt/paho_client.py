#!/usr/bin/env python3
"""A paho-mqtt 2.x device for tests/mqtt.rs, driven through stdin and stdout.

Connects at start (arguments), then reads one JSON command per line on stdin and
prints one JSON event per line on stdout. Commands:

  {"cmd":"publish","topic":T,"payload_hex":H,"qos":Q,"retain":B,"wait":B}
  {"cmd":"subscribe","filters":[[F,Q],...]}
  {"cmd":"disconnect"}          clean DISCONNECT
  {"cmd":"close_socket"}        drop the TCP connection without DISCONNECT
  {"cmd":"exit"}

Events: connack (rc: the MQTT 3.1.1 return code, reason: the v5 reason code value,
name), published, puback, suback, message, disconnect, loop_ended, error.
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

V311_RC = {
    "Success": 0,
    "Unsupported protocol version": 1,
    "Client identifier not valid": 2,
    "Server unavailable": 3,
    "Bad user name or password": 4,
    "Not authorized": 5,
}

_out = threading.Lock()


def emit(**event):
    with _out:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def code(rc):
    return rc.value if hasattr(rc, "value") else int(rc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--version", choices=["3.1.1", "5"], default="5")
    ap.add_argument("--client-id", default="")
    ap.add_argument("--transport", choices=["tcp", "websockets"], default="tcp")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--keepalive", type=int, default=30)
    ap.add_argument("--will-topic")
    ap.add_argument("--will-payload-hex", default="")
    ap.add_argument("--will-retain", action="store_true")
    ap.add_argument(
        "--persistent", action="store_true", help="3.1.1 only: clean session off"
    )
    args = ap.parse_args()

    v5 = args.version == "5"
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        transport=args.transport,
        **({"clean_session": False} if args.persistent and not v5 else {}),
    )
    if args.username is not None:
        client.username_pw_set(args.username, args.password)
    if args.will_topic:
        client.will_set(
            args.will_topic,
            bytes.fromhex(args.will_payload_hex),
            qos=0,
            retain=args.will_retain,
        )

    def on_connect(_c, _u, _flags, reason, _props):
        emit(
            event="connack",
            rc=V311_RC.get(reason.getName(), -1) if not v5 else (0 if code(reason) == 0 else -1),
            reason=code(reason),
            name=reason.getName(),
        )

    def on_publish(_c, _u, mid, reason, _props):
        emit(event="puback", mid=mid, reason=code(reason))

    def on_subscribe(_c, _u, mid, reasons, _props):
        emit(event="suback", mid=mid, reason_codes=[code(r) for r in reasons])

    def on_message(_c, _u, msg):
        emit(
            event="message",
            topic=msg.topic,
            payload_hex=msg.payload.hex(),
            qos=msg.qos,
            retain=bool(msg.retain),
        )

    def on_disconnect(_c, _u, _flags, reason, _props):
        emit(event="disconnect", reason=code(reason), name=reason.getName())

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect

    try:
        client.connect(args.host, args.port, keepalive=args.keepalive)
    except OSError as e:
        emit(event="error", what="connect", error=str(e))
        return

    stop = threading.Event()

    # Our own loop rather than loop_start(): paho's reconnects itself after a refusal
    # or a disconnect, and the tests want to see exactly one connection.
    def loop():
        while not stop.is_set():
            rc = client.loop(timeout=0.02)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                emit(event="loop_ended", rc=int(rc))
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        what = cmd["cmd"]
        try:
            if what == "publish":
                info = client.publish(
                    cmd["topic"],
                    bytes.fromhex(cmd.get("payload_hex", "")),
                    qos=cmd.get("qos", 0),
                    retain=cmd.get("retain", False),
                )
                if cmd.get("wait"):
                    info.wait_for_publish(timeout=cmd.get("timeout", 5))
                emit(event="published", mid=info.mid, rc=int(info.rc),
                     is_published=info.is_published())
            elif what == "subscribe":
                rc, mid = client.subscribe([(f, q) for f, q in cmd["filters"]])
                emit(event="subscribe_sent", rc=int(rc), mid=mid)
            elif what == "disconnect":
                client.disconnect()
            elif what == "close_socket":
                stop.set()
                thread.join(2)
                sock = client.socket()
                if sock is not None:
                    sock.close()
                emit(event="closed")
            elif what == "exit":
                break
        except Exception as e:  # noqa: BLE001 - reported to the test
            emit(event="error", what=what, error=repr(e))
    stop.set()
    thread.join(2)


if __name__ == "__main__":
    main()
