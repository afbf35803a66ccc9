//! Who may reach the daemon from a browser: the page's origin and the host name it used.
//!
//! A browser attaches the user's network position (and any ambient credential) to
//! requests from every page it shows, so a hostile page could talk to a daemon on
//! localhost or the LAN. Two headers tell such a request apart: `Origin` (which site the
//! page came from: cross-site WebSocket hijacking, cross-site POSTs) and `Host` (which
//! name the browser resolved: DNS rebinding, where an attacker's name is pointed at
//! 127.0.0.1 so their page counts as same-origin). Every listener a browser can reach
//! (the HTTP API, `/ws`, MQTT over WebSocket) asks this one policy, so they cannot
//! drift apart. Clients that are not browsers send no `Origin` and are not affected.

use std::fmt;
use std::net::IpAddr;

/// `[auth] allowed_origins` and `[http] allowed_hosts`, as every web-facing listener
/// applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebPolicy {
    /// Origins whose pages may connect: exact (`https://app.example.com`), a subdomain
    /// wildcard (`https://*.example.com`) or `*`. Empty: the same origin only.
    pub allowed_origins: Vec<String>,
    /// Host names the daemon may be reached by besides loopback names and IP
    /// addresses: exact (`gateway.lan`), a subdomain wildcard (`*.example.com`) or `*`.
    pub allowed_hosts: Vec<String>,
}

/// Why a browser's request was refused; the text names the setting that would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` is a name the daemon is not configured to be reached by.
    Host(String),
    /// The `Origin` is not allowed.
    Origin(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Host(host) => write!(
                f,
                "this server is not configured to be reached as `{host}`: add the name to \
                 `http.allowed_hosts`, or use an IP address or localhost"
            ),
            Refusal::Origin(origin) => write!(
                f,
                "pages from `{origin}` may not use this server: add the origin to \
                 `auth.allowed_origins`"
            ),
        }
    }
}

impl WebPolicy {
    /// Both checks, host first (a rebound name makes any origin look like the same
    /// origin). `host` is the `Host` header (or HTTP/2's `:authority`).
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), Refusal> {
        self.check_host(host)?;
        if self.origin_allowed(origin, host) {
            Ok(())
        } else {
            Err(Refusal::Origin(origin.unwrap_or_default().to_owned()))
        }
    }

    /// Whether `host` is a name the daemon may be reached by. Loopback names and IP
    /// literals always are: DNS rebinding needs a name the attacker controls, and a
    /// browser sends the name from the URL, never the address it resolved to. No `Host`
    /// at all is not a browser.
    pub fn check_host(&self, host: Option<&str>) -> Result<(), Refusal> {
        let Some(host) = host else { return Ok(()) };
        let name = host_name(host);
        let allowed = name == "localhost"
            || name.ends_with(".localhost")
            || name.parse::<IpAddr>().is_ok()
            || self
                .allowed_hosts
                .iter()
                .any(|pattern| matches_host(&host_name(pattern), &name));
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Host(host.to_owned()))
        }
    }

    /// Whether a page from `origin` may connect. No `Origin` means no browser, and so
    /// no cross-site page to defend against. The same origin (the `Origin` names the
    /// host the request was sent to, which the host check vouches for) always may: a
    /// page the daemon could have served, or a client that fills `Origin` in from its
    /// own URL as paho-mqtt does; the list adds others.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = origin.trim().to_ascii_lowercase();
        if self.same_origin(&origin, host) {
            return true;
        }
        self.allowed_origins.iter().any(|pattern| {
            let pattern = pattern.trim().to_ascii_lowercase();
            if pattern == "*" || pattern == origin {
                return true;
            }
            match pattern.split_once("://*.") {
                Some((scheme, domain)) => origin
                    .strip_prefix(scheme)
                    .and_then(|rest| rest.strip_prefix("://"))
                    .and_then(|host| host.strip_suffix(domain))
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                None => false,
            }
        })
    }

    /// Whether `origin` is the very site the request was sent to (a page the daemon
    /// could have served itself): no CORS is needed for it.
    pub fn same_origin(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h.trim()))
    }
}

/// The name part of a `Host` value, lower case, without port or trailing dot; an IPv6
/// literal without its brackets.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn matches_host(pattern: &str, name: &str) -> bool {
    if pattern == "*" || pattern == name {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(domain) => name
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], hosts: &[&str]) -> WebPolicy {
        WebPolicy {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn same_origin_by_default_and_no_origin_is_not_a_browser() {
        let p = policy(&[], &[]);
        assert!(p.origin_allowed(None, Some("gw:8700")));
        assert!(p.origin_allowed(Some("http://gw:8700"), Some("gw:8700")));
        assert!(p.origin_allowed(Some("https://GW:8700"), Some("gw:8700")));
        assert!(!p.origin_allowed(Some("http://evil.example"), Some("gw:8700")));
        assert!(!p.origin_allowed(Some("null"), Some("gw:8700")));
        assert!(!p.origin_allowed(Some("http://gw:8700"), None));
    }

    #[test]
    fn listed_origins_and_subdomain_wildcards() {
        let p = policy(&["https://app.example.com", "https://*.example.org"], &[]);
        let ok = |o| p.origin_allowed(Some(o), Some("gw"));
        assert!(ok("https://app.example.com"));
        assert!(!ok("http://app.example.com"));
        assert!(ok("https://a.b.example.org"));
        assert!(!ok("https://example.org"));
        assert!(!ok("https://evilexample.org"));
        assert!(!ok("https://example.org.evil.com"));
        assert!(policy(&["*"], &[]).origin_allowed(Some("https://anything"), Some("gw")));
        // A list does not take the same origin away (paho-mqtt sends its own URL).
        assert!(p.origin_allowed(Some("https://gw:8083"), Some("gw:8083")));
    }

    #[test]
    fn loopback_names_and_addresses_by_default_others_when_listed() {
        let p = policy(&[], &[]);
        for host in [
            "localhost",
            "localhost:8700",
            "LOCALHOST.",
            "app.localhost:80",
            "127.0.0.1:8700",
            "192.168.1.20",
            "[::1]:8700",
            "[fe80::1]",
        ] {
            assert_eq!(p.check_host(Some(host)), Ok(()), "{host}");
        }
        assert!(p.check_host(None).is_ok());
        let refused = p
            .check_host(Some("rebind.attacker.example:8700"))
            .unwrap_err();
        assert!(
            refused.to_string().contains("http.allowed_hosts"),
            "{refused}"
        );
        assert!(p.check_host(Some("localhost.attacker.example")).is_err());

        let p = policy(&[], &["gateway.lan", "*.example.com"]);
        assert!(p.check_host(Some("Gateway.LAN:8700")).is_ok());
        assert!(p.check_host(Some("gw.example.com")).is_ok());
        assert!(p.check_host(Some("example.com")).is_err());
        assert!(p.check_host(Some("evilexample.com")).is_err());
        assert!(policy(&[], &["*"]).check_host(Some("any.name")).is_ok());
    }

    #[test]
    fn the_host_is_checked_before_the_origin() {
        let p = policy(&[], &[]);
        let rebound = Some("rebind.attacker.example:8700");
        assert_eq!(
            p.check(Some("http://rebind.attacker.example:8700"), rebound),
            Err(Refusal::Host("rebind.attacker.example:8700".into()))
        );
    }
}
