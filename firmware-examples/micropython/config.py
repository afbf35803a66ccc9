# Edit before copying to the board (see ../README.md). Every example reads the same settings.
WIFI_SSID = "your-wifi"
WIFI_PASSWORD = "your-wifi-password"
HOST = "192.168.1.10"       # the switchboard box
PORT = 1883                 # 8883 with TLS
TLS_CA = ""                 # a CA file on the board (e.g. "ca.pem"): turns TLS on; needs
                            # umqtt.simple >= 1.4 from micropython-lib (`mip install umqtt.simple`)
NODE = "node-1"             # client id and the <node> in every topic
PREFIX = "sensors"
USER = "node-1"             # a name from `switchboard passwd`, or the JWT's sub
PASSWORD = ""               # its password, or a JWT from `switchboard token create`
INTERVAL_MS = 5000
BACKOFF_MIN_MS = 500
BACKOFF_MAX_MS = 30000
REFUSED_RETRY_MS = 300000
