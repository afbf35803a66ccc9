// TLS as the ESP32 core offers it: a client given the broker's CA certificate.
#pragma once
#include "WiFi.h"

class WiFiClientSecure : public WiFiClient {
  public:
    void setCACert(const char *pem) { ca_pem = pem; }
};
