//! JSON Schema validation of request bodies (a route's `body_schema`):
//! schemas compiled once per config load (`check` reports a bad file with
//! its key), shared read-only by the workers, and applied to a body read
//! whole. Remote `$ref`s are not fetched (no network on the request path or
//! at load).

use std::path::Path;
use std::sync::Arc;

use jsonschema::Validator;
use ringgate_config::Config;

/// Compiled schemas, indexed like `config.routes` (`None`: no schema).
pub type Schemas = Vec<Option<Arc<Validator>>>;

/// Compiles every route's schema; `Err` names the route's key and what is
/// wrong with the file.
pub fn load_all(config: &Config) -> Result<Schemas, String> {
    config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.checks
                .body_schema
                .as_deref()
                .map(|path| load(&format!("routes[{i}].body_schema"), path).map(Arc::new))
                .transpose()
        })
        .collect()
}

fn load(key: &str, path: &Path) -> Result<Validator, String> {
    let text = std::fs::read(path).map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    let schema: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{key}: {}: not JSON: {e}", path.display()))?;
    jsonschema::validator_for(&schema)
        .map_err(|e| format!("{key}: {}: not a valid JSON Schema: {e}", path.display()))
}

/// The body against the schema: `Err` with the first violation, its JSON
/// pointer first (`/items/0/id: ...`).
pub fn check(schema: &Validator, body: &[u8]) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    schema.validate(&value).map_err(|e| {
        let at = e.instance_path().as_str();
        let at = if at.is_empty() { "/" } else { at };
        format!("body does not match the schema at {at}: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_violation_is_named_by_its_path() {
        let schema = jsonschema::validator_for(&serde_json::json!({
            "type": "object",
            "required": ["items"],
            "properties": { "items": { "type": "array", "items": { "type": "integer" } } }
        }))
        .unwrap();
        assert!(check(&schema, br#"{"items": [1, 2]}"#).is_ok());
        let e = check(&schema, br#"{"items": [1, "x"]}"#).unwrap_err();
        assert!(
            e.starts_with("body does not match the schema at /items/1:"),
            "{e}"
        );
        let e = check(&schema, b"{}").unwrap_err();
        assert!(e.contains("at /:"), "{e}");
        assert!(check(&schema, b"{nope")
            .unwrap_err()
            .starts_with("body is not JSON"));
    }
}
