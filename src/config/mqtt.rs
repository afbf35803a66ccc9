//! `[mqtt]`: the embedded broker's listeners and limits, the devices it admits, or the
//! external broker that takes its place.
//!
//! The section is one table in the file, but no module below the root reads it whole:
//! the broker crate listens with [`MqttConfig::broker`], `crate::auth` decides who a
//! device is and what it may do with [`MqttConfig::devices`], and `crate::uplinks` is
//! handed the external broker. So the composition root owns it, and the MQTT seam
//! (`crate::mqtt`) stays free of the auth and bridge types the section names.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::config::{AclRule, DeviceAuthConfig};
use crate::settings::{nz, positive_duration, Listen};
use crate::uplinks::config::LinkConfig;

/// The embedded broker's listeners and limits, who its devices are, or the external
/// broker that replaces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT 3.1.1 and 5 over TCP; empty turns it off.
    pub listen: Listen,
    /// MQTT over WebSocket; empty turns it off.
    pub ws_listen: Listen,
    /// Devices connected at once.
    pub max_connections: NonZeroUsize,
    /// Largest MQTT packet a device may send, in bytes.
    pub max_packet_size: NonZeroUsize,
    /// Time a new connection has to send CONNECT.
    #[serde(with = "positive_duration")]
    pub connect_timeout: Duration,
    /// No longer used (MQTT subscribers are served by the Hub); accepted so older
    /// configuration files still load.
    pub egress_queue: NonZeroUsize,
    /// Retained `$devices/…` offline notices kept; past it the oldest are forgotten.
    pub offline_notices: NonZeroUsize,
    /// Unreleased QoS 2 publishes per device (MQTT 5 Receive Maximum).
    pub receive_maximum: NonZeroU16,
    /// Topic aliases an MQTT 5 device may set (Topic Alias Maximum); 0 for none.
    pub topic_alias_maximum: u16,
    /// Topic filters one device may hold (as `[ws] max_subscriptions` for WebSocket).
    pub max_subscriptions: NonZeroUsize,
    /// Devices without a username may connect.
    pub allow_anonymous: bool,
    /// Password file (`switchboard passwd`, Mosquitto-compatible); empty for none.
    pub password_file: PathBuf,
    /// Topic permissions; none means every device may publish and subscribe anywhere.
    pub acl: Vec<AclRule>,
    /// MQTT over TLS (certificate in `[tls]`); empty turns it off.
    pub tls_listen: Listen,
    /// MQTT over secure WebSocket; empty turns it off.
    pub wss_listen: Listen,
    /// On the TLS listeners, devices must present a certificate signed by
    /// `tls.client_ca_file`.
    pub require_certificate: bool,
    /// A device's verified certificate names it: its common name becomes the username
    /// and no password is needed.
    pub use_identity_as_username: bool,
    /// `embedded` runs our own broker; `external` attaches the Hub to the broker in
    /// `[mqtt.external]` instead (docs/bridges.md).
    pub mode: MqttMode,
    /// The broker of external mode.
    #[serde(deserialize_with = "crate::uplinks::config::external")]
    pub external: Option<LinkConfig>,
}

/// Which MQTT broker devices talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    #[default]
    Embedded,
    External,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: Listen(Some(SocketAddr::from(([127, 0, 0, 1], 1883)))),
            ws_listen: Listen(Some(SocketAddr::from(([127, 0, 0, 1], 8083)))),
            max_connections: nz(10_000),
            max_packet_size: nz(1024 * 1024),
            connect_timeout: Duration::from_secs(10),
            egress_queue: nz(65_536),
            offline_notices: nz(crate::mqtt::MAX_OFFLINE_NOTICES),
            receive_maximum: NonZeroU16::new(32).unwrap_or(NonZeroU16::MIN),
            max_subscriptions: nz(1000),
            topic_alias_maximum: 16,
            allow_anonymous: true,
            password_file: PathBuf::new(),
            acl: Vec::new(),
            tls_listen: Listen(None),
            wss_listen: Listen(None),
            require_certificate: false,
            use_identity_as_username: false,
            mode: MqttMode::Embedded,
            external: None,
        }
    }
}

impl MqttConfig {
    /// What the broker crate needs to listen; TLS is filled in by the root from
    /// `crate::tls`, which owns the certificate.
    pub fn broker(&self) -> switchboard_bridge::BrokerConfig {
        switchboard_bridge::BrokerConfig {
            listen: self.listen.0,
            ws_listen: self.ws_listen.0,
            tls_listen: self.tls_listen.0,
            wss_listen: self.wss_listen.0,
            // Comes from the certificate files, loaded by `crate::tls` at startup.
            tls: None,
            max_connections: self.max_connections.get(),
            max_packet_size: self.max_packet_size.get(),
            connect_timeout: self.connect_timeout,
            receive_maximum: self.receive_maximum.get(),
            max_subscriptions: self.max_subscriptions.get(),
            topic_alias_maximum: self.topic_alias_maximum,
            max_session_expiry: switchboard_bridge::BrokerConfig::default().max_session_expiry,
            // Spans `[auth]` and `[http]`: set by the root from `Config::web_policy`.
            web: switchboard_bridge::WebPolicy::default(),
        }
    }

    /// The settings device authentication reads, so `crate::auth` need not know the
    /// listeners around them.
    pub fn devices(&self) -> DeviceAuthConfig<'_> {
        DeviceAuthConfig {
            allow_anonymous: self.allow_anonymous,
            password_file: &self.password_file,
            acl: &self.acl,
            use_identity_as_username: self.use_identity_as_username,
        }
    }
}
