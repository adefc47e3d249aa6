//! ringgate-config: the TOML configuration schema, its defaults and its
//! validation.
//!
//! This crate owns the file format (see `docs/CONFIG.md`): it deserializes the
//! text into a raw, serde-shaped mirror (`raw`), then converts it exactly once
//! into the validated [`Config`] whose types cannot hold a bad value (durations
//! as [`Duration`](std::time::Duration), addresses as
//! [`SocketAddr`](std::net::SocketAddr), listener and upstream references as
//! indices). Every error names file, line, column and dotted key, and semantic
//! errors are all reported at once. [`to_toml`] writes a validated config
//! back as TOML with every default filled in; [`locate`] finds a key in the
//! text, for problems the binary finds outside it (a log it cannot open).
//!
//! It does no I/O beyond reading the one file in [`load`]: no DNS (addresses
//! must be IP literals), no sockets, no CPU-affinity look-up (`workers =
//! "auto"` stays [`Workers::Auto`] for the binary to resolve).
#![forbid(unsafe_code)]

mod auth;
mod error;
mod model;
mod print;
mod raw;
mod validate;

use std::path::Path;

pub use auth::{ApiKeyAuth, ApiKeySource, Auth, BasicAuth, JwtAuth};
pub use error::{locate, ConfigError, ConfigErrors};
pub use model::*;
pub use print::to_toml;
pub use validate::unusable_backend_address;

/// Reads and parses the config file at `path`. A read failure is reported as
/// a [`ConfigError`] at line 1, column 1 with key `(file)`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file_name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &file_name),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: file_name,
            line: 1,
            column: 1,
            key: "(file)".to_owned(),
            message: format!("cannot read config file: {e}"),
        }])),
    }
}

/// Parses config `text`; `file_name` is only used in error messages.
///
/// A TOML syntax or schema error (unknown key, wrong type, unparsable
/// duration or size) stops parsing and is reported alone; otherwise every
/// semantic error in the file is reported, sorted by position.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    let source = error::Source {
        file: file_name,
        text,
    };
    let raw: raw::RawConfig =
        toml::from_str(text).map_err(|e| ConfigErrors(vec![source.toml_error(&e)]))?;
    validate::validate(raw, &source)
}

#[cfg(test)]
mod tests;
