// The few Arduino core functions the sketch uses, on a Linux host.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include <algorithm>

typedef uint8_t byte;
typedef bool boolean;

unsigned long millis();
void delay(unsigned long ms);
long random(long max);
long random(long min, long max);
void randomSeed(unsigned long seed);

using std::min;
using std::max;
template <typename T> T constrain(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Serial goes to stdout, line-buffered, so a test can read what the board prints.
struct HostSerial {
    void begin(unsigned long) {}
    void print(const char *s) { fputs(s, stdout); fflush(stdout); }
    void print(long v) { printf("%ld", v); fflush(stdout); }
    void println(const char *s = "") { puts(s); fflush(stdout); }
    void println(long v) { printf("%ld\n", v); fflush(stdout); }
    template <typename... A> void printf(const char *fmt, A... a) { ::printf(fmt, a...); fflush(stdout); }
};
extern HostSerial Serial;
