#!/usr/bin/env python3
"""Simulated weather stations: each publishes a reading every interval over MQTT,
retained on weather/<station>/current (so a new page shows it at once) and as a stream
on weather/<station>/readings. Needs paho-mqtt 2 (pip install paho-mqtt).

    python3 demos/weather/stations.py [--host 127.0.0.1] [--port 1883] [--stations 3]
"""

import argparse
import json
import math
import random
import time

import paho.mqtt.client as mqtt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--stations", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    ap.add_argument("--count", type=int, default=0, help="readings per station, 0 for ever")
    args = ap.parse_args()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="weather-stations")
    client.connect(args.host, args.port)
    client.loop_start()
    names = [f"station-{i + 1}" for i in range(args.stations)]
    base = {name: random.uniform(8, 24) for name in names}
    sent = 0
    try:
        while args.count == 0 or sent < args.count:
            t = time.time()
            for i, name in enumerate(names):
                reading = {
                    "temp_c": round(base[name] + 3 * math.sin(t / 30 + i) + random.uniform(-0.3, 0.3), 1),
                    "humidity": round(60 + 20 * math.sin(t / 50 + 2 * i)),
                    "wind_ms": round(abs(4 + 3 * math.sin(t / 10 + i) + random.uniform(-1, 1)), 1),
                    "ts": int(t * 1000),
                }
                payload = json.dumps(reading)
                client.publish(f"weather/{name}/current", payload, qos=1, retain=True)
                client.publish(f"weather/{name}/readings", payload, qos=1).wait_for_publish()
            sent += 1
            if args.count == 0 or sent < args.count:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()


if __name__ == "__main__":
    main()
