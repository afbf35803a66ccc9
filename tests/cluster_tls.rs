//! The cluster bus over TLS (`rediss://`, docs/cluster.md): a real `redis-server`
//! listening for TLS only, asking for client certificates and refusing its default
//! user, with certificates made here; two real daemons talking through it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::certs::Ca;
use common::redis::Redis;
use common::{Daemon, Raw};
use serde_json::json;

struct Files(tempfile::TempDir);

impl Files {
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn check_config(dir: &Files, config: &str) -> (bool, String) {
    let path = dir.write("check.toml", config);
    let out = Command::new(common::BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_a_client_certificate_and_an_acl_user() {
    let ca = Ca::new("redis test CA");
    let stranger = Ca::new("someone else's CA");
    let server = ca.leaf("redis", &["localhost"], false);
    let client = ca.leaf("box", &["box"], true);
    let dir = Files(tempfile::tempdir().expect("tempdir"));
    let ca_file = dir.write("ca.pem", &ca.pem());
    let stranger_file = dir.write("stranger.pem", &stranger.pem());
    let server_cert = dir.write("server.pem", &server.cert_pem);
    let server_key = dir.write("server.key", &server.key_pem);
    let cert = dir.write("box.pem", &client.cert_pem);
    let key = dir.write("box.key", &client.key_pem);
    let password = dir.write("password", "s3cret\n");
    let wrong = dir.write("wrong", "guess\n");
    let Some(redis) = Redis::start_tls(&[
        "--tls-cert-file",
        s(&server_cert),
        "--tls-key-file",
        s(&server_key),
        "--tls-ca-cert-file",
        s(&ca_file),
        "--tls-auth-clients",
        "yes",
        "--user",
        "box",
        "on",
        ">s3cret",
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]) else {
        return;
    };
    let port = redis.port;
    let good_url = format!("rediss://localhost:{port}");
    let section = |url: &str, ca: &Path, cert: Option<&Path>, pw: &Path| {
        let mut c = format!(
            "[cluster]\nenabled = true\nredis = [\"{url}\"]\nusername = \"box\"\n\
             password_file = \"{}\"\ntls_ca_file = \"{}\"\npartitions = 4\n\
             connect_timeout = \"1s\"\ncommand_timeout = \"1s\"\nprobe_interval = \"300ms\"\n",
            s(pw),
            s(ca)
        );
        if let Some(cert) = cert {
            c.push_str(&format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                s(cert),
                s(&key)
            ));
        }
        c
    };
    let good = section(&good_url, &ca_file, Some(&cert), &password);

    // check-config: the good one passes; files that hold the wrong thing are named.
    let (ok, err) = check_config(&dir, &good);
    assert!(ok, "{err}");
    let (ok, err) = check_config(&dir, &section(&good_url, &password, None, &password));
    assert!(!ok && err.contains("cluster.tls_ca_file"), "{err}");
    let (ok, err) = check_config(
        &dir,
        &good.replace(&format!("tls_key_file = \"{}\"\n", s(&key)), ""),
    );
    assert!(!ok && err.contains("go together"), "{err}");
    let (ok, err) = check_config(
        &dir,
        &good.replace("rediss://", "redis://").replace(
            &format!("\"{good_url}\""),
            &format!("\"redis://localhost:{port}\""),
        ),
    );
    assert!(!ok && err.contains("use rediss://"), "{err}");
    let (ok, err) = check_config(
        &dir,
        &good.replace(&good_url, &format!("{good_url}/#insecure")),
    );
    assert!(!ok && err.contains("cannot be turned off"), "{err}");

    // Startup refuses each mistake with what to fix.
    common::assert_startup_errors(&[
        (
            &section(&good_url, &stranger_file, Some(&cert), &password),
            "does not trust",
        ),
        (
            &section(
                &format!("rediss://127.0.0.1:{port}"),
                &ca_file,
                Some(&cert),
                &password,
            ),
            "does not name that host",
        ),
        (
            &section(&good_url, &ca_file, None, &password),
            "asks for a TLS client certificate",
        ),
        (
            &section(&good_url, &ca_file, Some(&cert), &wrong),
            "refused the credentials",
        ),
    ]);

    // Two boxes through it: one order, numbered without a hole.
    let a = Daemon::start(&good);
    let b = Daemon::start(&good);
    let mut sub = Raw::subscribed(&b.ws_url(), "tls/t").await;
    let mut publisher = Raw::connect(&a.ws_url()).await;
    for n in 1..=20u64 {
        let r = publisher
            .request(json!({"op":"pub","topic":"tls/t","data":{"n":n}}))
            .await;
        assert_eq!(r["op"], "ok", "{r}");
        assert_eq!(r["seq"], n, "{r}");
    }
    for n in 1..=20u64 {
        let m = sub.next_msg().await;
        assert_eq!(
            (m["seq"].as_u64(), m["data"]["n"].as_u64()),
            (Some(n), Some(n)),
            "{m}"
        );
    }
}
