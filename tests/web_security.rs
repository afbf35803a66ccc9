//! What a web page on another site can and cannot do to a daemon on the user's machine,
//! and the small promises of the wire protocol a third-party client relies on.

mod common;

use common::{Daemon, Raw};
use serde_json::json;

#[tokio::test]
async fn a_null_id_is_echoed_and_a_mistyped_field_is_named() {
    let d = Daemon::start("");
    let mut c = Raw::connect(&d.ws_url()).await;

    c.send_text(r#"{"op":"ping","id":null}"#).await;
    let reply = c.recv().await;
    assert_eq!(reply["op"], "ok", "{reply}");
    assert!(
        reply
            .as_object()
            .is_some_and(|o| o.get("id") == Some(&json!(null))),
        "the null id is not echoed: {reply}"
    );

    c.send_text(r#"{"op":"sub","id":7,"topic":42}"#).await;
    let reply = c.recv().await;
    assert_eq!(reply["id"], 7, "{reply}");
    assert_eq!(reply["code"], "bad_request", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`topic`"),
        "the field is not named: {message}"
    );

    // The HTTP API names it the same way.
    let (status, body) = common::http::post(
        &common::http::api(&d, "/publish"),
        None,
        r#"{"topic":"a/b","retain":"yes"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`retain`"),
        "the field is not named: {message}"
    );
}
