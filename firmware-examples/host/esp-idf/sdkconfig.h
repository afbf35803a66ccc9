/* menuconfig's values, read from the environment on the host (tests/firmware.rs sets them). */
#pragma once
#include "../host_env.h"
#define CONFIG_SENSOR_BROKER_URI host_env("SENSOR_URI", "mqtt://127.0.0.1:1883")
#define CONFIG_SENSOR_NODE host_env("SENSOR_NODE", "idf-1")
#define CONFIG_SENSOR_PREFIX host_env("SENSOR_PREFIX", "sensors")
#define CONFIG_SENSOR_USER host_env("SENSOR_USER", CONFIG_SENSOR_NODE)
#define CONFIG_SENSOR_PASSWORD host_env("SENSOR_PASSWORD", "")
#define CONFIG_SENSOR_INTERVAL_MS ((int)host_env_int("SENSOR_INTERVAL_MS", 5000))
#define CONFIG_SENSOR_BACKOFF_MIN_MS ((int)host_env_int("SENSOR_BACKOFF_MIN_MS", 500))
#define CONFIG_SENSOR_BACKOFF_MAX_MS ((int)host_env_int("SENSOR_BACKOFF_MAX_MS", 30000))
#define CONFIG_SENSOR_REFUSED_RETRY_MS ((int)host_env_int("SENSOR_REFUSED_RETRY_MS", 300000))
