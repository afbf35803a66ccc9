/* A sensor node for switchboard in C on ESP-IDF 5.x with esp-mqtt, following
 * firmware-examples/README.md: readings, a retained online/offline status with a last will,
 * commands answered, reconnection with backoff. esp-mqtt's own reconnect retries at a fixed
 * interval, so it is turned off and app_main reconnects with jittered exponential backoff. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "esp_random.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "mqtt_client.h"
#include "nvs_flash.h"
#include "protocol_examples_common.h"
#include "sdkconfig.h"

static const char *TAG = "sensor";
#define MAX_COMMAND 64 /* bytes: the convention's limit */
#define KEEPALIVE_S 30

static char topic_env[96], topic_status[96], topic_cmd[96], topic_reply[96];
static esp_mqtt_client_handle_t client;
static volatile bool online;
static volatile bool connecting;
static volatile bool refused;
static volatile int64_t next_attempt_ms;
static volatile uint32_t interval_ms;
static volatile uint32_t backoff_ms;
static int subscribe_id = -1;
static uint32_t seq;

static int64_t now_ms(void) { return esp_timer_get_time() / 1000; }

static float read_temperature(void) {
    /* A real board reads its sensor here (an I2C SHT3x, the chip's own temperature_sensor
     * driver); a random walk around 21 °C keeps the example self-contained. */
    static float t = 21.0f;
    t += ((int)(esp_random() % 41) - 20) / 100.0f;
    return t;
}

static void reply(const char *text) { esp_mqtt_client_publish(client, topic_reply, text, 0, 0, 0); }

static void publish_reading(void) {
    char json[96];
    long t = (long)(read_temperature() * 100);
    seq++;
    snprintf(json, sizeof json, "{\"n\":%" PRIu32 ",\"t\":%s%ld.%02ld,\"up\":%" PRId64 ",\"src\":\"sim\"}", seq,
             t < 0 ? "-" : "", labs(t) / 100, labs(t) % 100, now_ms());
    if (esp_mqtt_client_publish(client, topic_env, json, 0, 0, 0) < 0) ESP_LOGW(TAG, "reading not sent");
}

static void on_command(const char *data, int len) {
    char cmd[MAX_COMMAND + 1], out[32];
    unsigned long ms;
    memcpy(cmd, data, len);
    cmd[len] = '\0';
    ESP_LOGI(TAG, "command: %s", cmd);
    if (strcmp(cmd, "ping") == 0) {
        reply("pong");
    } else if (sscanf(cmd, "interval %lu", &ms) == 1) {
        interval_ms = ms < 100 ? 100 : ms > 3600000 ? 3600000 : ms;
        snprintf(out, sizeof out, "interval %" PRIu32, interval_ms);
        reply(out);
    } else if (strcmp(cmd, "read") == 0) {
        publish_reading();
        reply("ok");
    } else {
        reply("error unknown command");
    }
}

static void schedule_reconnect(uint32_t delay_ms) {
    connecting = false;
    next_attempt_ms = now_ms() + delay_ms;
}

static void on_event(void *arg, esp_event_base_t base, int32_t id, void *data) {
    (void)arg;
    (void)base;
    esp_mqtt_event_handle_t ev = data;
    const uint32_t backoff_max = CONFIG_SENSOR_BACKOFF_MAX_MS;
    switch ((esp_mqtt_event_id_t)id) {
    case MQTT_EVENT_CONNECTED:
        /* Commands first; `online` once the broker has granted the subscription. */
        subscribe_id = esp_mqtt_client_subscribe(client, topic_cmd, 1);
        break;
    case MQTT_EVENT_SUBSCRIBED:
        if (ev->msg_id == subscribe_id) {
            esp_mqtt_client_publish(client, topic_status, "online", 0, 1, 1);
            online = true;
            backoff_ms = CONFIG_SENSOR_BACKOFF_MIN_MS;
            ESP_LOGI(TAG, "online");
        }
        break;
    case MQTT_EVENT_DATA:
        /* A message larger than esp-mqtt's buffer arrives in pieces; a command never should. */
        if (ev->total_data_len > MAX_COMMAND) {
            if (ev->current_data_offset == 0) reply("error too long");
        } else {
            on_command(ev->data, ev->data_len);
        }
        break;
    case MQTT_EVENT_ERROR:
        if (ev->error_handle->error_type == MQTT_ERROR_TYPE_CONNECTION_REFUSED) {
            /* Bad credentials or not authorised: retrying soon cannot help. */
            ESP_LOGW(TAG, "refused: %d; waiting %d ms", ev->error_handle->connect_return_code,
                     CONFIG_SENSOR_REFUSED_RETRY_MS);
            schedule_reconnect(CONFIG_SENSOR_REFUSED_RETRY_MS);
            refused = true; /* the DISCONNECTED that follows keeps this wait */
        }
        break;
    case MQTT_EVENT_DISCONNECTED:
        online = false;
        if (refused) {
            refused = false;
            break;
        }
        ESP_LOGI(TAG, "disconnected");
        /* Full jitter: a fleet that lost its broker does not come back in step. */
        schedule_reconnect(esp_random() % (backoff_ms + 1));
        backoff_ms = backoff_ms * 2 > backoff_max ? backoff_max : backoff_ms * 2;
        break;
    default:
        break;
    }
}

#ifdef CONFIG_SENSOR_TLS
extern const char ca_pem_start[] asm("_binary_ca_pem_start");
#endif

void app_main(void) {
    ESP_ERROR_CHECK(nvs_flash_init());
    ESP_ERROR_CHECK(esp_netif_init());
    ESP_ERROR_CHECK(esp_event_loop_create_default());
    ESP_ERROR_CHECK(example_connect()); /* Wi-Fi or Ethernet, from menuconfig */

    const char *prefix = CONFIG_SENSOR_PREFIX, *node = CONFIG_SENSOR_NODE;
    snprintf(topic_env, sizeof topic_env, "%s/%s/env", prefix, node);
    snprintf(topic_status, sizeof topic_status, "%s/%s/status", prefix, node);
    snprintf(topic_cmd, sizeof topic_cmd, "%s/%s/cmd", prefix, node);
    snprintf(topic_reply, sizeof topic_reply, "%s/%s/reply", prefix, node);
    const char *password = CONFIG_SENSOR_PASSWORD;
    interval_ms = CONFIG_SENSOR_INTERVAL_MS;
    backoff_ms = CONFIG_SENSOR_BACKOFF_MIN_MS;

    esp_mqtt_client_config_t cfg = {
        .broker.address.uri = CONFIG_SENSOR_BROKER_URI,
#ifdef CONFIG_SENSOR_TLS
        .broker.verification.certificate = ca_pem_start,
#endif
        .credentials.client_id = node,
        .credentials.username = password[0] ? CONFIG_SENSOR_USER : NULL,
        .credentials.authentication.password = password[0] ? password : NULL,
        .session.keepalive = KEEPALIVE_S,
        .session.last_will.topic = topic_status,
        .session.last_will.msg = "offline",
        .session.last_will.qos = 1,
        .session.last_will.retain = 1,
        .network.disable_auto_reconnect = true,
    };
    client = esp_mqtt_client_init(&cfg);
    esp_mqtt_client_register_event(client, MQTT_EVENT_ANY, on_event, NULL);
    ESP_LOGI(TAG, "node %s -> %s", node, CONFIG_SENSOR_BROKER_URI);
    connecting = true;
    esp_mqtt_client_start(client);

    int64_t next_reading = now_ms();
    for (;;) {
        int64_t now = now_ms();
        if (online && now >= next_reading) {
            publish_reading();
            next_reading = now + interval_ms;
        } else if (!online && !connecting && now >= next_attempt_ms) {
            connecting = true;
            esp_mqtt_client_reconnect(client);
        }
        vTaskDelay(pdMS_TO_TICKS(20));
    }
}
