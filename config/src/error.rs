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
/// serde's messages speak Rust (`expected i64`, `unknown field`, `unknown
/// variant`, `expected struct RawServer`); the operator wrote TOML, so they
/// are said in TOML's words, with a "did you mean" where a name is close.
fn one_line(message: &str) -> String {
    let message = for_people(message);
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Rewrites serde's wording of a schema error for someone who wrote TOML.
fn for_people(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return unknown_name("key", rest);
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return unknown_name("value", rest);
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.split_once(", expected ") {
                let found = match found {
                    "sequence" => "array",
                    "map" => "table",
                    other => other,
                };
                return format!("{prefix}{found}, expected {}", type_name(expected));
            }
        }
    }
    message.to_owned()
}

/// serde's name of an expected type, as TOML calls it.
fn type_name(expected: &str) -> String {
    let (head, tail) = expected
        .split_once(char::is_whitespace)
        .map_or((expected, ""), |(h, t)| (h, t));
    let word = match head {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128"
        | "usize" => "an integer",
        "f32" | "f64" => "a number",
        "char" => "a one-character string",
        "struct" if tail.starts_with("Raw") => return "a table".to_owned(),
        "a" if tail == "sequence" => return "an array".to_owned(),
        "a" if tail == "map" => return "a table".to_owned(),
        _ => return expected.to_owned(),
    };
    if tail.is_empty() {
        word.to_owned()
    } else {
        format!("{word} {tail}")
    }
}

/// serde's `` `NAME`, expected one of `A`, `B` `` (or `` expected `A` ``,
/// or `there are no fields`) → "unknown key `NAME`; did you mean `B`? (one
/// of `A`, `B`)".
fn unknown_name(what: &str, rest: &str) -> String {
    let mut quoted = rest.split('`').skip(1).step_by(2);
    let Some(name) = quoted.next() else {
        return format!("unknown {what} {rest}");
    };
    let known: Vec<&str> = quoted.collect();
    let mut message = format!("unknown {what} `{name}`");
    if let Some(close) = did_you_mean(name, known.iter().copied()) {
        message.push_str(&format!("; did you mean `{close}`?"));
    }
    match known.as_slice() {
        [] => message.push_str(&format!("; no {what}s are allowed here")),
        [one] => message.push_str(&format!(" (the only {what} allowed is `{one}`)")),
        many => {
            let list: Vec<String> = many.iter().map(|k| format!("`{k}`")).collect();
            message.push_str(&format!(" (expected one of {})", list.join(", ")));
        }
    }
    message
}

/// The candidate closest to `word` if it is close enough to be a slip of
/// the keyboard (a dropped, doubled or swapped letter, a different case or
/// separator), else `None`.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let folded = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let word_folded = folded(word);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| {
            let candidate = folded(c);
            let score = strsim::normalized_damerau_levenshtein(&word_folded, &candidate);
            // A shortened name ("defer" for "defer_taskrun") is a slip too.
            let prefix = word_folded.len() >= 3 && candidate.starts_with(&word_folded);
            (c, if prefix { score.max(0.6) } else { score })
        })
        // 0.6: "backlgo"→"backlog" (0.71) and "least_con"→"least_conn" (0.9)
        // pass; two different short words ("pin"→"te") do not.
        .filter(|&(_, score)| score >= 0.6)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
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

/// Where the value of dotted `key` (as in [`ConfigError::key`], e.g.
/// `listeners[1].address`) is written in `text`: 1-based line and column.
/// For problems found outside the file's text (a log that cannot be
/// opened, an address that cannot be bound), so they are reported like
/// every other config error. `None` when the key is not in the text.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let doc = ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (segment, None),
        };
        item = item.get(name)?;
        if let Some(i) = index {
            item = item.get(i)?;
        }
    }
    let span = match item {
        Item::Value(v) => v.span(),
        Item::Table(t) => t.span(),
        _ => None,
    }?;
    Some(line_column(text, span.start))
}
