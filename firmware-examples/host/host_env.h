/* Board settings read from the environment, so one host build of an unchanged example
 * can be pointed at any broker and node name (tests/firmware.rs sets SENSOR_*). */
#ifndef HOST_ENV_H
#define HOST_ENV_H
#include <stdlib.h>

static inline const char *host_env(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v ? v : fallback;
}

static inline long host_env_int(const char *name, long fallback) {
    const char *v = getenv(name);
    return v ? strtol(v, NULL, 10) : fallback;
}
#endif
