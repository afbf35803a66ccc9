#!/usr/bin/env python3
"""For tests/mqtt_admission.rs: an MQTT 5 device leaves a Last Will with properties and
loses its connection; a paho-mqtt MQTT 5 subscriber prints the will it receives as one
JSON line (topic, payload, retain and every property it came with)."""

import argparse
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def client(client_id):
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--topic", required=True)
    args = ap.parse_args()

    got = threading.Event()
    subscribed = threading.Event()
    watcher = client("will-watcher")

    def on_subscribe(*_):
        subscribed.set()

    def on_message(_c, _u, msg):
        props = msg.properties
        print(json.dumps({
            "topic": msg.topic,
            "payload": msg.payload.decode(),
            "retain": bool(msg.retain),
            "user_properties": [list(p) for p in getattr(props, "UserProperty", [])],
            "content_type": getattr(props, "ContentType", None),
            "payload_format": getattr(props, "PayloadFormatIndicator", None),
            "response_topic": getattr(props, "ResponseTopic", None),
            "correlation_data": getattr(props, "CorrelationData", b"").hex(),
        }), flush=True)
        got.set()

    watcher.on_subscribe = on_subscribe
    watcher.on_message = on_message
    watcher.connect("127.0.0.1", args.port)
    watcher.loop_start()
    watcher.subscribe(args.topic, qos=1)
    if not subscribed.wait(5):
        sys.exit("no SUBACK")

    device = client("will-device")
    props = Properties(PacketTypes.WILLMESSAGE)
    props.UserProperty = [("site", "north"), ("unit", "C")]
    props.ContentType = "text/plain"
    props.PayloadFormatIndicator = 1
    props.ResponseTopic = "replies/node"
    props.CorrelationData = b"\x01\x02"
    device.will_set(args.topic, b"gone", qos=0, retain=False, properties=props)
    device.connect("127.0.0.1", args.port)
    device.loop(timeout=1.0)
    # Lost, not disconnected: the socket closes without a DISCONNECT.
    device.socket().close()

    if not got.wait(5):
        sys.exit("no will arrived")
    watcher.disconnect()
    watcher.loop_stop()


if __name__ == "__main__":
    main()
