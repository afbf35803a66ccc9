//! Authentication for MQTT devices: the password file, anonymous access, and the
//! topic permissions each device gets. Implements the broker's [`Gate`].

use std::path::Path;
use std::sync::Arc;

use switchboard_bridge::{Credentials, Gate, Permissions, Refusal};

use super::acl::Acl;
use super::passwd::{PasswdError, PasswordFile};
use crate::config::MqttConfig;

pub struct DeviceGate {
    passwords: Option<PasswordFile>,
    allow_anonymous: bool,
    acl: Acl,
}

impl DeviceGate {
    /// Reads the password file now, so a missing or broken file stops startup with the
    /// file's name and line rather than refusing every device later.
    pub fn from_config(config: &MqttConfig) -> Result<Self, PasswdError> {
        let passwords = if config.password_file.as_os_str().is_empty() {
            None
        } else {
            Some(PasswordFile::load(Path::new(&config.password_file))?)
        };
        Ok(DeviceGate {
            passwords,
            allow_anonymous: config.allow_anonymous,
            acl: Acl::new(config.acl.clone()),
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
        format!("{anonymous}; {users}; {acl}")
    }
}

impl Gate for DeviceGate {
    fn authenticate(&self, c: &Credentials) -> Result<Arc<dyn Permissions>, Refusal> {
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
