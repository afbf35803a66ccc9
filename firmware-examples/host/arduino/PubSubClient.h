// PubSubClient 2.8's public API, implemented over libmosquitto for running sketches on a
// Linux host. It keeps the real library's limits, or a sketch that passes here could fail
// on the board: one buffer of setBufferSize() bytes (256 by default) bounds CONNECT,
// PUBLISH and SUBSCRIBE packets and incoming messages (larger ones are dropped unseen);
// publishes are QoS 0; subscriptions QoS 0 or 1; connect() blocks until CONNACK.
#pragma once
#include <functional>

#include "Arduino.h"
#include "WiFi.h"

#define MQTT_CONNECTION_TIMEOUT -4
#define MQTT_CONNECTION_LOST -3
#define MQTT_CONNECT_FAILED -2
#define MQTT_DISCONNECTED -1
#define MQTT_CONNECTED 0
#define MQTT_CONNECT_BAD_PROTOCOL 1
#define MQTT_CONNECT_BAD_CLIENT_ID 2
#define MQTT_CONNECT_UNAVAILABLE 3
#define MQTT_CONNECT_BAD_CREDENTIALS 4
#define MQTT_CONNECT_UNAUTHORIZED 5

#define MQTT_MAX_PACKET_SIZE 256
#define MQTT_KEEPALIVE 15
#define MQTT_SOCKET_TIMEOUT 15
#define MQTT_MAX_HEADER_SIZE 5

#define MQTT_CALLBACK_SIGNATURE std::function<void(char *, uint8_t *, unsigned int)> callback

struct mosquitto;

class PubSubClient {
  public:
    PubSubClient();
    explicit PubSubClient(WiFiClient &client);
    ~PubSubClient();

    PubSubClient &setServer(const char *domain, uint16_t port);
    PubSubClient &setCallback(MQTT_CALLBACK_SIGNATURE);
    PubSubClient &setClient(WiFiClient &client);
    PubSubClient &setKeepAlive(uint16_t seconds);
    PubSubClient &setSocketTimeout(uint16_t seconds);
    bool setBufferSize(uint16_t size);
    uint16_t getBufferSize();

    bool connect(const char *id);
    bool connect(const char *id, const char *user, const char *pass);
    bool connect(const char *id, const char *willTopic, uint8_t willQos, bool willRetain,
                 const char *willMessage);
    bool connect(const char *id, const char *user, const char *pass, const char *willTopic,
                 uint8_t willQos, bool willRetain, const char *willMessage);
    bool connect(const char *id, const char *user, const char *pass, const char *willTopic,
                 uint8_t willQos, bool willRetain, const char *willMessage, bool cleanSession);
    void disconnect();

    bool publish(const char *topic, const char *payload);
    bool publish(const char *topic, const char *payload, bool retained);
    bool publish(const char *topic, const uint8_t *payload, unsigned int plength);
    bool publish(const char *topic, const uint8_t *payload, unsigned int plength, bool retained);

    bool subscribe(const char *topic);
    bool subscribe(const char *topic, uint8_t qos);
    bool unsubscribe(const char *topic);

    bool loop();
    bool connected();
    int state();

    // libmosquitto's callbacks land here.
    void on_connack(int rc);
    void on_message(const char *topic, const void *payload, int len, int qos);
    void on_disconnect();

  private:
    struct mosquitto *mosq = nullptr;
    WiFiClient *client = nullptr;
    const char *host = nullptr;
    uint16_t port = 1883;
    uint16_t keepalive = MQTT_KEEPALIVE;
    uint16_t socket_timeout = MQTT_SOCKET_TIMEOUT;
    uint16_t buffer_size = MQTT_MAX_PACKET_SIZE;
    int current_state = MQTT_DISCONNECTED;
    int connack = -1;
    MQTT_CALLBACK_SIGNATURE;
    void drop();
};
