//! TLS for every listener: the certificate and key from `[tls]`, read into rustls server
//! configurations, and swapped on reload without a restart.
//!
//! Owns reading PEM files and building `rustls::ServerConfig`s; it accepts no connection
//! itself (the HTTP listener and the MQTT broker do). The ring provider is installed
//! explicitly rather than through a process default: aws-lc needs cmake and a C toolchain
//! for ARM cross builds, and an explicit provider cannot be changed behind our back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// ALPN the HTTP listener offers: HTTP/2 for clients that want it, HTTP/1.1 for the rest
/// (WebSocket upgrades are HTTP/1.1).
const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The certificate every TLS listener presents, reloaded on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates that sign device client certificates; empty for none.
    pub client_ca_file: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
        }
    }
}

/// Which listeners serve TLS. `[tls]` only names the files; whether a listener wants
/// them is in `[http]` and `[mqtt]`, so the composition root decides this
/// (`Config::tls_listeners`) and hands it over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsListeners {
    /// The settings that ask for TLS, as the file names them, for the error that says
    /// the certificate is missing.
    pub asked_by: Vec<&'static str>,
    /// The HTTP listener serves HTTPS and WSS.
    pub http: bool,
    /// An MQTT listener (TLS or secure WebSocket) serves TLS.
    pub mqtt: bool,
    /// Devices must present a certificate (`mqtt.require_certificate`).
    pub require_certificate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} needs a certificate: set tls.cert_file and tls.key_file")]
    NotConfigured { what: String },
    #[error(
        "mqtt.require_certificate needs tls.client_ca_file: the CA that signs device certificates"
    )]
    RequireWithoutCa,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("the key in {key} does not match the certificate in {cert}: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: rustls::Error,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The `[tls]` files and what is built from them, one configuration per kind of listener.
/// Listeners take the current configuration for each new connection, so [`reload`]
/// (SIGHUP) applies to the next client while connected ones keep their session.
///
/// [`reload`]: TlsReloader::reload
pub struct TlsReloader {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// Empty for none.
    client_ca_file: PathBuf,
    require_certificate: bool,
    http: Option<Shared>,
    mqtt: Option<Shared>,
}

/// One listener kind's current configuration, shared with the listeners themselves.
type Shared = Arc<RwLock<Arc<ServerConfig>>>;

/// A certificate loaded on reload and not yet served.
pub struct TlsUpdate(Loaded);

/// What one load of the files produced.
struct Loaded {
    http: Option<Arc<ServerConfig>>,
    mqtt: Option<Arc<ServerConfig>>,
}

impl TlsReloader {
    /// Loads the files for every listener that asks for TLS; `None` when none does.
    /// Every problem is a startup error: a daemon told to serve TLS never serves
    /// without it.
    pub fn from_config(
        tls: &TlsConfig,
        listeners: &TlsListeners,
    ) -> Result<Option<Arc<Self>>, TlsError> {
        if listeners.require_certificate && tls.client_ca_file.as_os_str().is_empty() {
            return Err(TlsError::RequireWithoutCa);
        }
        if listeners.asked_by.is_empty() {
            return Ok(None);
        }
        if tls.cert_file.as_os_str().is_empty() || tls.key_file.as_os_str().is_empty() {
            return Err(TlsError::NotConfigured {
                what: listeners.asked_by.join(" and "),
            });
        }
        let mut reloader = TlsReloader {
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            client_ca_file: tls.client_ca_file.clone(),
            require_certificate: listeners.require_certificate,
            http: None,
            mqtt: None,
        };
        let loaded = reloader.load(listeners.http, listeners.mqtt)?;
        reloader.http = loaded.http.map(|c| Arc::new(RwLock::new(c)));
        reloader.mqtt = loaded.mqtt.map(|c| Arc::new(RwLock::new(c)));
        Ok(Some(Arc::new(reloader)))
    }

    /// Re-reads the files and builds the new configurations without putting them in
    /// force; on failure the old certificate stays in use and the reason is returned.
    pub fn prepare(&self) -> Result<TlsUpdate, TlsError> {
        self.load(self.http.is_some(), self.mqtt.is_some())
            .map(TlsUpdate)
    }

    /// Serves the certificate of [`TlsReloader::prepare`] to the next client.
    pub fn install(&self, update: TlsUpdate) {
        let loaded = update.0;
        for (slot, new) in [(&self.http, loaded.http), (&self.mqtt, loaded.mqtt)] {
            if let (Some(slot), Some(new)) = (slot, new) {
                *slot.write().unwrap_or_else(|e| e.into_inner()) = new;
            }
        }
    }

    /// The HTTP listener's configuration now, if `http.tls` is on.
    pub fn http(&self) -> Option<Arc<ServerConfig>> {
        self.http.as_deref().map(current)
    }

    /// What the MQTT TLS listeners ask for each connection, if any is on.
    pub fn mqtt_source(&self) -> Option<switchboard_bridge::TlsSource> {
        let slot = self.mqtt.clone()?;
        Some(switchboard_bridge::TlsSource::new(move || current(&slot)))
    }

    /// One line for the log: which certificate is served, and until when.
    pub fn describe(&self) -> String {
        let summary = std::fs::read(&self.cert_file)
            .ok()
            .and_then(|pem| CertificateDer::pem_slice_iter(&pem).next()?.ok())
            .and_then(|der| certificate_summary(&der));
        let client = if self.client_ca_file.as_os_str().is_empty() {
            String::new()
        } else if self.require_certificate {
            format!(
                "; MQTT devices must present a certificate signed by {}",
                self.client_ca_file.display()
            )
        } else {
            format!(
                "; MQTT device certificates are checked against {}",
                self.client_ca_file.display()
            )
        };
        format!(
            "certificate {} ({}){client}",
            self.cert_file.display(),
            summary.unwrap_or_else(|| "unreadable".into())
        )
    }

    fn load(&self, http: bool, mqtt: bool) -> Result<Loaded, TlsError> {
        let certs = load_certs(&self.cert_file)?;
        let key = load_key(&self.key_file)?;
        let mismatch = |reason| TlsError::KeyMismatch {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            reason,
        };
        let http = if http {
            let mut config = builder()?
                .with_no_client_auth()
                .with_single_cert(certs.clone(), key.clone_key())
                .map_err(mismatch)?;
            config.alpn_protocols = HTTP_ALPN.iter().map(|p| p.to_vec()).collect();
            Some(Arc::new(config))
        } else {
            None
        };
        let mqtt = if mqtt {
            let builder = builder()?;
            let builder = if self.client_ca_file.as_os_str().is_empty() {
                builder.with_no_client_auth()
            } else {
                builder.with_client_cert_verifier(self.client_verifier()?)
            };
            let config = builder.with_single_cert(certs, key).map_err(mismatch)?;
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Loaded { http, mqtt })
    }

    /// Device certificates must chain to `client_ca_file`; presenting one is optional
    /// unless `mqtt.require_certificate` is on.
    fn client_verifier(
        &self,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        let path = &self.client_ca_file;
        let mut roots = RootCertStore::empty();
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| TlsError::File {
                path: path.clone(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()));
        let verifier = if self.require_certificate {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        verifier.build().map_err(|e| TlsError::File {
            path: path.clone(),
            problem: format!("cannot verify client certificates with it: {e}"),
        })
    }
}

fn current(slot: &RwLock<Arc<ServerConfig>>) -> Arc<ServerConfig> {
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    Ok(ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            problem: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_owned(),
            problem: "no certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::File {
        path: path.to_owned(),
        problem: match e {
            pem::Error::NoItemsFound => {
                "no private key in it (expected PKCS#8, PKCS#1 or SEC1 PEM)".into()
            }
            e => format!("not a valid private key: {e}"),
        },
    })
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// `CN=…, serial …, valid until …` for logs.
fn certificate_summary(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("no CN");
    Some(format!(
        "CN={cn}, serial {}, valid until {}",
        cert.raw_serial_as_string(),
        cert.validity().not_after
    ))
}

/// A client configuration trusting the CAs in `ca_file` (only those: a bridge names the
/// authority of its broker), presenting `cert_file` and `key_file` when both are set.
pub fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(load_certs(ca_file)?);
    if added == 0 {
        return Err(TlsError::File {
            path: ca_file.to_owned(),
            problem: "no usable CA certificate in it".into(),
        });
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|reason| TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
                reason,
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
