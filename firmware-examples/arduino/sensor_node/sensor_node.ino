// A sensor node for switchboard on ESP32 / ESP8266 (Arduino core + PubSubClient 2.8),
// following firmware-examples/README.md: readings, a retained online/offline status with a
// last will, commands answered, reconnection with backoff. PubSubClient publishes QoS 0
// only and every packet must fit its buffer (SENSOR_BUFFER_SIZE), so readings stay short.
#include <Arduino.h>
#if defined(ESP8266)
#include <ESP8266WiFi.h>  // TLS below is the ESP32 core's; ESP8266 connects in plain MQTT
#else
#include <WiFi.h>
#include <WiFiClientSecure.h>
#endif
#include <PubSubClient.h>

#include "config.h"

static const uint16_t KEEPALIVE_S = 30;
static const unsigned int MAX_COMMAND = 64;  // bytes: the convention's limit

WiFiClient plainClient;
#if !defined(ESP8266)
WiFiClientSecure tlsClient;
#endif
PubSubClient mqtt;

char topicEnv[96], topicStatus[96], topicCmd[96], topicReply[96];
unsigned long interval = SENSOR_INTERVAL_MS;
unsigned long backoff = SENSOR_BACKOFF_MIN_MS;
unsigned long nextAttempt = 0;
unsigned long nextReading = 0;
unsigned long seq = 0;

float readTemperature() {
#if defined(ESP32)
    return temperatureRead();  // the chip's own sensor: good enough for a demo
#else
    return 21.0 + random(-50, 50) / 100.0;
#endif
}

void reply(const char *text) { mqtt.publish(topicReply, text); }

void publishReading() {
    char json[96];
    seq++;
    long t = lround(readTemperature() * 100);  // printf's %f is not in every libc
    snprintf(json, sizeof json, "{\"n\":%lu,\"t\":%s%ld.%02ld,\"up\":%lu,\"src\":\"%s\"}", seq,
             t < 0 ? "-" : "", labs(t) / 100, labs(t) % 100, millis(),
#if defined(ESP32)
             "chip"
#else
             "sim"
#endif
    );
    if (!mqtt.publish(topicEnv, json)) Serial.println("reading not sent");
}

void onCommand(char *topic, byte *payload, unsigned int length) {
    (void)topic;  // one subscription: every message is a command
    if (length > MAX_COMMAND) {
        reply("error too long");
        return;
    }
    char cmd[MAX_COMMAND + 1];
    memcpy(cmd, payload, length);
    cmd[length] = '\0';
    Serial.printf("command: %s\n", cmd);
    unsigned long ms;
    char out[32];
    if (strcmp(cmd, "ping") == 0) {
        reply("pong");
    } else if (sscanf(cmd, "interval %lu", &ms) == 1) {
        interval = constrain(ms, 100UL, 3600000UL);
        snprintf(out, sizeof out, "interval %lu", interval);
        reply(out);
    } else if (strcmp(cmd, "read") == 0) {
        publishReading();
        reply("ok");
    } else {
        reply("error unknown command");
    }
}

void setup() {
    Serial.begin(115200);
    snprintf(topicEnv, sizeof topicEnv, "%s/%s/env", SENSOR_PREFIX, SENSOR_NODE);
    snprintf(topicStatus, sizeof topicStatus, "%s/%s/status", SENSOR_PREFIX, SENSOR_NODE);
    snprintf(topicCmd, sizeof topicCmd, "%s/%s/cmd", SENSOR_PREFIX, SENSOR_NODE);
    snprintf(topicReply, sizeof topicReply, "%s/%s/reply", SENSOR_PREFIX, SENSOR_NODE);
    WiFi.mode(WIFI_STA);
    WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
    mqtt.setClient(plainClient);
#if !defined(ESP8266)
    const char *ca = SENSOR_CA_PEM;
    if (ca[0]) {
        tlsClient.setCACert(ca);
        mqtt.setClient(tlsClient);
    }
#endif
    mqtt.setServer(SENSOR_HOST, SENSOR_PORT);
    mqtt.setCallback(onCommand);
    mqtt.setKeepAlive(KEEPALIVE_S);
    mqtt.setBufferSize(SENSOR_BUFFER_SIZE);
    Serial.printf("node %s -> %s:%u\n", SENSOR_NODE, SENSOR_HOST, (unsigned)SENSOR_PORT);
}

void connectMqtt() {
    const char *user = SENSOR_PASSWORD[0] ? SENSOR_USER : nullptr;
    const char *pass = SENSOR_PASSWORD[0] ? SENSOR_PASSWORD : nullptr;
    if (mqtt.connect(SENSOR_NODE, user, pass, topicStatus, 1, true, "offline")) {
        // Commands first, then `online`: MQTT keeps the order of one connection's packets,
        // so a command sent on `online` finds the subscription in place.
        mqtt.subscribe(topicCmd, 1);
        mqtt.publish(topicStatus, "online", true);
        Serial.println("online");
        backoff = SENSOR_BACKOFF_MIN_MS;
        nextReading = millis();
        return;
    }
    int state = mqtt.state();
    if (state == MQTT_CONNECT_BAD_CREDENTIALS || state == MQTT_CONNECT_UNAUTHORIZED) {
        // Retrying soon cannot fix credentials or permissions.
        Serial.printf("refused: %d; waiting %lu ms\n", state, (unsigned long)SENSOR_REFUSED_RETRY_MS);
        nextAttempt = millis() + SENSOR_REFUSED_RETRY_MS;
        return;
    }
    // Full jitter: a fleet that lost its broker does not come back in step.
    Serial.printf("disconnected: %d\n", state);
    nextAttempt = millis() + random(backoff + 1);
    backoff = min(backoff * 2, (unsigned long)SENSOR_BACKOFF_MAX_MS);
}

void loop() {
    if (WiFi.status() != WL_CONNECTED) return;
    if (!mqtt.loop()) {
        if ((long)(millis() - nextAttempt) >= 0) connectMqtt();
        return;
    }
    if ((long)(millis() - nextReading) >= 0) {
        publishReading();
        nextReading = millis() + interval;
    }
}
