//! Authentication for MQTT devices: the password file, client JWTs as passwords,
//! anonymous access, and the topic permissions each device gets. Implements the
//! broker's [`Gate`].
//!
//! A device may present a client JWT as its MQTT password, so one token serves a user's
//! browser and device alike. When JWT keys are configured and the password is shaped
//! like a JWT, it is verified as one: the username must be its `sub`, and the token's
//! `publish`/`subscribe` claims are the device's permissions (the ACL does not apply).
//! Any other password goes to the password file as before.

use std::sync::{Arc, PoisonError, RwLock};

use switchboard_bridge::{Credentials, Denied, Gate, Permissions, Refusal};

use super::acl::Acl;
use super::config::DeviceAuthConfig;
use super::jwt::{self, JwtVerifier};
use super::passwd::{PasswdError, PasswordFile};
use switchboard_core::grants::Grants;

/// The device gate. Its rules can be replaced while devices are connected (SIGHUP):
/// new devices meet the new rules, and connected ones are checked against them on
/// their next operation and by the broker's recheck.
pub struct DeviceGate {
    rules: Arc<RwLock<Arc<DeviceRules>>>,
}

/// Everything that decides who may connect and what a device may do: built whole
/// from the configuration, so a reload swaps all of it at once or nothing.
pub struct DeviceRules {
    passwords: Option<PasswordFile>,
    allow_anonymous: bool,
    acl: Acl,
    /// Verifies JWT passwords; None (or no keys) when tokens are not accepted.
    jwt: Option<Arc<JwtVerifier>>,
    /// `mqtt.use_identity_as_username`: a verified client certificate's common name is
    /// the username, and no password is needed.
    use_identity_as_username: bool,
}

impl DeviceRules {
    /// Reads the password file now, so a missing or broken file stops startup (or a
    /// reload) with the file's name and line rather than refusing every device later.
    pub fn from_config(
        config: DeviceAuthConfig<'_>,
        jwt: Option<Arc<JwtVerifier>>,
    ) -> Result<Self, PasswdError> {
        let passwords = if config.password_file.as_os_str().is_empty() {
            None
        } else {
            Some(PasswordFile::load(config.password_file)?)
        };
        Ok(DeviceRules {
            passwords,
            allow_anonymous: config.allow_anonymous,
            acl: Acl::new(config.acl.to_vec()),
            jwt: jwt.filter(|j| !j.is_empty()),
            use_identity_as_username: config.use_identity_as_username,
        })
    }

    /// One line for the log saying who may connect, so an operator sees an open broker
    /// at a glance.
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
    ) -> Result<Grants, Refusal> {
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
        Ok(principal.grants)
    }

    /// How a device proves who it is under these rules.
    fn admit(&self, c: &Credentials) -> Result<Basis, Refusal> {
        // Certificate identity, as Mosquitto's use_identity_as_username: the TLS layer
        // already verified the certificate against tls.client_ca_file.
        if let (true, Some(der)) = (self.use_identity_as_username, &c.peer_certificate) {
            let Some(name) = crate::tls::common_name(der) else {
                tracing::info!(client_id = %c.client_id, remote = %c.remote, "MQTT certificate has no common name to use as username");
                return Err(Refusal::NotAuthorized);
            };
            return Ok(Basis::Certificate(name));
        }
        if let (Some(verifier), Some(password)) = (&self.jwt, c.password.as_deref()) {
            if jwt::looks_like_jwt(password) {
                return Self::authenticate_token(verifier, c, password).map(Basis::Token);
            }
        }
        match (&c.username, &self.passwords) {
            (None, _) if self.allow_anonymous => Ok(Basis::Anonymous),
            (None, _) => Err(Refusal::NotAuthorized),
            (Some(user), Some(passwords)) => {
                let password = c.password.as_deref().unwrap_or("");
                if passwords.verify(user, password) {
                    Ok(Basis::Password(user.clone()))
                } else {
                    Err(Refusal::BadCredentials)
                }
            }
            // A username nobody can check: accepted only where anonymous devices are,
            // and then it is only a label (as in Mosquitto with allow_anonymous).
            (Some(_), None) if self.allow_anonymous => Ok(Basis::Label),
            (Some(_), None) => Err(Refusal::BadCredentials),
        }
    }

    /// Whether a device admitted on `basis` under `then` would still be admitted now,
    /// without its password (which is not kept): its entry in the password file must
    /// be the same one.
    fn still_admits(&self, then: &DeviceRules, basis: &Basis) -> bool {
        match basis {
            // A certificate is checked by TLS; a token until it expires.
            Basis::Certificate(_) | Basis::Token(_) => true,
            Basis::Anonymous => self.allow_anonymous,
            Basis::Label => self.allow_anonymous && self.passwords.is_none(),
            Basis::Password(user) => match (&self.passwords, &then.passwords) {
                (Some(now), Some(before)) => now.same_entry(before, user),
                _ => false,
            },
        }
    }
}

impl DeviceGate {
    pub fn new(rules: DeviceRules) -> Self {
        DeviceGate {
            rules: Arc::new(RwLock::new(Arc::new(rules))),
        }
    }

    pub fn from_config(
        config: DeviceAuthConfig<'_>,
        jwt: Option<Arc<JwtVerifier>>,
    ) -> Result<Self, PasswdError> {
        DeviceRules::from_config(config, jwt).map(Self::new)
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<DeviceRules> {
        current(&self.rules)
    }

    /// Puts new rules in force for every device, connected or not. The broker's
    /// recheck then closes devices the new rules no longer admit.
    pub fn replace(&self, rules: DeviceRules) {
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
    }

    pub fn describe(&self) -> String {
        self.rules().describe()
    }
}

fn current(rules: &RwLock<Arc<DeviceRules>>) -> Arc<DeviceRules> {
    rules.read().unwrap_or_else(PoisonError::into_inner).clone()
}

impl Gate for DeviceGate {
    fn authenticate(&self, c: &Credentials) -> Result<Arc<dyn Permissions>, Refusal> {
        let rules = self.rules();
        let basis = rules.admit(c)?;
        let grants = basis.grants(&rules, &c.client_id, c.username.as_deref());
        Ok(Arc::new(LiveDevice {
            rules: self.rules.clone(),
            client_id: c.client_id.clone(),
            username: c.username.clone(),
            cached: RwLock::new((rules.clone(), grants)),
            admitted_under: rules,
            basis,
        }))
    }
}

/// How a connected device proved who it is.
enum Basis {
    /// A certificate's common name, which is its username from then on.
    Certificate(String),
    /// A client JWT: its claims are the device's permissions (the ACL does not apply).
    Token(Grants),
    /// An entry of the password file.
    Password(String),
    /// No username, where anonymous devices are allowed.
    Anonymous,
    /// A username nobody checks (there is no password file, anonymous devices are
    /// allowed).
    Label,
}

impl Basis {
    fn grants(&self, rules: &DeviceRules, client_id: &str, username: Option<&str>) -> Grants {
        match self {
            Basis::Token(grants) => grants.clone(),
            Basis::Certificate(name) => rules.acl.for_device(client_id, Some(name)),
            Basis::Password(_) | Basis::Anonymous | Basis::Label => {
                rules.acl.for_device(client_id, username)
            }
        }
    }
}

/// A connected device's permissions: worked out from the rules in force, again
/// whenever they are replaced, so a reload reaches devices already connected.
struct LiveDevice {
    rules: Arc<RwLock<Arc<DeviceRules>>>,
    client_id: String,
    username: Option<String>,
    basis: Basis,
    /// The rules it was admitted under, to tell whether its password entry changed.
    admitted_under: Arc<DeviceRules>,
    /// The grants and the rules they were worked out from.
    cached: RwLock<(Arc<DeviceRules>, Grants)>,
}

impl LiveDevice {
    fn with_grants<T>(&self, f: impl FnOnce(&Grants) -> T) -> T {
        let now = current(&self.rules);
        {
            let cached = self.cached.read().unwrap_or_else(PoisonError::into_inner);
            if Arc::ptr_eq(&cached.0, &now) {
                return f(&cached.1);
            }
        }
        let grants = self
            .basis
            .grants(&now, &self.client_id, self.username.as_deref());
        let result = f(&grants);
        *self.cached.write().unwrap_or_else(PoisonError::into_inner) = (now, grants);
        result
    }
}

impl Permissions for LiveDevice {
    fn check_publish(&self, topic: &str) -> Result<(), Denied> {
        self.with_grants(|g| Permissions::check_publish(g, topic))
    }

    fn check_subscribe(&self, filter: &str) -> Result<(), Denied> {
        self.with_grants(|g| Permissions::check_subscribe(g, filter))
    }

    fn still_valid(&self) -> bool {
        current(&self.rules).still_admits(&self.admitted_under, &self.basis)
    }

    fn username(&self) -> Option<&str> {
        match &self.basis {
            Basis::Certificate(name) => Some(name),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::auth::config::{AuthConfig, JwtAlgorithm, JwtKeyConfig};
    use crate::auth::jwt::{mint, MintKey};
    use crate::auth::principal::unix_now;

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
        let devices = DeviceAuthConfig {
            allow_anonymous: false,
            password_file: std::path::Path::new(""),
            acl: &[],
            use_identity_as_username: false,
        };
        DeviceGate::from_config(devices, Some(verifier)).expect("gate")
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

    /// Rules from a password file with `users` and `acl` TOML (`[[acl]]` tables).
    fn rules(dir: &tempfile::TempDir, users: &[(&str, &str)], acl: &str) -> DeviceRules {
        let path = dir.path().join("passwd");
        let mut file = PasswordFile::load(&path).unwrap_or_else(|_| PasswordFile::new());
        for (user, password) in users {
            file.set_with_iterations(user, password, 1_000)
                .expect("set");
        }
        file.save(&path).expect("save");
        #[derive(serde::Deserialize)]
        struct Acl {
            #[serde(default)]
            acl: Vec<crate::auth::config::AclRule>,
        }
        let acl: Acl = toml::from_str(acl).expect("acl");
        let devices = DeviceAuthConfig {
            allow_anonymous: false,
            password_file: &path,
            acl: &acl.acl,
            use_identity_as_username: false,
        };
        DeviceRules::from_config(devices, None).expect("rules")
    }

    #[test]
    fn replaced_rules_reach_connected_devices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = "[[acl]]\nuser = \"*\"\npublish = [\"#\"]\nsubscribe = [\"#\"]\n";
        let gate = DeviceGate::new(rules(&dir, &[("ann", "a-1"), ("bob", "b-1")], open));
        let ann = connect(&gate, Some("ann"), "a-1").expect("ann admitted");
        let bob = connect(&gate, Some("bob"), "b-1").expect("bob admitted");
        assert!(ann.check_subscribe("x/#").is_ok());

        // Ann's password changes and the ACL narrows; bob's entry stays as it was.
        let narrow = "[[acl]]\nuser = \"*\"\nsubscribe = [\"y/#\"]\n";
        gate.replace(rules(&dir, &[("ann", "a-2")], narrow));
        assert!(!ann.still_valid(), "her entry changed");
        assert!(bob.still_valid(), "his did not");
        assert_eq!(bob.check_subscribe("x/#"), Err(Denied::NotAuthorized));
        assert!(bob.check_subscribe("y/1").is_ok());
        assert!(bob.check_publish("y/1").is_err());
        assert_eq!(
            connect(&gate, Some("ann"), "a-1").err(),
            Some(Refusal::BadCredentials)
        );
        assert!(connect(&gate, Some("ann"), "a-2").is_ok());
    }
}
