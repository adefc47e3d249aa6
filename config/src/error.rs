//! Config errors: each names the file, the 1-based line and column, the dotted
//! key and what is wrong, so an operator can jump straight to it.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Dotted path such as `routes[1].upstream` or `server.workers`; array
    /// indices are 0-based, in file order.
    pub key: String,
    pub message: String,
}

/// Every problem found in one config file, in file order where that is known.
/// Never empty when returned as an `Err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The source text plus the byte offset → (line, column) mapping.
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: one_line(&message.into()),
        }
    }

    /// Turns the TOML parser's single error (syntax, unknown key, wrong type,
    /// bad value) into a located, keyed `ConfigError`.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let message = err.message();
        let key = match ImDocument::parse(self.text) {
            // The document is valid TOML, so this is a schema error: find the
            // key whose key or value span is the tightest around the error.
            Ok(doc) => {
                let mut best = Best::new(&span);
                walk_table(doc.as_table(), "", &mut best);
                let mut key = best.path.unwrap_or_default();
                // serde reports a missing field on the table that lacks it.
                if let Some(field) = missing_field(message) {
                    key = join(&key, field);
                }
                key
            }
            Err(_) => syntax_error_key(self.text, span.start),
        };
        let key = if key.is_empty() {
            "(document)".to_owned()
        } else {
            key
        };
        self.error(span, key, message)
    }
}

/// 1-based line and character column of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// toml's messages may span lines; an error list is one error per line.
/// serde names the raw struct on a type mismatch ("expected struct
/// RawServer"); the operator wrote a table, so say that.
fn one_line(message: &str) -> String {
    let message = match message.find("expected struct Raw") {
        Some(at) => {
            let tail = &message[at + "expected struct Raw".len()..];
            let rest = tail.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
            format!("{}expected a table{rest}", &message[..at])
        }
        None => message.to_owned(),
    };
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The smallest span containing the error span seen so far, and its path.
struct Best<'a> {
    target: &'a Range<usize>,
    len: usize,
    path: Option<String>,
}

impl<'a> Best<'a> {
    fn new(target: &'a Range<usize>) -> Self {
        Self {
            target,
            len: usize::MAX,
            path: None,
        }
    }

    fn consider(&mut self, span: Option<Range<usize>>, path: &str) {
        let Some(span) = span else { return };
        let contains = span.start <= self.target.start && self.target.end <= span.end;
        // `<=`: on a tie the later, deeper candidate wins.
        if contains && span.len() <= self.len {
            self.len = span.len();
            self.path = Some(path.to_owned());
        }
    }
}

fn walk_table(table: &Table, prefix: &str, best: &mut Best<'_>) {
    for (name, item) in table.iter() {
        let path = join(prefix, name);
        best.consider(table.key(name).and_then(|k| k.span()), &path);
        walk_item(item, &path, best);
    }
}

fn walk_item(item: &Item, path: &str, best: &mut Best<'_>) {
    match item {
        Item::None => {}
        Item::Value(v) => walk_value(v, path, best),
        Item::Table(t) => {
            best.consider(t.span(), path);
            walk_table(t, path, best);
        }
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let path = format!("{path}[{i}]");
                best.consider(t.span(), &path);
                walk_table(t, &path, best);
            }
        }
    }
}

fn walk_value(value: &Value, path: &str, best: &mut Best<'_>) {
    best.consider(value.span(), path);
    match value {
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                walk_value(v, &format!("{path}[{i}]"), best);
            }
        }
        Value::InlineTable(t) => walk_inline(t, path, best),
        _ => {}
    }
}

fn walk_inline(table: &InlineTable, prefix: &str, best: &mut Best<'_>) {
    for (name, value) in table.iter() {
        let path = join(prefix, name);
        best.consider(table.key(name).and_then(|k| k.span()), &path);
        walk_value(value, &path, best);
    }
}

/// Best-effort key for a syntax error, where no parse tree exists: the last
/// table header before the error, plus the key on the error's line if it has
/// one (`[[x]]` headers are counted so the index matches the array).
fn syntax_error_key(text: &str, offset: usize) -> String {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let mut table = String::new();
    let mut array_counts: Vec<(String, usize)> = Vec::new();
    for line in text[..line_start].lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim().to_owned();
            let index = match array_counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    array_counts.push((name.clone(), 1));
                    0
                }
            };
            table = format!("{name}[{index}]");
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = name.trim().to_owned();
        }
    }
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = &text[line_start..line_end];
    if let Some(header) = line.trim().strip_prefix('[') {
        // The error is in a header itself: name the table it tries to open.
        let name: String = header.chars().take_while(|&c| c != ']').collect();
        let name = name.trim().trim_start_matches('[').trim();
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.trim_start().starts_with('[') => {
            join(&table, key.trim())
        }
        _ => table,
    }
}
