//! The browser-origin check on the WebSocket upgrade, against cross-site WebSocket
//! hijacking: a page on another site must not open a connection that rides on the
//! user's credentials.

use axum::http::{header, HeaderMap};

/// Whether a handshake's `Origin` is allowed. No `Origin` means no browser, and so no
/// cross-site page to defend against. An empty list allows only the same origin (the
/// `Origin` names the host the request was sent to); `*` allows any; otherwise an
/// entry is an exact origin (`https://app.example.com`) or a subdomain wildcard
/// (`https://*.example.com`).
pub fn allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    if allowed.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        return matches!((origin_host, host), (Some(o), Some(h)) if o == h);
    }
    allowed.iter().any(|pattern| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn same_origin_by_default_and_no_origin_is_not_a_browser() {
        assert!(allowed(&[], &headers(None, "gw:8700")));
        assert!(allowed(&[], &headers(Some("http://gw:8700"), "gw:8700")));
        assert!(allowed(&[], &headers(Some("https://GW:8700"), "gw:8700")));
        assert!(!allowed(
            &[],
            &headers(Some("http://evil.example"), "gw:8700")
        ));
        assert!(!allowed(&[], &headers(Some("null"), "gw:8700")));
    }

    #[test]
    fn listed_origins_and_subdomain_wildcards() {
        let l = list(&["https://app.example.com", "https://*.example.org"]);
        let h = |o| headers(Some(o), "gw");
        assert!(allowed(&l, &h("https://app.example.com")));
        assert!(!allowed(&l, &h("http://app.example.com")));
        assert!(allowed(&l, &h("https://a.b.example.org")));
        assert!(!allowed(&l, &h("https://example.org")));
        assert!(!allowed(&l, &h("https://evilexample.org")));
        assert!(!allowed(&l, &h("https://example.org.evil.com")));
        assert!(allowed(&list(&["*"]), &h("https://anything")));
    }
}
