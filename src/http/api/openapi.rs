//! The OpenAPI 3 document served at `/api/v1/openapi.json`.
//!
//! Written beside the code it describes: each API module has a fragment in `openapi/`
//! (its paths and schemas), merged here over `base.json` (shared error responses,
//! security). The document is checked against the running implementation by the
//! schemathesis test (`tests/openapi.rs`), and every documented operation is checked to
//! exist in the router, so the two cannot drift apart unnoticed.

use std::sync::OnceLock;

use serde_json::{Map, Value};

const BASE: &str = include_str!("openapi/base.json");

/// Every module's fragment, by file name (for error messages).
const FRAGMENTS: &[(&str, &str)] = &[
    ("messages.json", include_str!("openapi/messages.json")),
    ("clients.json", include_str!("openapi/clients.json")),
    ("cluster.json", include_str!("openapi/cluster.json")),
    ("history.json", include_str!("openapi/history.json")),
    ("info.json", include_str!("openapi/info.json")),
    ("stats.json", include_str!("openapi/stats.json")),
    ("webhooks.json", include_str!("openapi/webhooks.json")),
    ("recordings.json", include_str!("openapi/recordings.json")),
    ("bridges.json", include_str!("openapi/bridges.json")),
    ("pubkeys.json", include_str!("openapi/pubkeys.json")),
];

/// The merged document as JSON text, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| match build() {
        Ok(doc) => doc.to_string(),
        // The fragments are compiled in and a unit test merges them, so this is a bug
        // caught before release; serve the reason rather than crash.
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not merge");
            serde_json::json!({ "error": e }).to_string()
        }
    })
}

/// Merges the fragments into the base document.
pub fn build() -> Result<Value, String> {
    let mut doc: Value =
        serde_json::from_str(BASE).map_err(|e| format!("openapi/base.json: {e}"))?;
    for (name, text) in FRAGMENTS {
        let fragment: Value =
            serde_json::from_str(text).map_err(|e| format!("openapi/{name}: {e}"))?;
        merge(&mut doc, fragment, name)?;
    }
    Ok(doc)
}

/// Adds a fragment's paths and components; a name defined twice is an error, so one
/// module cannot silently replace another's schema.
fn merge(doc: &mut Value, fragment: Value, name: &str) -> Result<(), String> {
    let Value::Object(fragment) = fragment else {
        return Err(format!("openapi/{name}: not an object"));
    };
    for (section, value) in fragment {
        match section.as_str() {
            "paths" => add_all(doc, &["paths"], value, name)?,
            "components" => {
                let Value::Object(kinds) = value else {
                    return Err(format!("openapi/{name}: components is not an object"));
                };
                for (kind, entries) in kinds {
                    add_all(doc, &["components", &kind], entries, name)?;
                }
            }
            other => return Err(format!("openapi/{name}: unexpected section `{other}`")),
        }
    }
    Ok(())
}

fn add_all(doc: &mut Value, at: &[&str], entries: Value, name: &str) -> Result<(), String> {
    let Value::Object(entries) = entries else {
        return Err(format!("openapi/{name}: {} is not an object", at.join(".")));
    };
    let mut target = doc;
    for key in at {
        target = target
            .as_object_mut()
            .ok_or_else(|| format!("openapi/base.json: {key}'s parent is not an object"))?
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let target = target
        .as_object_mut()
        .ok_or_else(|| format!("openapi/base.json: {} is not an object", at.join(".")))?;
    for (key, value) in entries {
        if target.contains_key(&key) {
            return Err(format!(
                "openapi/{name}: `{key}` in {} is already defined",
                at.join(".")
            ));
        }
        target.insert(key, value);
    }
    Ok(())
}

/// Every `(method, path)` the document describes, paths relative to `/api/v1`.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in ["get", "post", "put", "patch", "delete"] {
                if item.get(method).is_some() {
                    out.push((method.to_uppercase(), path.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn fragments_merge_and_every_reference_resolves() {
        let doc = build().expect("merges");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "dangling reference {r}");
        }
        assert!(operations(&doc).contains(&("POST".into(), "/publish".into())));
    }

    #[test]
    fn a_name_defined_twice_is_refused() {
        let mut doc = build().expect("merges");
        let again: Value = serde_json::from_str(FRAGMENTS[0].1).expect("json");
        assert!(merge(&mut doc, again, "again.json")
            .unwrap_err()
            .contains("already defined"));
    }
}
