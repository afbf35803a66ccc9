//! The JavaScript SDK as the daemon serves it (`/sdk/…`, src/http/sdk.rs), and the check
//! that the committed builds in clients/js/dist match clients/js/src (the daemon embeds
//! them, and building it must not need Node). The SDK's own behaviour is tested by
//! `node --test` in clients/js/test, run by scripts/test.sh.

mod common;

use std::path::Path;

use common::Daemon;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

const DIST: [&str; 4] = [
    "switchboard.js",
    "switchboard.mjs",
    "switchboard-e2e.js",
    "switchboard-e2e.mjs",
];

fn js_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js"))
}

/// What clients/js/scripts/build.mjs puts in each build's banner: sha256 over
/// `name NUL content NUL` of every src/*.js, by name, first 16 hex digits.
fn source_hash() -> String {
    let mut names: Vec<String> = std::fs::read_dir(js_dir().join("src"))
        .expect("clients/js/src")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".js"))
        .collect();
    names.sort();
    let mut hash = Sha256::new();
    for name in names {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(std::fs::read(js_dir().join("src").join(&name)).expect("read source"));
        hash.update([0]);
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn committed_builds_match_the_sources() {
    let want = format!("sources:{} ", source_hash());
    for file in DIST {
        let text = std::fs::read_to_string(js_dir().join("dist").join(file)).expect("read dist");
        let banner = text.lines().next().unwrap_or("");
        assert!(
            banner.contains(&want),
            "clients/js/dist/{file} is stale (banner `{banner}`, sources hash {want}): \
             run `npm ci && npm run build` in clients/js and commit dist/"
        );
    }
}

async fn get(d: &Daemon, path: &str, headers: &[(&'static str, &str)]) -> reqwest::Response {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, HeaderValue::from_str(v).expect("header value"));
    }
    reqwest::Client::new()
        .get(format!("http://{}{path}", d.http))
        .headers(map)
        .send()
        .await
        .expect("GET")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn serves_the_builds_with_type_validators_and_pinned_paths() {
    let d = Daemon::start("[auth]\nallowed_origins = [\"https://app.example.com\"]\n");
    for file in DIST {
        let on_disk = std::fs::read_to_string(js_dir().join("dist").join(file)).expect("dist");
        let r = get(&d, &format!("/sdk/{file}"), &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{file}");
        assert_eq!(header(&r, "content-type"), "text/javascript; charset=utf-8");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff");
        assert_eq!(header(&r, "cache-control"), "no-cache");
        let etag = header(&r, "etag").to_owned();
        assert!(etag.len() == 18 && etag.starts_with('"'), "{etag}");
        assert_eq!(r.text().await.expect("body"), on_disk, "{file} as built");

        // Revalidation costs no body.
        let r = get(&d, &format!("/sdk/{file}"), &[("if-none-match", &etag)]).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.text().await.expect("body"), "");

        // The same bytes under their tag, cacheable for good.
        let (name, ext) = file.split_at(file.find('.').unwrap_or(file.len()));
        let pinned = format!("/sdk/{name}.{}{ext}", etag.trim_matches('"'));
        let r = get(&d, &pinned, &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{pinned}");
        assert!(header(&r, "cache-control").contains("immutable"));
        assert_eq!(r.text().await.expect("body"), on_disk);
    }
    // A tag that is not the build's, or another file: 404, not an old SDK.
    for path in [
        "/sdk/switchboard.0123456789abcdef.js",
        "/sdk/other.js",
        "/sdk/switchboard.jsx",
    ] {
        assert_eq!(
            get(&d, path, &[]).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_browser_policy_applies_to_the_sdk() {
    let d = Daemon::start("[auth]\nallowed_origins = [\"https://app.example.com\"]\n");
    // A module script from an allowed site gets CORS; one from any other site does not.
    let r = get(
        &d,
        "/sdk/switchboard.mjs",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example.com"
    );
    let r = get(
        &d,
        "/sdk/switchboard.mjs",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(header(&r, "access-control-allow-origin"), "");
    // A name the daemon is not reached by (DNS rebinding) is refused before the route.
    let r = get(&d, "/sdk/switchboard.js", &[("host", "evil.example")]).await;
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
}
