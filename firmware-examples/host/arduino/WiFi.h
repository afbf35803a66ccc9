// The host is always on the network: WiFi.begin does nothing and the status is connected.
#pragma once
#include "Arduino.h"

#define WL_CONNECTED 3
#define WIFI_STA 1

struct HostWiFi {
    void mode(int) {}
    void begin(const char *, const char *) {}
    int status() { return WL_CONNECTED; }
};
extern HostWiFi WiFi;

// A network client as PubSubClient takes it; the shim's PubSubClient owns the socket.
class WiFiClient {
  public:
    virtual ~WiFiClient() {}
    // PEM of the CA that must have signed the broker's certificate; empty: no TLS.
    const char *ca_pem = nullptr;
};
