# A sensor node for switchboard on ESP32 / Raspberry Pi Pico W class boards (MicroPython,
# umqtt.simple), following firmware-examples/README.md: readings, retained online/offline
# status with a last will, commands answered, reconnection with backoff.
# The same file runs on the MicroPython unix port (tests/firmware.rs does that).
import json
import random
import time

from umqtt.simple import MQTTClient, MQTTException

import config

KEEPALIVE = 30
MAX_COMMAND = 64  # bytes: the convention's limit
TOPIC_ENV = "%s/%s/env" % (config.PREFIX, config.NODE)
TOPIC_STATUS = "%s/%s/status" % (config.PREFIX, config.NODE)
TOPIC_CMD = "%s/%s/cmd" % (config.PREFIX, config.NODE)
TOPIC_REPLY = "%s/%s/reply" % (config.PREFIX, config.NODE)

try:  # a board: join the network first; the unix port has the host's network
    import network
except ImportError:
    network = None


def wifi_connect():
    if network is None:
        return
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(config.WIFI_SSID, config.WIFI_PASSWORD)
        while not wlan.isconnected():
            time.sleep_ms(200)
    print("wifi", wlan.ifconfig()[0])


def sensor():
    """A function returning degrees C: the chip's own sensor where there is one."""
    try:
        import esp32

        if hasattr(esp32, "mcu_temperature"):  # ESP32-S2/S3/C3
            return esp32.mcu_temperature
        return lambda: (esp32.raw_temperature() - 32) / 1.8  # classic ESP32, in °F
    except ImportError:
        pass
    try:
        import machine

        adc = machine.ADC(4)  # RP2040's internal sensor
        return lambda: 27 - (adc.read_u16() * 3.3 / 65535 - 0.706) / 0.001721
    except (ImportError, AttributeError, ValueError):
        pass
    return None


def tls_context():
    """umqtt.simple >= 1.4 takes an SSLContext and checks the broker's name against it."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    with open(config.TLS_CA, "rb") as f:
        ctx.load_verify_locations(cadata=f.read())
    return ctx


class Node:
    def __init__(self):
        self.interval = config.INTERVAL_MS
        self.seq = 0
        self.started = time.ticks_ms()
        self.read_temp = sensor()
        self.client = None
        self.last_sent = 0

    def temperature(self):
        if self.read_temp:
            return round(self.read_temp(), 2)
        return round(21 + (random.getrandbits(8) - 128) / 256, 2)

    def connect(self):
        c = MQTTClient(
            config.NODE,
            config.HOST,
            port=config.PORT,
            user=config.USER if config.PASSWORD else None,
            password=config.PASSWORD if config.PASSWORD else None,
            keepalive=KEEPALIVE,
            ssl=tls_context() if config.TLS_CA else False,
        )
        c.set_callback(self.on_message)
        c.set_last_will(TOPIC_STATUS, "offline", retain=True, qos=1)
        c.connect()
        self.client = c
        # Commands first, then `online`, so a command sent on `online` finds us listening.
        c.subscribe(TOPIC_CMD, qos=1)
        c.publish(TOPIC_STATUS, "online", retain=True, qos=1)
        self.last_sent = time.ticks_ms()
        print("online")

    def on_message(self, topic, msg):
        if len(msg) > MAX_COMMAND:
            self.reply("error too long")
            return
        words = msg.decode().strip().split()
        print("command:", " ".join(words))
        if words == ["ping"]:
            self.reply("pong")
        elif len(words) == 2 and words[0] == "interval" and words[1].isdigit():
            self.interval = min(max(int(words[1]), 100), 3600000)
            self.reply("interval %d" % self.interval)
        elif words == ["read"]:
            self.publish_reading()
            self.reply("ok")
        else:
            self.reply("error unknown command")

    def reply(self, text):
        self.client.publish(TOPIC_REPLY, text)
        self.last_sent = time.ticks_ms()

    def publish_reading(self):
        self.seq += 1
        reading = {
            "n": self.seq,
            "t": self.temperature(),
            "up": time.ticks_diff(time.ticks_ms(), self.started),
            "src": "chip" if self.read_temp else "sim",
        }
        self.client.publish(TOPIC_ENV, json.dumps(reading))
        self.last_sent = time.ticks_ms()

    def serve(self):
        """Runs until the connection breaks (an OSError from the socket)."""
        next_reading = time.ticks_ms()
        while True:
            self.client.check_msg()
            now = time.ticks_ms()
            if time.ticks_diff(now, next_reading) >= 0:
                self.publish_reading()
                next_reading = time.ticks_add(now, self.interval)
            elif time.ticks_diff(now, self.last_sent) > KEEPALIVE * 500:
                self.client.ping()  # umqtt.simple does not keep the session alive itself
                self.last_sent = now
            time.sleep_ms(20)

    def run(self):
        backoff = config.BACKOFF_MIN_MS
        while True:
            wifi_connect()
            try:
                self.connect()
                backoff = config.BACKOFF_MIN_MS
                self.serve()
            except MQTTException as e:
                # CONNACK 4 (bad username or password) or 5 (not authorised): retrying
                # soon cannot help, and a node hammering the broker helps nobody.
                print("refused: %s; waiting %d ms" % (e, config.REFUSED_RETRY_MS))
                self.close()
                time.sleep_ms(config.REFUSED_RETRY_MS)
                continue
            except (OSError, IndexError, AssertionError) as e:
                print("disconnected:", repr(e))
            self.close()
            # Full jitter: a fleet that lost its broker does not come back in step.
            time.sleep_ms(random.getrandbits(16) * backoff // 65536)
            backoff = min(backoff * 2, config.BACKOFF_MAX_MS)

    def close(self):
        if self.client and self.client.sock:
            try:
                self.client.sock.close()
            except OSError:
                pass
        self.client = None


print("node", config.NODE, "->", config.HOST, config.PORT)
Node().run()
