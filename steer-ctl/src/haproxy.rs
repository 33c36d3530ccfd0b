//! `steer-ctl config import-haproxy`: an haproxy.cfg's frontends, listens and backends as an
//! equivalent steer.toml, and what could not be translated, with line numbers.

use std::fmt;

/// Something of the haproxy.cfg that has no steer equivalent (or was not understood).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line in the haproxy.cfg.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The result of an import.
#[derive(Clone, Debug, Default)]
pub struct Import {
    /// The steer.toml text (valid for `config check`), with comments saying where each part
    /// came from.
    pub toml: String,
    /// What was left out, in line order.
    pub skipped: Vec<Skipped>,
}

/// Why nothing could be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("no frontend or listen section with a bind line and a backend to translate")]
    Nothing,
}

/// Translates the text of an haproxy.cfg.
pub fn import(_text: &str) -> Result<Import, ImportError> {
    Err(ImportError::Nothing)
}
