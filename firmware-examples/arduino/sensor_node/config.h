// Edit before flashing (see ../../README.md). Anything defined before this file is read
// (the host build's -include) wins.
#pragma once
#ifndef WIFI_SSID
#define WIFI_SSID "your-wifi"
#define WIFI_PASSWORD "your-wifi-password"
#endif
#ifndef SENSOR_HOST
#define SENSOR_HOST "192.168.1.10"  // the switchboard box
#define SENSOR_PORT 1883            // 8883 with SENSOR_CA_PEM
#define SENSOR_NODE "node-2"        // client id and the <node> in every topic
#define SENSOR_PREFIX "sensors"
#define SENSOR_USER "node-2"        // a name from `switchboard passwd`, or the JWT's sub
#define SENSOR_PASSWORD ""          // its password, or a JWT (then raise SENSOR_BUFFER_SIZE)
#define SENSOR_CA_PEM ""            // the box's CA certificate (PEM): TLS on ESP32
#define SENSOR_INTERVAL_MS 5000UL
#define SENSOR_BACKOFF_MIN_MS 500UL
#define SENSOR_BACKOFF_MAX_MS 30000UL
#define SENSOR_REFUSED_RETRY_MS 300000UL
#define SENSOR_BUFFER_SIZE 256      // PubSubClient's default; a JWT password needs ~512
#endif
