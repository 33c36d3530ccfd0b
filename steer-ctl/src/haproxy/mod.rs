//! `steer-ctl config import-haproxy`: an haproxy.cfg's frontends, listens and backends as an
//! equivalent steer.toml, and what could not be translated, with line numbers.
//!
//! Read in three steps, a module each: the sections and what they say (`parse`, over the
//! words of `lex`), the steer services that says (`translate`), and their TOML (`emit`). Every
//! line of the haproxy.cfg is either used or listed in `Import::skipped`, once, with why.

use std::fmt;

mod emit;
mod lex;
mod parse;
mod translate;

/// A line of the haproxy.cfg and what is said about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// 1-based line in the haproxy.cfg.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The result of an import.
#[derive(Clone, Debug, Default)]
pub struct Import {
    /// The steer.toml text (valid for `config check`), with comments saying where each part
    /// came from and `TODO` where the haproxy.cfg does not say what steer needs.
    pub toml: String,
    /// What was left out (not translated), at most one entry per line, in line order.
    pub skipped: Vec<Note>,
    /// What was translated but needs the user's eye: placeholders to fill in, settings that
    /// mean something else in steer. In line order.
    pub notices: Vec<Note>,
}

/// Why nothing could be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "expected an haproxy.cfg with frontend, listen or backend sections, found an empty file \
         (only blank lines and comments)"
    )]
    Empty,
    #[error(
        "expected an haproxy.cfg with frontend, listen or backend sections, found none; the first \
         line that is not a comment is line {line}: {found:?}"
    )]
    NotHaproxy { line: usize, found: String },
    #[error(
        "no frontend, listen or backend could be translated into a steer service (expected a \
         bind address and port and servers with IP addresses); {} line(s) not translated",
        .skipped.len()
    )]
    Nothing { skipped: Vec<Note> },
}

/// What is said about the lines, gathered while reading and translating.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    skipped: Vec<Note>,
    notices: Vec<Note>,
}

impl Notes {
    /// Lists `line` as not translated, with why. A second reason for the same line joins the
    /// first entry (`server web1: …; …`), so each line has at most one.
    pub(crate) fn skip(&mut self, line: usize, message: String) {
        add(&mut self.skipped, line, message);
    }

    /// Says something about a translated `line` that the user must look at.
    pub(crate) fn notice(&mut self, line: usize, message: String) {
        add(&mut self.notices, line, message);
    }

    /// Whether `line` is listed as not translated (in part or whole).
    pub(crate) fn has_skip(&self, line: usize) -> bool {
        self.skipped.iter().any(|n| n.line == line)
    }

    fn finish(mut self) -> (Vec<Note>, Vec<Note>) {
        self.skipped.sort_by_key(|n| n.line);
        self.notices.sort_by_key(|n| n.line);
        (self.skipped, self.notices)
    }
}

fn add(list: &mut Vec<Note>, line: usize, message: String) {
    match list.iter_mut().find(|n| n.line == line) {
        Some(n) if n.message.contains(&message) => {}
        Some(n) => {
            // `server web1: a` and `server web1: b` read as `server web1: a; b`.
            let head = |m: &str| m.split_once(": ").map(|(h, _)| h.to_string());
            match (head(&n.message), message.split_once(": ")) {
                (Some(h), Some((h2, rest))) if h == h2 => {
                    n.message = format!("{}; {rest}", n.message)
                }
                _ => n.message = format!("{}; {message}", n.message),
            }
        }
        None => list.push(Note { line, message }),
    }
}

/// Translates the text of an haproxy.cfg.
pub fn import(text: &str) -> Result<Import, ImportError> {
    let mut notes = Notes::default();
    let parsed = parse::parse(text, &mut notes);
    if !parsed.any_text {
        return Err(ImportError::Empty);
    }
    if parsed.proxies.is_empty() {
        if let Some(s) = &parsed.first_stray {
            return Err(ImportError::NotHaproxy {
                line: s.line,
                found: s.v.clone(),
            });
        }
    }
    let plan = translate::translate(&parsed, &mut notes);
    let (skipped, notices) = notes.finish();
    if plan.services.is_empty() {
        return Err(ImportError::Nothing { skipped });
    }
    Ok(Import {
        toml: emit::toml(&plan),
        skipped,
        notices,
    })
}

#[cfg(test)]
mod tests;
