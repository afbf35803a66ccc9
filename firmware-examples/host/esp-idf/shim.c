/* The host side of the ESP-IDF shim: esp-mqtt over libmosquitto, driven by one thread
 * that plays esp-mqtt's task, plus the FreeRTOS and esp_* calls the example makes. */
#define _GNU_SOURCE
#include <mosquitto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "esp_random.h"
#include "esp_timer.h"
#include "freertos/task.h"
#include "mqtt_client.h"

static struct timespec boot;

int64_t esp_timer_get_time(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - boot.tv_sec) * 1000000 + (now.tv_nsec - boot.tv_nsec) / 1000;
}

uint32_t esp_random(void) {
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, 0) != sizeof r) r = (uint32_t)random();
    return r;
}

void vTaskDelay(TickType_t ticks) { usleep((useconds_t)ticks * 1000 * portTICK_PERIOD_MS); }

void app_main(void);

int main(void) {
    clock_gettime(CLOCK_MONOTONIC, &boot);
    mosquitto_lib_init();
    app_main();
    return 0;
}

/* ---- esp-mqtt ------------------------------------------------------------------ */

struct esp_mqtt_client {
    struct mosquitto *mosq;
    char host[256];
    int port;
    int keepalive;
    int buffer_size;
    int reconnect_timeout_ms;
    bool auto_reconnect;
    esp_event_handler_t handler;
    void *handler_args;
    pthread_t task;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool want_connect;
    volatile bool connected;
};

static void post(esp_mqtt_client_handle_t c, esp_mqtt_event_t *ev) {
    ev->client = c;
    if (c->handler) c->handler(c->handler_args, "MQTT_EVENTS", ev->event_id, ev);
}

static void post_simple(esp_mqtt_client_handle_t c, esp_mqtt_event_id_t id, int msg_id) {
    esp_mqtt_error_codes_t err = {0};
    esp_mqtt_event_t ev = {.event_id = id, .msg_id = msg_id, .error_handle = &err};
    post(c, &ev);
}

static void post_error(esp_mqtt_client_handle_t c, esp_mqtt_error_type_t type, int rc) {
    esp_mqtt_error_codes_t err = {.error_type = type, .connect_return_code = rc};
    esp_mqtt_event_t ev = {.event_id = MQTT_EVENT_ERROR, .error_handle = &err};
    post(c, &ev);
}

static void on_connect(struct mosquitto *m, void *obj, int rc) {
    (void)m;
    esp_mqtt_client_handle_t c = obj;
    if (rc != 0) {
        post_error(c, MQTT_ERROR_TYPE_CONNECTION_REFUSED, rc);
        return;
    }
    c->connected = true;
    post_simple(c, MQTT_EVENT_CONNECTED, 0);
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int count, const int *granted) {
    (void)m;
    esp_mqtt_client_handle_t c = obj;
    esp_mqtt_error_codes_t err = {0};
    char data[16];
    int n = count < (int)sizeof data ? count : (int)sizeof data;
    for (int i = 0; i < n; i++) {
        data[i] = (char)granted[i];
        if (granted[i] == 0x80) err.error_type = MQTT_ERROR_TYPE_SUBSCRIBE_FAILED;
    }
    esp_mqtt_event_t ev = {.event_id = MQTT_EVENT_SUBSCRIBED, .msg_id = mid, .data = data, .data_len = n,
                           .error_handle = &err};
    post(c, &ev);
}

static void on_publish(struct mosquitto *m, void *obj, int mid) {
    (void)m;
    post_simple(obj, MQTT_EVENT_PUBLISHED, mid);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg) {
    (void)m;
    esp_mqtt_client_handle_t c = obj;
    esp_mqtt_error_codes_t err = {0};
    int topic_len = (int)strlen(msg->topic);
    /* The first piece shares the buffer with the fixed header and the topic. */
    int room = c->buffer_size - topic_len - 7;
    if (room < 1) room = 1;
    int offset = 0;
    do {
        int len = msg->payloadlen - offset < room ? msg->payloadlen - offset : room;
        esp_mqtt_event_t ev = {
            .event_id = MQTT_EVENT_DATA,
            .data = (char *)msg->payload + offset,
            .data_len = len,
            .total_data_len = msg->payloadlen,
            .current_data_offset = offset,
            .topic = offset == 0 ? msg->topic : NULL,
            .topic_len = offset == 0 ? topic_len : 0,
            .msg_id = msg->mid,
            .retain = msg->retain,
            .qos = msg->qos,
            .error_handle = &err,
        };
        post(c, &ev);
        offset += len;
        room = c->buffer_size;
    } while (offset < msg->payloadlen);
}

/* esp-mqtt's task: connect when asked, run the session, report its end. */
static void *mqtt_task(void *arg) {
    esp_mqtt_client_handle_t c = arg;
    for (;;) {
        pthread_mutex_lock(&c->lock);
        while (!c->want_connect) pthread_cond_wait(&c->wake, &c->lock);
        c->want_connect = false;
        pthread_mutex_unlock(&c->lock);

        post_simple(c, MQTT_EVENT_BEFORE_CONNECT, 0);
        if (mosquitto_connect(c->mosq, c->host, c->port, c->keepalive) != MOSQ_ERR_SUCCESS) {
            post_error(c, MQTT_ERROR_TYPE_TCP_TRANSPORT, 0);
        } else {
            while (mosquitto_loop(c->mosq, 50, 1) == MOSQ_ERR_SUCCESS) {
            }
            mosquitto_disconnect(c->mosq);
        }
        c->connected = false;
        post_simple(c, MQTT_EVENT_DISCONNECTED, 0);
        if (c->auto_reconnect) {
            usleep((useconds_t)c->reconnect_timeout_ms * 1000);
            esp_mqtt_client_reconnect(c);
        }
    }
    return NULL;
}

/* libmosquitto reads the CA from a file when it connects; the board has the PEM in
 * memory. A memfd, open for the client's life, is a file that leaves nothing behind. */
static bool pem_to_file(const char *pem, char *path, size_t size) {
    int fd = memfd_create("esp-mqtt-ca", 0);
    if (fd < 0) return false;
    if (write(fd, pem, strlen(pem)) < 0) {
        close(fd);
        return false;
    }
    snprintf(path, size, "/proc/self/fd/%d", fd);
    return true;
}

esp_mqtt_client_handle_t esp_mqtt_client_init(const esp_mqtt_client_config_t *cfg) {
    esp_mqtt_client_handle_t c = calloc(1, sizeof *c);
    if (!c) return NULL;
    bool tls = strncmp(cfg->broker.address.uri, "mqtts://", 8) == 0;
    const char *rest = strstr(cfg->broker.address.uri, "://");
    rest = rest ? rest + 3 : cfg->broker.address.uri;
    snprintf(c->host, sizeof c->host, "%s", rest);
    char *colon = strchr(c->host, ':');
    c->port = tls ? 8883 : 1883;
    if (colon) {
        *colon = '\0';
        c->port = atoi(colon + 1);
    }
    c->keepalive = cfg->session.keepalive ? cfg->session.keepalive : 120;
    c->buffer_size = cfg->buffer.size ? cfg->buffer.size : 1024;
    c->reconnect_timeout_ms = cfg->network.reconnect_timeout_ms ? cfg->network.reconnect_timeout_ms : 10000;
    c->auto_reconnect = !cfg->network.disable_auto_reconnect;
    c->mosq = mosquitto_new(cfg->credentials.client_id, !cfg->session.disable_clean_session, c);
    if (!c->mosq) {
        free(c);
        return NULL;
    }
    mosquitto_threaded_set(c->mosq, true);
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_connect_callback_set(c->mosq, on_connect);
    mosquitto_subscribe_callback_set(c->mosq, on_subscribe);
    mosquitto_publish_callback_set(c->mosq, on_publish);
    mosquitto_message_callback_set(c->mosq, on_message);
    if (cfg->session.last_will.topic) {
        const char *msg = cfg->session.last_will.msg ? cfg->session.last_will.msg : "";
        int len = cfg->session.last_will.msg_len ? cfg->session.last_will.msg_len : (int)strlen(msg);
        mosquitto_will_set(c->mosq, cfg->session.last_will.topic, len, msg, cfg->session.last_will.qos,
                           cfg->session.last_will.retain);
    }
    if (cfg->credentials.username)
        mosquitto_username_pw_set(c->mosq, cfg->credentials.username, cfg->credentials.authentication.password);
    if (tls && cfg->broker.verification.certificate) {
        char ca[64];
        if (!pem_to_file(cfg->broker.verification.certificate, ca, sizeof ca) ||
            mosquitto_tls_set(c->mosq, ca, NULL, NULL, NULL, NULL) != MOSQ_ERR_SUCCESS)
            return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->wake, NULL);
    return c;
}

esp_err_t esp_mqtt_client_register_event(esp_mqtt_client_handle_t c, esp_mqtt_event_id_t event,
                                         esp_event_handler_t handler, void *args) {
    (void)event; /* the example registers for every event */
    c->handler = handler;
    c->handler_args = args;
    return ESP_OK;
}

esp_err_t esp_mqtt_client_start(esp_mqtt_client_handle_t c) {
    if (pthread_create(&c->task, NULL, mqtt_task, c) != 0) return ESP_FAIL;
    return esp_mqtt_client_reconnect(c);
}

esp_err_t esp_mqtt_client_reconnect(esp_mqtt_client_handle_t c) {
    pthread_mutex_lock(&c->lock);
    c->want_connect = true;
    pthread_cond_signal(&c->wake);
    pthread_mutex_unlock(&c->lock);
    return ESP_OK;
}

esp_err_t esp_mqtt_client_stop(esp_mqtt_client_handle_t c) {
    mosquitto_disconnect(c->mosq);
    return ESP_OK;
}

int esp_mqtt_client_subscribe(esp_mqtt_client_handle_t c, const char *topic, int qos) {
    int mid = -1;
    if (!c->connected || mosquitto_subscribe(c->mosq, &mid, topic, qos) != MOSQ_ERR_SUCCESS) return -1;
    return mid;
}

int esp_mqtt_client_publish(esp_mqtt_client_handle_t c, const char *topic, const char *data, int len, int qos,
                            int retain) {
    int mid = 0;
    if (!c->connected) return -1;
    if (len == 0 && data) len = (int)strlen(data);
    if (mosquitto_publish(c->mosq, &mid, topic, len, data, qos, retain) != MOSQ_ERR_SUCCESS) return -1;
    return qos == 0 ? 0 : mid;
}
