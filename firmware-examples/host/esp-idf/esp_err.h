#pragma once
#include <stdio.h>
#include <stdlib.h>
typedef int esp_err_t;
#define ESP_OK 0
#define ESP_FAIL -1
#define ESP_ERROR_CHECK(x)                                                  \
    do {                                                                    \
        esp_err_t rc_ = (x);                                                \
        if (rc_ != ESP_OK) {                                                \
            fprintf(stderr, "ESP_ERROR_CHECK failed: %d at %s:%d\n", rc_, __FILE__, __LINE__); \
            abort();                                                        \
        }                                                                   \
    } while (0)
