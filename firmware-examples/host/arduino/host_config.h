// Forced in front of the sketch on the host (g++ -include): the sketch's config.h keeps
// its own values only for what is not defined here.
#pragma once
#include "../host_env.h"
#define WIFI_SSID host_env("WIFI_SSID", "host")
#define WIFI_PASSWORD host_env("WIFI_PASSWORD", "")
#define SENSOR_HOST host_env("SENSOR_HOST", "127.0.0.1")
#define SENSOR_PORT ((uint16_t)host_env_int("SENSOR_PORT", 1883))
#define SENSOR_NODE host_env("SENSOR_NODE", "ard-1")
#define SENSOR_PREFIX host_env("SENSOR_PREFIX", "sensors")
#define SENSOR_USER host_env("SENSOR_USER", SENSOR_NODE)
#define SENSOR_PASSWORD host_env("SENSOR_PASSWORD", "")
#define SENSOR_CA_PEM host_env("SENSOR_CA_PEM", "")
#define SENSOR_INTERVAL_MS ((unsigned long)host_env_int("SENSOR_INTERVAL_MS", 5000))
#define SENSOR_BACKOFF_MIN_MS ((unsigned long)host_env_int("SENSOR_BACKOFF_MIN_MS", 500))
#define SENSOR_BACKOFF_MAX_MS ((unsigned long)host_env_int("SENSOR_BACKOFF_MAX_MS", 30000))
#define SENSOR_REFUSED_RETRY_MS ((unsigned long)host_env_int("SENSOR_REFUSED_RETRY_MS", 300000))
#define SENSOR_BUFFER_SIZE ((uint16_t)host_env_int("SENSOR_BUFFER_SIZE", 256))
