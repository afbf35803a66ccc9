#!/usr/bin/env python3
"""A simulated webcam: publishes JPEG frames (the files in frames/, in a loop) retained
on webcam/<cam>/frame over MQTT, at --fps. Needs paho-mqtt 2 (pip install paho-mqtt).
A real camera would publish its own JPEGs the same way.

    python3 demos/webcam/camera.py [--host 127.0.0.1] [--port 1883] [--cam cam1] [--fps 5]
"""

import argparse
import pathlib
import time

import paho.mqtt.client as mqtt

FRAMES = pathlib.Path(__file__).resolve().parent / "frames"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--cam", default="cam1")
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--count", type=int, default=0, help="frames to send, 0 for ever")
    args = ap.parse_args()

    frames = [p.read_bytes() for p in sorted(FRAMES.glob("*.jpg"))]
    if not frames:
        raise SystemExit(f"no frames in {FRAMES}")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"webcam-{args.cam}")
    client.connect(args.host, args.port)
    client.loop_start()
    sent = 0
    try:
        while args.count == 0 or sent < args.count:
            frame = frames[sent % len(frames)]
            client.publish(f"webcam/{args.cam}/frame", frame, qos=1, retain=True).wait_for_publish()
            sent += 1
            time.sleep(1 / args.fps)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()


if __name__ == "__main__":
    main()
