/* ESP_LOGx print to stdout, one line each, so a test can read what the board logs. */
#pragma once
#include <stdio.h>
#define ESP_LOG_LINE(level, tag, fmt, ...) \
    do { printf(level " (%s) " fmt "\n", tag, ##__VA_ARGS__); fflush(stdout); } while (0)
#define ESP_LOGE(tag, fmt, ...) ESP_LOG_LINE("E", tag, fmt, ##__VA_ARGS__)
#define ESP_LOGW(tag, fmt, ...) ESP_LOG_LINE("W", tag, fmt, ##__VA_ARGS__)
#define ESP_LOGI(tag, fmt, ...) ESP_LOG_LINE("I", tag, fmt, ##__VA_ARGS__)
#define ESP_LOGD(tag, fmt, ...) do { } while (0)
