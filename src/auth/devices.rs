//! Authentication for MQTT devices: the password file, client JWTs as passwords,
//! anonymous access, and the topic permissions each device gets. Implements the
//! broker's [`Gate`].
//!
//! A device may present a client JWT as its MQTT password, so one token serves a user's
//! browser and device alike. When JWT keys are configured and the password is shaped
//! like a JWT, it is verified as one: the username must be its `sub`, and the token's
//! `publish`/`subscribe` claims are the device's permissions (the ACL does not apply).
//! Any other password goes to the password file as before.

use std::path::Path;
use std::sync::Arc;

use switchboard_bridge::{Credentials, Denied, Gate, Permissions, Refusal};

use super::acl::Acl;
use super::grants::Grants;
use super::jwt::{self, JwtVerifier};
use super::passwd::{PasswdError, PasswordFile};
use crate::config::MqttConfig;

pub struct DeviceGate {
    passwords: Option<PasswordFile>,
    allow_anonymous: bool,
    acl: Acl,
    /// Verifies JWT passwords; None (or no keys) when tokens are not accepted.
    jwt: Option<Arc<JwtVerifier>>,
    /// `mqtt.use_identity_as_username`: a verified client certificate's common name is
    /// the username, and no password is needed.
    use_identity_as_username: bool,
}

impl DeviceGate {
    /// Reads the password file now, so a missing or broken file stops startup with the
    /// file's name and line rather than refusing every device later.
    pub fn from_config(
        config: &MqttConfig,
        jwt: Option<Arc<JwtVerifier>>,
    ) -> Result<Self, PasswdError> {
        let passwords = if config.password_file.as_os_str().is_empty() {
            None
        } else {
            Some(PasswordFile::load(Path::new(&config.password_file))?)
        };
        Ok(DeviceGate {
            passwords,
            allow_anonymous: config.allow_anonymous,
            acl: Acl::new(config.acl.clone()),
            jwt: jwt.filter(|j| !j.is_empty()),
            use_identity_as_username: config.use_identity_as_username,
        })
    }

    /// One line for the startup log saying who may connect, so an operator sees an open
    /// broker at a glance.
    pub fn describe(&self) -> String {
        let users = match &self.passwords {
            Some(p) => format!("{} users in the password file", p.len()),
            None => "no password file".into(),
        };
        let anonymous = if self.allow_anonymous {
            "anonymous devices allowed"
        } else {
            "anonymous devices refused"
        };
        let acl = if self.acl.is_open() {
            "no topic permissions configured: every device may publish and subscribe anywhere"
        } else {
            "topic permissions enforced"
        };
        let tokens = if self.jwt.is_some() {
            "; client JWTs accepted as passwords"
        } else {
            ""
        };
        format!("{anonymous}; {users}; {acl}{tokens}")
    }

    /// A JWT password: the token must verify and name the device's username as `sub`.
    fn authenticate_token(
        jwt: &JwtVerifier,
        c: &Credentials,
        token: &str,
    ) -> Result<Arc<dyn Permissions>, Refusal> {
        let principal = jwt.verify(token).map_err(|e| {
            tracing::debug!(
                client_id = %c.client_id, remote = %c.remote, error = %e,
                "MQTT token refused"
            );
            Refusal::BadCredentials
        })?;
        if c.username.is_none() || principal.user != c.username {
            tracing::debug!(
                client_id = %c.client_id, remote = %c.remote,
                "MQTT token refused: the username is not its subject"
            );
            return Err(Refusal::BadCredentials);
        }
        Ok(Arc::new(principal.grants))
    }
}

impl Gate for DeviceGate {
    fn authenticate(&self, c: &Credentials) -> Result<Arc<dyn Permissions>, Refusal> {
        // Certificate identity, as Mosquitto's use_identity_as_username: the TLS layer
        // already verified the certificate against tls.client_ca_file.
        if let (true, Some(der)) = (self.use_identity_as_username, &c.peer_certificate) {
            let Some(name) = crate::tls::common_name(der) else {
                tracing::info!(client_id = %c.client_id, remote = %c.remote, "MQTT certificate has no common name to use as username");
                return Err(Refusal::NotAuthorized);
            };
            let grants = self.acl.for_device(&c.client_id, Some(&name));
            return Ok(Arc::new(CertifiedDevice { name, grants }));
        }
        if let (Some(verifier), Some(password)) = (&self.jwt, c.password.as_deref()) {
            if jwt::looks_like_jwt(password) {
                return Self::authenticate_token(verifier, c, password);
            }
        }
        match (&c.username, &self.passwords) {
            (None, _) if self.allow_anonymous => {}
            (None, _) => return Err(Refusal::NotAuthorized),
            (Some(user), Some(passwords)) => {
                let password = c.password.as_deref().unwrap_or("");
                if !passwords.verify(user, password) {
                    return Err(Refusal::BadCredentials);
                }
            }
            // A username nobody can check: accepted only where anonymous devices are,
            // and then it is only a label (as in Mosquitto with allow_anonymous).
            (Some(_), None) if self.allow_anonymous => {}
            (Some(_), None) => return Err(Refusal::BadCredentials),
        }
        Ok(Arc::new(
            self.acl.for_device(&c.client_id, c.username.as_deref()),
        ))
    }
}

/// A device named by its certificate: the ACL's grants for that name, and the name
/// itself so the device is known by it rather than by its CONNECT username.
struct CertifiedDevice {
    name: String,
    grants: Grants,
}

impl Permissions for CertifiedDevice {
    fn check_publish(&self, topic: &str) -> Result<(), Denied> {
        Permissions::check_publish(&self.grants, topic)
    }

    fn check_subscribe(&self, filter: &str) -> Result<(), Denied> {
        Permissions::check_subscribe(&self.grants, filter)
    }

    fn username(&self) -> Option<&str> {
        Some(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::auth::jwt::{mint, MintKey};
    use crate::auth::principal::unix_now;
    use crate::config::{AuthConfig, JwtAlgorithm, JwtKeyConfig};

    const SECRET: &[u8] = b"device-test-secret-0123456789abcdef";

    /// A gate that refuses anonymous devices, has no password file, and accepts JWTs
    /// signed with SECRET.
    fn gate(dir: &tempfile::TempDir) -> DeviceGate {
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, SECRET).expect("write secret");
        let auth = AuthConfig {
            jwt: vec![JwtKeyConfig {
                kid: String::new(),
                algorithm: JwtAlgorithm::HS256,
                secret_file,
                public_key_file: Default::default(),
            }],
            leeway: Duration::from_secs(5),
            ..AuthConfig::default()
        };
        let verifier = Arc::new(JwtVerifier::from_config(&auth).expect("keys"));
        let mqtt = MqttConfig {
            allow_anonymous: false,
            ..MqttConfig::default()
        };
        DeviceGate::from_config(&mqtt, Some(verifier)).expect("gate")
    }

    fn token(sub: &str, exp: u64) -> String {
        let key = MintKey::from_secret("", JwtAlgorithm::HS256, SECRET).expect("key");
        let claims = json!({
            "sub": sub,
            "exp": exp,
            "publish": ["sensors/{sub}/#"],
            "subscribe": ["commands/{sub}/#"],
        });
        mint(&key, &claims).expect("mint")
    }

    fn connect(
        gate: &DeviceGate,
        username: Option<&str>,
        password: &str,
    ) -> Result<Arc<dyn Permissions>, Refusal> {
        gate.authenticate(&Credentials {
            client_id: "dev-1".into(),
            username: username.map(str::to_owned),
            password: Some(password.to_owned()),
            remote: SocketAddr::from(([127, 0, 0, 1], 50000)),
            peer_certificate: None,
        })
    }

    #[test]
    fn a_token_password_gives_the_token_grants() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = gate(&dir);
        let permissions =
            connect(&gate, Some("th-7"), &token("th-7", unix_now() + 600)).expect("token accepted");
        assert!(permissions.check_publish("sensors/th-7/temp").is_ok());
        assert!(permissions.check_publish("sensors/th-8/temp").is_err());
        assert!(permissions.check_subscribe("commands/th-7/#").is_ok());
        assert!(permissions.check_subscribe("commands/#").is_err());
        assert!(gate.describe().contains("JWT"));
    }

    #[test]
    fn expired_tokens_and_other_users_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = gate(&dir);
        let expired = token("th-7", unix_now() - 60);
        assert_eq!(
            connect(&gate, Some("th-7"), &expired).err(),
            Some(Refusal::BadCredentials)
        );
        let good = token("th-7", unix_now() + 600);
        assert_eq!(
            connect(&gate, Some("th-8"), &good).err(),
            Some(Refusal::BadCredentials)
        );
        assert_eq!(
            connect(&gate, None, &good).err(),
            Some(Refusal::BadCredentials)
        );
        // Not shaped like a JWT: the password file path, and there is none.
        assert_eq!(
            connect(&gate, Some("th-7"), "plain.pass.word").err(),
            Some(Refusal::BadCredentials)
        );
    }
}
