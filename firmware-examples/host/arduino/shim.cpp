// The host side of the Arduino shim: time, randomness, the sketch's main loop, and
// PubSubClient over libmosquitto (one non-threaded client driven by loop()).
#include <mosquitto.h>
#include <sys/mman.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <string>

#include "Arduino.h"
#include "PubSubClient.h"
#include "WiFi.h"

HostSerial Serial;
HostWiFi WiFi;

static struct timespec boot;

unsigned long millis() {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (unsigned long)((now.tv_sec - boot.tv_sec) * 1000 + (now.tv_nsec - boot.tv_nsec) / 1000000);
}

void delay(unsigned long ms) { usleep((useconds_t)ms * 1000); }
long random(long max) { return max > 0 ? ::random() % max : 0; }
long random(long min, long max) { return max > min ? min + ::random() % (max - min) : min; }
void randomSeed(unsigned long seed) { srandom((unsigned)seed); }

void setup();
void loop();

int main() {
    clock_gettime(CLOCK_MONOTONIC, &boot);
    srandom((unsigned)getpid());
    mosquitto_lib_init();
    setup();
    for (;;) {
        loop();
        // An MCU spins through loop(); a shared host should not burn a core doing so.
        usleep(2000);
    }
}

// ---- PubSubClient ------------------------------------------------------------------

static void cb_connect(struct mosquitto *, void *obj, int rc) {
    static_cast<PubSubClient *>(obj)->on_connack(rc);
}
static void cb_disconnect(struct mosquitto *, void *obj, int) {
    static_cast<PubSubClient *>(obj)->on_disconnect();
}
static void cb_message(struct mosquitto *, void *obj, const struct mosquitto_message *m) {
    static_cast<PubSubClient *>(obj)->on_message(m->topic, m->payload, m->payloadlen, m->qos);
}

PubSubClient::PubSubClient() {}
PubSubClient::PubSubClient(WiFiClient &c) : client(&c) {}
PubSubClient::~PubSubClient() { drop(); }

PubSubClient &PubSubClient::setServer(const char *domain, uint16_t p) {
    host = domain;
    port = p;
    return *this;
}
PubSubClient &PubSubClient::setCallback(MQTT_CALLBACK_SIGNATURE) {
    this->callback = callback;
    return *this;
}
PubSubClient &PubSubClient::setClient(WiFiClient &c) {
    client = &c;
    return *this;
}
PubSubClient &PubSubClient::setKeepAlive(uint16_t s) {
    keepalive = s;
    return *this;
}
PubSubClient &PubSubClient::setSocketTimeout(uint16_t s) {
    socket_timeout = s;
    return *this;
}
bool PubSubClient::setBufferSize(uint16_t size) {
    if (size == 0) return false;
    buffer_size = size;
    return true;
}
uint16_t PubSubClient::getBufferSize() { return buffer_size; }

bool PubSubClient::connect(const char *id) { return connect(id, nullptr, nullptr, nullptr, 0, false, nullptr, true); }
bool PubSubClient::connect(const char *id, const char *user, const char *pass) {
    return connect(id, user, pass, nullptr, 0, false, nullptr, true);
}
bool PubSubClient::connect(const char *id, const char *wt, uint8_t wq, bool wr, const char *wm) {
    return connect(id, nullptr, nullptr, wt, wq, wr, wm, true);
}
bool PubSubClient::connect(const char *id, const char *user, const char *pass, const char *wt, uint8_t wq,
                           bool wr, const char *wm) {
    return connect(id, user, pass, wt, wq, wr, wm, true);
}

bool PubSubClient::connect(const char *id, const char *user, const char *pass, const char *wt, uint8_t wq,
                           bool wr, const char *wm, bool clean) {
    drop();
    // The whole CONNECT must fit the buffer, as on the board (a long JWT needs a bigger one).
    size_t length = MQTT_MAX_HEADER_SIZE + 10;
    const char *strings[] = {id, wt, wt ? wm : nullptr, user, user ? pass : nullptr};
    for (const char *s : strings) {
        if (!s) continue;
        if (length + 2 + strlen(s) > buffer_size) {
            current_state = MQTT_DISCONNECTED;
            return false;
        }
        length += 2 + strlen(s);
    }
    mosq = mosquitto_new(id, clean, this);
    if (!mosq) return false;
    mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_connect_callback_set(mosq, cb_connect);
    mosquitto_disconnect_callback_set(mosq, cb_disconnect);
    mosquitto_message_callback_set(mosq, cb_message);
    if (wt) mosquitto_will_set(mosq, wt, (int)strlen(wm), wm, wq, wr);
    if (user) mosquitto_username_pw_set(mosq, user, pass);
    // libmosquitto takes a file, read when it connects; the board takes the PEM text.
    // A memfd is a file that leaves nothing behind.
    int ca_fd = -1;
    if (client && client->ca_pem && *client->ca_pem) {
        char ca_path[64];
        ca_fd = memfd_create("pubsub-ca", 0);
        bool written = ca_fd >= 0 && write(ca_fd, client->ca_pem, strlen(client->ca_pem)) >= 0;
        snprintf(ca_path, sizeof ca_path, "/proc/self/fd/%d", ca_fd);
        if (!written || mosquitto_tls_set(mosq, ca_path, nullptr, nullptr, nullptr, nullptr) != MOSQ_ERR_SUCCESS) {
            if (ca_fd >= 0) close(ca_fd);
            drop();
            current_state = MQTT_CONNECT_FAILED;
            return false;
        }
    }
    connack = -1;
    int rc = mosquitto_connect(mosq, host, port, keepalive);
    if (ca_fd >= 0) close(ca_fd);
    if (rc != MOSQ_ERR_SUCCESS) {
        drop();
        current_state = MQTT_CONNECT_FAILED;
        return false;
    }
    unsigned long start = millis();
    while (connack < 0) {
        if (mosquitto_loop(mosq, 50, 1) != MOSQ_ERR_SUCCESS && connack < 0) {
            drop();
            current_state = MQTT_CONNECTION_LOST;
            return false;
        }
        if (millis() - start > socket_timeout * 1000UL) {
            drop();
            current_state = MQTT_CONNECTION_TIMEOUT;
            return false;
        }
    }
    if (connack != 0) {
        drop();
        current_state = connack;
        return false;
    }
    current_state = MQTT_CONNECTED;
    return true;
}

void PubSubClient::disconnect() {
    if (mosq && current_state == MQTT_CONNECTED) {
        mosquitto_disconnect(mosq);
        mosquitto_loop(mosq, 0, 1);
    }
    drop();
    current_state = MQTT_DISCONNECTED;
}

bool PubSubClient::publish(const char *topic, const char *payload) {
    return publish(topic, (const uint8_t *)payload, payload ? (unsigned)strlen(payload) : 0, false);
}
bool PubSubClient::publish(const char *topic, const char *payload, bool retained) {
    return publish(topic, (const uint8_t *)payload, payload ? (unsigned)strlen(payload) : 0, retained);
}
bool PubSubClient::publish(const char *topic, const uint8_t *payload, unsigned int plength) {
    return publish(topic, payload, plength, false);
}
bool PubSubClient::publish(const char *topic, const uint8_t *payload, unsigned int plength, bool retained) {
    if (!connected()) return false;
    // Header, topic and payload share the one buffer; PubSubClient publishes QoS 0 only.
    if (buffer_size < MQTT_MAX_HEADER_SIZE + 2 + strlen(topic) + plength) return false;
    return mosquitto_publish(mosq, nullptr, topic, (int)plength, payload, 0, retained) == MOSQ_ERR_SUCCESS;
}

bool PubSubClient::subscribe(const char *topic) { return subscribe(topic, 0); }
bool PubSubClient::subscribe(const char *topic, uint8_t qos) {
    if (qos > 1 || !connected()) return false;
    if (buffer_size < 9 + strlen(topic)) return false;
    return mosquitto_subscribe(mosq, nullptr, topic, qos) == MOSQ_ERR_SUCCESS;
}
bool PubSubClient::unsubscribe(const char *topic) {
    if (!connected() || buffer_size < 9 + strlen(topic)) return false;
    return mosquitto_unsubscribe(mosq, nullptr, topic) == MOSQ_ERR_SUCCESS;
}

bool PubSubClient::loop() {
    if (!connected()) return false;
    if (mosquitto_loop(mosq, 0, 1) != MOSQ_ERR_SUCCESS) {
        drop();
        current_state = MQTT_CONNECTION_LOST;
        return false;
    }
    return connected();
}

bool PubSubClient::connected() { return mosq && current_state == MQTT_CONNECTED; }
int PubSubClient::state() { return current_state; }

void PubSubClient::on_connack(int rc) { connack = rc; }
void PubSubClient::on_disconnect() {
    if (current_state == MQTT_CONNECTED) current_state = MQTT_CONNECTION_LOST;
}

void PubSubClient::on_message(const char *topic, const void *payload, int len, int qos) {
    // The whole PUBLISH (fixed header, topic, packet id, payload) must fit the buffer;
    // PubSubClient reads a larger one off the socket and drops it without a callback.
    size_t body = 2 + strlen(topic) + (qos > 0 ? 2 : 0) + (size_t)len;
    size_t header = 1 + (body < 128 ? 1 : body < 16384 ? 2 : 3);
    if (header + body > buffer_size || !callback) return;
    std::string t(topic);
    std::string p((const char *)payload, (size_t)len);
    callback(&t[0], (uint8_t *)&p[0], (unsigned)len);
}

void PubSubClient::drop() {
    if (mosq) {
        mosquitto_destroy(mosq);
        mosq = nullptr;
    }
}
