//! Plain SQL from outside (an uploaded `.sql` / `.sql.gz`, `*.sql` in an uploaded tar,
//! `globals.sql`) is read as hostile before psql sees any of it.
//!
//! psql runs backslash meta-commands wherever they appear outside quotes: `\! cmd` runs a shell as
//! the restore's user, `\o FILE` writes anywhere, `\connect other` writes into another database,
//! `\i FILE` reads anywhere. [`Scanner`] lexes the script the way psql does (single quotes with
//! `''`, E'' strings, double-quoted identifiers, dollar quotes with tags, nested `/* */` and `--`
//! comments, parentheses and `BEGIN ATOMIC` bodies for statement ends, and `COPY ... FROM stdin`
//! data up to its `\.` line) and refuses every meta-command except what pg_dump writes for a
//! single-database dump into its own target:
//!
//! - `\connect DB` / `\c DB` (also `-reuse-previous=on "dbname='DB'"`) to the target database,
//! - `\restrict KEY` / `\unrestrict KEY`,
//! - `\.` ending COPY data.
//!
//! Statements that touch the role pgkeep connects as (`CREATE`/`ALTER`/`DROP` `ROLE`/`USER`/
//! `GROUP` naming it, `current_user` or `session_user`) are skipped: its password belongs to the
//! Secret, and a pg_dumpall file must not lock pgkeep out.
//!
//! A quote right after an odd run of backslashes (`'C:\'`) is refused: psql reads it differently
//! with `standard_conforming_strings` on or off, so where the string ends cannot be known.
//!
//! The scanner is streaming (one line at a time, memory bounded by the longest role statement)
//! and pure: [`filter`] writes the script as psql is to read it (allowed meta-commands and
//! skipped statements blanked, line numbers kept), after a `\restrict` line with a random key of
//! its own, so that psql itself refuses any meta-command should its reading ever differ from
//! this one's.

use std::io::{self, BufRead, Write};

/// What a script may do: whose database it writes into, which role it must leave alone.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The database the restore writes into (the only `\connect` target allowed).
    pub database: String,
    /// The role pgkeep connects as.
    pub role: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(
        "line {line}: the psql meta-command `{command}` is not allowed in a restored SQL script (it could run commands, read or write files, or reach other databases); nothing was changed\nhint: remove that line (pg_dump writes only \\connect to its own database, \\restrict/\\unrestrict and COPY's \\.), or restore a custom-format dump (pg_dump -Fc) instead"
    )]
    MetaCommand { line: u64, command: String },
    #[error(
        "line {line}: `\\connect {to}` leaves the target database `{target}`; nothing was changed\nhint: a restore writes into one database only: dump that database alone (pg_dump, not pg_dumpall), or set the target database to the one the script connects to"
    )]
    ConnectElsewhere {
        line: u64,
        to: String,
        target: String,
    },
    #[error(
        "line {line}: a quoted string has a backslash right before a quote; psql reads that differently depending on standard_conforming_strings, so where the string ends cannot be told; nothing was changed\nhint: restore a custom-format dump (pg_dump -Fc) instead, or write the string as E'...' with `\\\\` for each backslash"
    )]
    AmbiguousQuote { line: u64 },
    #[error(
        "line {line}: COPY that reads or writes server files or programs (only `COPY ... FROM stdin` is accepted); nothing was changed\nhint: a dump loads table data with COPY ... FROM stdin; remove that statement"
    )]
    ServerCopy { line: u64 },
    #[error(
        "the script ends inside {what} that starts on line {line}: it looks truncated; nothing was changed\nhint: copy the complete file again (compare its size or checksum with the original)"
    )]
    Unterminated { what: &'static str, line: u64 },
}

/// A statement that was skipped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub line: u64,
    /// e.g. `ALTER ROLE postgres` (never the rest: it may hold a password).
    pub statement: String,
}

/// What a scan found in a script that may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanReport {
    pub lines: u64,
    /// Role statements touching the connecting role, left out.
    pub skipped: Vec<Skipped>,
    /// `COPY ... FROM stdin` blocks.
    pub copy_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lex {
    Normal,
    /// Single-quoted literal (standard, E'', B'', X'', U&''); `bs` is the current backslash run.
    Quote {
        start: u64,
        bs: usize,
    },
    /// Double-quoted identifier.
    Ident {
        start: u64,
    },
    Dollar {
        start: u64,
        tag: Vec<u8>,
    },
    Block {
        start: u64,
        depth: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    /// An unquoted identifier or keyword, lower-cased.
    Bare(String),
    /// A double-quoted identifier, as written.
    Quoted(String),
    /// Anything else (punctuation, literals, numbers).
    Other(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    None,
    Ident,
    Number { exp: bool, sign_ok: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// First words not seen yet: held.
    Undecided,
    /// Passed through as it comes.
    Pass,
    /// COPY: its words are kept to find `FROM stdin`.
    Copy,
    /// A role statement: held until its end, then passed or skipped.
    Role,
}

const MAX_WORDS: usize = 4096;

/// The streaming scanner; see the module docs.
pub struct Scanner {
    policy: Policy,
    line: u64,
    lex: Lex,
    tok: Tok,
    word: Vec<u8>,
    quoted: Vec<u8>,
    /// COPY statements sent whose data has not started yet, and the line a running COPY began.
    copy_pending: u64,
    in_copy: Option<u64>,
    /// The current statement.
    started: Option<u64>,
    kind: Kind,
    words: Vec<Word>,
    paren: u32,
    begin: u32,
    ident_count: u32,
    ids: [u8; 4],
    hold: Option<Vec<u8>>,
    out: Vec<u8>,
    report: ScanReport,
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// `$tag$` at the start of `s` (psql's dolqdelim): the tag, without the dollars.
fn dollar_tag(s: &[u8]) -> Option<&[u8]> {
    if s.first() != Some(&b'$') {
        return None;
    }
    let mut i = 1;
    if s.get(1).is_some_and(|b| ident_start(*b)) {
        i = 2;
        while s
            .get(i)
            .is_some_and(|b| ident_start(*b) || b.is_ascii_digit())
        {
            i += 1;
        }
    }
    (s.get(i) == Some(&b'$')).then(|| &s[1..i])
}

fn shown(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s: String = s.chars().take(40).collect();
    s.escape_debug().to_string()
}

impl Scanner {
    pub fn new(policy: Policy) -> Scanner {
        Scanner {
            policy,
            line: 0,
            lex: Lex::Normal,
            tok: Tok::None,
            word: Vec::new(),
            quoted: Vec::new(),
            copy_pending: 0,
            in_copy: None,
            started: None,
            kind: Kind::Undecided,
            words: Vec::new(),
            paren: 0,
            begin: 0,
            ident_count: 0,
            ids: [0; 4],
            hold: None,
            out: Vec::new(),
            report: ScanReport::default(),
        }
    }

    fn emit(&mut self, b: &[u8]) {
        match &mut self.hold {
            Some(h) => h.extend_from_slice(b),
            None => self.out.extend_from_slice(b),
        }
    }

    /// Blank what psql must not see (keeping the newline, so line numbers stay).
    fn emit_blank_line(&mut self, line: &[u8]) {
        if line.ends_with(b"\n") {
            self.emit(b"\n");
        }
    }

    /// Feed one line (with its `\n`, except maybe the last); what psql is to read of it (and of
    /// held lines before it) is appended to `out`.
    pub fn feed(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), ScanError> {
        self.line += 1;
        self.report.lines = self.line;
        if self.in_copy.is_none() && self.copy_pending > 0 {
            self.copy_pending -= 1;
            self.in_copy = Some(self.line);
            self.report.copy_blocks += 1;
        }
        if self.in_copy.is_some() {
            // psql ends COPY data at a line that is exactly `\.`.
            if line == b"\\.\n" || line == b"\\.\r\n" || line == b"\\." {
                self.in_copy = None;
            }
            self.emit(line);
        } else {
            self.lex_line(line)?;
        }
        out.append(&mut self.out);
        Ok(())
    }

    fn lex_line(&mut self, line: &[u8]) -> Result<(), ScanError> {
        let n = line.len();
        let mut i = 0;
        while i < n {
            let b = line[i];
            let lex = std::mem::replace(&mut self.lex, Lex::Normal);
            let (lex, step) = match lex {
                Lex::Normal => {
                    i = self.normal(line, i)?;
                    continue;
                }
                Lex::Quote { start, bs } => {
                    if b == b'\\' {
                        (Lex::Quote { start, bs: bs + 1 }, 1)
                    } else if b == b'\'' {
                        if bs % 2 == 1 {
                            return Err(ScanError::AmbiguousQuote { line: self.line });
                        }
                        if line.get(i + 1) == Some(&b'\'') {
                            (Lex::Quote { start, bs: 0 }, 2)
                        } else {
                            (Lex::Normal, 1)
                        }
                    } else {
                        (Lex::Quote { start, bs: 0 }, 1)
                    }
                }
                Lex::Ident { start } => {
                    if b == b'"' {
                        if line.get(i + 1) == Some(&b'"') {
                            self.quoted.push(b'"');
                            (Lex::Ident { start }, 2)
                        } else {
                            let name = String::from_utf8_lossy(&self.quoted).into_owned();
                            self.quoted.clear();
                            self.push_word(Word::Quoted(name));
                            (Lex::Normal, 1)
                        }
                    } else {
                        self.quoted.push(b);
                        (Lex::Ident { start }, 1)
                    }
                }
                Lex::Dollar { start, tag } => {
                    let closes = b == b'$'
                        && line[i + 1..].starts_with(&tag)
                        && line.get(i + 1 + tag.len()) == Some(&b'$');
                    if closes {
                        let len = tag.len() + 2;
                        (Lex::Normal, len)
                    } else {
                        (Lex::Dollar { start, tag }, 1)
                    }
                }
                Lex::Block { start, depth } => {
                    if b == b'/' && line.get(i + 1) == Some(&b'*') {
                        (
                            Lex::Block {
                                start,
                                depth: depth + 1,
                            },
                            2,
                        )
                    } else if b == b'*' && line.get(i + 1) == Some(&b'/') {
                        if depth == 1 {
                            (Lex::Normal, 2)
                        } else {
                            (
                                Lex::Block {
                                    start,
                                    depth: depth - 1,
                                },
                                2,
                            )
                        }
                    } else {
                        (Lex::Block { start, depth }, 1)
                    }
                }
            };
            self.lex = lex;
            let end = (i + step).min(n);
            self.emit(&line[i..end]);
            i = end;
        }
        Ok(())
    }

    /// One step in the normal state at `line[i]`; returns the next position.
    fn normal(&mut self, line: &[u8], i: usize) -> Result<usize, ScanError> {
        let b = line[i];
        let next = line.get(i + 1).copied();
        // Identifier and number tokens (psql counts identifiers for BEGIN ATOMIC bodies).
        match self.tok {
            Tok::Ident if ident_cont(b) => {
                self.word.push(b.to_ascii_lowercase());
                self.emit(&[b]);
                return Ok(i + 1);
            }
            Tok::Number { exp, sign_ok } => {
                let more = b.is_ascii_digit()
                    || b == b'.'
                    || (!exp && (b == b'e' || b == b'E'))
                    || (sign_ok && (b == b'+' || b == b'-'));
                if more {
                    let e = b == b'e' || b == b'E';
                    self.tok = Tok::Number {
                        exp: exp || e,
                        sign_ok: e,
                    };
                    self.emit(&[b]);
                    return Ok(i + 1);
                }
                self.tok = Tok::None;
            }
            Tok::Ident => self.finish_ident(),
            Tok::None => {}
        }
        if b.is_ascii_whitespace() {
            self.emit(&[b]);
            return Ok(i + 1);
        }
        if b == b'-' && next == Some(b'-') {
            // A comment to the end of the line.
            let rest = &line[i..];
            let body = rest.strip_suffix(b"\n").unwrap_or(rest);
            self.emit(body);
            return Ok(i + body.len());
        }
        if b == b'/' && next == Some(b'*') {
            self.lex = Lex::Block {
                start: self.line,
                depth: 1,
            };
            self.emit(b"/*");
            return Ok(i + 2);
        }
        if b == b'\\' {
            return self.meta(line, i);
        }
        // Anything else is part of a statement.
        if self.started.is_none() {
            self.started = Some(self.line);
            self.kind = Kind::Undecided;
            self.words.clear();
            self.hold = Some(Vec::new());
        }
        match b {
            b'\'' => {
                self.push_word(Word::Other(b'\''));
                self.lex = Lex::Quote {
                    start: self.line,
                    bs: 0,
                };
                self.emit(&[b]);
                Ok(i + 1)
            }
            b'"' => {
                self.lex = Lex::Ident { start: self.line };
                self.emit(&[b]);
                Ok(i + 1)
            }
            b'$' => {
                if let Some(tag) = dollar_tag(&line[i..]) {
                    let len = tag.len() + 2;
                    self.push_word(Word::Other(b'$'));
                    self.lex = Lex::Dollar {
                        start: self.line,
                        tag: tag.to_vec(),
                    };
                    self.emit(&line[i..i + len]);
                    return Ok(i + len);
                }
                self.push_word(Word::Other(b'$'));
                self.emit(&[b]);
                Ok(i + 1)
            }
            b';' if self.paren == 0 && self.begin == 0 => {
                self.emit(&[b]);
                self.end_statement()?;
                Ok(i + 1)
            }
            b'(' => {
                self.paren += 1;
                self.push_word(Word::Other(b));
                self.emit(&[b]);
                Ok(i + 1)
            }
            b')' => {
                self.paren = self.paren.saturating_sub(1);
                self.push_word(Word::Other(b));
                self.emit(&[b]);
                Ok(i + 1)
            }
            b if ident_start(b) => {
                self.tok = Tok::Ident;
                self.word.clear();
                self.word.push(b.to_ascii_lowercase());
                self.emit(&[b]);
                Ok(i + 1)
            }
            b if b.is_ascii_digit() => {
                self.tok = Tok::Number {
                    exp: false,
                    sign_ok: false,
                };
                self.push_word(Word::Other(b'0'));
                self.emit(&[b]);
                Ok(i + 1)
            }
            _ => {
                self.push_word(Word::Other(b));
                self.emit(&[b]);
                Ok(i + 1)
            }
        }
    }

    /// A backslash outside quotes: a psql meta-command. Returns the end of the line.
    fn meta(&mut self, line: &[u8], i: usize) -> Result<usize, ScanError> {
        let rest = &line[i + 1..];
        let name_len = rest
            .iter()
            .position(|b| b.is_ascii_whitespace() || *b == b'\\')
            .unwrap_or(rest.len());
        let name = &rest[..name_len.max(1).min(rest.len())];
        let command = format!("\\{}", shown(name));
        let refuse = || ScanError::MetaCommand {
            line: self.line,
            command: command.clone(),
        };
        // Only on a line of its own, between statements, as pg_dump writes them.
        let alone = line[..i].iter().all(|b| b.is_ascii_whitespace());
        if !alone || self.started.is_some() {
            return Err(refuse());
        }
        let args: Vec<&[u8]> = rest[name_len..]
            .split(|b| b.is_ascii_whitespace())
            .filter(|a| !a.is_empty())
            .collect();
        match name {
            b"restrict" | b"unrestrict" => {
                let key_ok = args.len() == 1 && args[0].iter().all(|b| b.is_ascii_alphanumeric());
                if !key_ok {
                    return Err(refuse());
                }
            }
            b"connect" | b"c" => {
                let target = &self.policy.database;
                let plain = target
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80);
                let simple = !target.contains(['"', '\'', '\\', '`', ':']);
                let forms: Vec<Vec<Vec<u8>>> = [
                    plain.then(|| vec![target.as_bytes().to_vec()]),
                    simple.then(|| vec![format!("\"{target}\"").into_bytes()]),
                    simple.then(|| {
                        vec![
                            b"-reuse-previous=on".to_vec(),
                            format!("\"dbname='{target}'\"").into_bytes(),
                        ]
                    }),
                ]
                .into_iter()
                .flatten()
                .collect();
                let given: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
                if !forms.contains(&given) {
                    return Err(ScanError::ConnectElsewhere {
                        line: self.line,
                        to: shown(&rest[name_len..]).trim().to_owned(),
                        target: target.clone(),
                    });
                }
            }
            _ => return Err(refuse()),
        }
        // Allowed: psql does not see it (it runs restricted, and is connected to the target).
        let body = &line[i..];
        self.emit_blank_line(body);
        Ok(line.len())
    }

    fn finish_ident(&mut self) {
        self.tok = Tok::None;
        let w = String::from_utf8_lossy(&self.word).into_owned();
        // psql's heuristic for CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN ATOMIC ... END.
        if self.ident_count == 0 {
            self.ids = [0; 4];
        }
        if matches!(
            w.as_str(),
            "create" | "function" | "procedure" | "or" | "replace"
        ) && (self.ident_count as usize) < self.ids.len()
        {
            self.ids[self.ident_count as usize] = w.as_bytes()[0];
        }
        self.ident_count += 1;
        let ids = self.ids;
        let routine = ids[0] == b'c'
            && (ids[1] == b'f'
                || ids[1] == b'p'
                || (ids[1] == b'o' && ids[2] == b'r' && (ids[3] == b'f' || ids[3] == b'p')));
        if routine && self.paren == 0 {
            match w.as_str() {
                "begin" => self.begin += 1,
                "case" if self.begin >= 1 => self.begin += 1,
                "end" if self.begin > 0 => self.begin -= 1,
                _ => {}
            }
        }
        self.push_word(Word::Bare(w));
    }

    fn push_word(&mut self, w: Word) {
        if self.started.is_none() {
            return;
        }
        if self.words.len() < MAX_WORDS {
            self.words.push(w);
        }
        self.decide();
    }

    /// Classify the statement from its first words; release what was held when it is neither a
    /// role statement nor COPY.
    fn decide(&mut self) {
        if self.kind != Kind::Undecided {
            return;
        }
        fn bare(w: Option<&Word>) -> Option<&str> {
            match w {
                Some(Word::Bare(s)) => Some(s.as_str()),
                _ => None,
            }
        }
        let first = bare(self.words.first());
        let kind = match (first, self.words.len()) {
            (Some("copy"), _) => Kind::Copy,
            (Some("alter" | "create" | "drop"), 1) => return,
            (Some("alter" | "create" | "drop"), _) => match bare(self.words.get(1)) {
                Some("role" | "user" | "group") => Kind::Role,
                _ => Kind::Pass,
            },
            _ => Kind::Pass,
        };
        self.kind = kind;
        if kind != Kind::Role
            && let Some(h) = self.hold.take()
        {
            self.out.extend_from_slice(&h);
        }
    }

    fn end_statement(&mut self) -> Result<(), ScanError> {
        let start = self.started.take().unwrap_or(self.line);
        if self.kind == Kind::Undecided {
            self.kind = Kind::Pass;
        }
        let held = self.hold.take();
        match self.kind {
            Kind::Copy => {
                let from_stdin = self.words.windows(2).any(
                    |w| matches!(w, [Word::Bare(a), Word::Bare(b)] if a == "from" && b == "stdin"),
                );
                if !from_stdin || self.words.len() >= MAX_WORDS {
                    return Err(ScanError::ServerCopy { line: start });
                }
                self.copy_pending += 1;
            }
            Kind::Role => {
                let held = held.unwrap_or_default();
                match self.touches_own_role() {
                    Some(statement) => {
                        tracing::info!(
                            line = start,
                            "skipping `{statement} ...`: the role pgkeep connects as is left as it is"
                        );
                        self.report.skipped.push(Skipped {
                            line: start,
                            statement,
                        });
                        let newlines = held.iter().filter(|b| **b == b'\n').count();
                        self.out.extend(std::iter::repeat_n(b'\n', newlines));
                    }
                    None => self.out.extend_from_slice(&held),
                }
            }
            Kind::Pass | Kind::Undecided => {
                if let Some(h) = held {
                    self.out.extend_from_slice(&h);
                }
            }
        }
        self.kind = Kind::Undecided;
        self.words.clear();
        self.ident_count = 0;
        self.begin = 0;
        self.paren = 0;
        Ok(())
    }

    /// For a role statement: `Some("ALTER ROLE name")` when it names the connecting role.
    fn touches_own_role(&self) -> Option<String> {
        let me = &self.policy.role;
        let is_me = |w: &Word| match w {
            Word::Bare(s) => {
                s == me || matches!(s.as_str(), "current_user" | "session_user" | "current_role")
            }
            Word::Quoted(s) => s == me,
            Word::Other(_) => false,
        };
        let verb = match &self.words[0] {
            Word::Bare(s) => s.to_uppercase(),
            _ => return None,
        };
        let noun = match &self.words[1] {
            Word::Bare(s) => s.to_uppercase(),
            _ => return None,
        };
        // `CREATE/ALTER/DROP USER MAPPING FOR ...` is about a foreign server, not a role.
        if matches!(self.words.get(2), Some(Word::Bare(s)) if s == "mapping") {
            return None;
        }
        let names: Vec<&Word> = if verb == "DROP" {
            // DROP ROLE [IF EXISTS] a, b, ...
            self.words[2..]
                .iter()
                .filter(|w| {
                    !matches!(w, Word::Other(b',' | b';'))
                        && !matches!(w, Word::Bare(s) if s == "if" || s == "exists")
                })
                .collect()
        } else {
            self.words.get(2).into_iter().collect()
        };
        names.into_iter().find(|w| is_me(w)).map(|w| match w {
            Word::Bare(s) => format!("{verb} {noun} {s}"),
            Word::Quoted(s) => format!("{verb} {noun} \"{s}\""),
            Word::Other(_) => unreachable!(),
        })
    }

    /// The end of the script: refuse it when it stops inside something.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<ScanReport, ScanError> {
        if self.tok == Tok::Ident {
            self.finish_ident();
        }
        let open = match &self.lex {
            Lex::Normal => None,
            Lex::Quote { start, .. } => Some(("a quoted string", *start)),
            Lex::Ident { start } => Some(("a quoted identifier", *start)),
            Lex::Dollar { start, .. } => Some(("a dollar-quoted string", *start)),
            Lex::Block { start, .. } => Some(("a /* comment */", *start)),
        };
        if let Some((what, line)) = open {
            return Err(ScanError::Unterminated { what, line });
        }
        if let Some(line) = self.in_copy {
            return Err(ScanError::Unterminated {
                what: "COPY data (no `\\.` line)",
                line,
            });
        }
        if let Some(line) = self.started {
            return Err(ScanError::Unterminated {
                what: "a statement (no `;`)",
                line,
            });
        }
        if let Some(h) = self.hold.take() {
            self.out.extend_from_slice(&h);
        }
        out.append(&mut self.out);
        Ok(self.report)
    }
}

/// [`filter`]'s errors: the script's, or reading or writing it.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("reading the script: {0}")]
    Read(#[source] io::Error),
    #[error("writing the script to psql: {0}")]
    Write(#[source] io::Error),
}

/// A random key for psql's `\restrict`.
fn restrict_key() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    if let Ok(b) = std::fs::read("/proc/sys/kernel/random/uuid") {
        h.update(b);
    }
    hex::encode(&h.finalize()[..16])
}

/// Scan `input` and write what psql is to read to `out` (see the module docs). With
/// `io::sink()` this is the check made before anything runs.
pub fn filter(
    mut input: impl BufRead,
    mut out: impl Write,
    policy: &Policy,
) -> Result<ScanReport, FilterError> {
    let mut scanner = Scanner::new(policy.clone());
    writeln!(out, "\\restrict {}", restrict_key()).map_err(FilterError::Write)?;
    let mut line = Vec::with_capacity(1 << 16);
    let mut buf = Vec::with_capacity(1 << 16);
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(FilterError::Read)?;
        if n == 0 {
            break;
        }
        scanner.feed(&line, &mut buf)?;
        if buf.len() >= 1 << 16 {
            out.write_all(&buf).map_err(FilterError::Write)?;
            buf.clear();
        }
    }
    let report = scanner.finish(&mut buf)?;
    out.write_all(&buf).map_err(FilterError::Write)?;
    out.flush().map_err(FilterError::Write)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            database: "records".into(),
            role: "postgres".into(),
        }
    }

    fn run(script: &str) -> Result<(String, ScanReport), ScanError> {
        let mut out = Vec::new();
        match filter(script.as_bytes(), &mut out, &policy()) {
            Ok(r) => {
                let text = String::from_utf8(out).unwrap();
                let body = text.split_once('\n').unwrap().1.to_owned();
                Ok((body, r))
            }
            Err(FilterError::Scan(e)) => Err(e),
            Err(e) => panic!("{e}"),
        }
    }

    /// (script, Ok: none refused | Err: (line, part of the message))
    #[test]
    fn meta_commands_are_found_only_outside_quotes_comments_and_copy_data() {
        let cases: &[(&str, Option<(u64, &str)>)] = &[
            ("select 1;\n", None),
            ("\\! touch /tmp/x\n", Some((1, "`\\!`"))),
            ("select 1;\n\\o /tmp/out\nselect 2;\n", Some((2, "`\\o`"))),
            ("\\copy t from program 'id'\n", Some((1, "`\\copy`"))),
            ("\\i /etc/passwd\n", Some((1, "`\\i`"))),
            ("\\ir x.sql\n", Some((1, "`\\ir`"))),
            ("\\set x 1\n", Some((1, "`\\set`"))),
            ("select 1 \\gexec\n", Some((1, "`\\gexec`"))),
            ("select 1;  \\! id\n", Some((1, "`\\!`"))),
            ("select 1\\; select 2;\n", Some((1, "`\\;`"))),
            (
                "\\connect other_db\n",
                Some((1, "leaves the target database")),
            ),
            ("\\c postgres\n", Some((1, "leaves the target database"))),
            ("\\connect records\nselect 1;\n", None),
            ("\\c \"records\"\n", None),
            ("\\connect -reuse-previous=on \"dbname='records'\"\n", None),
            ("\\connect records `id`\n", Some((1, "leaves the target"))),
            ("\\restrict abc123\nselect 1;\n\\unrestrict abc123\n", None),
            ("\\restrict abc `id`\n", Some((1, "`\\restrict`"))),
            ("\\.\n", Some((1, "`\\.`"))),
            // Strings.
            ("select 'a \\! b';\n", None),
            ("select 'it''s \\! here';\n", None),
            ("select 'a\\\\';\n", None),
            ("select E'\\\\'; \\! id\n", Some((1, "`\\!`"))),
            (
                "select E'a\\'b';\n",
                Some((1, "backslash right before a quote")),
            ),
            (
                "select 'C:\\';\n",
                Some((1, "backslash right before a quote")),
            ),
            ("select 'multi\n\\! line';\n", None),
            ("select 'a' 'b'; \\o x\n", Some((1, "`\\o`"))),
            // Identifiers.
            ("select 1 as \"x\\y\";\n", None),
            ("select 1 as \"x\"\"\\!\";\n", None),
            // Dollar quotes.
            (
                "create function f() returns int language sql as $$ select 1 \\! $$;\n",
                None,
            ),
            (
                "do $body$ begin raise notice '$$ \\! '; end $body$;\n",
                None,
            ),
            ("select $a$ $b$ \\! $b$ $a$;\n", None),
            ("select $a$ x $a$; \\! id\n", Some((1, "`\\!`"))),
            ("select a$b$ \\! $b$;\n", Some((1, "`\\!`"))),
            ("select $1 \\! x;\n", Some((1, "`\\!`"))),
            // Comments.
            ("-- \\! id\nselect 1;\n", None),
            ("select 1; -- \\! id\n", None),
            ("/* \\! id */ select 1;\n", None),
            (
                "/* a /* nested \\! */ still \\! comment */ select 1;\n",
                None,
            ),
            ("/* a /* nested */ */ \\! id\n", Some((1, "`\\!`"))),
            ("select 1 /* x\n\\! y\n*/;\n", None),
            // COPY data.
            (
                "copy t (a, b) from stdin;\n1\t\\N\n\\! not a command\n\\.\nselect 1;\n",
                None,
            ),
            ("copy t from stdin;\n1\n\\.\n\\! id\n", Some((4, "`\\!`"))),
            (
                "copy a from stdin; copy b from stdin;\n1\n\\.\n2\n\\.\nselect 1;\n",
                None,
            ),
            ("copy t from '/etc/passwd';\n", Some((1, "server files"))),
            ("copy t to program 'id';\n", Some((1, "server files"))),
            (
                "copy (select 'from stdin') to stdout;\n",
                Some((1, "server files")),
            ),
            // psql variables do not confuse the scanner.
            ("select :foo, :'foo', :\"foo\", 1::int, a[1:2];\n", None),
            (
                "select :'x\\'; \\! id\n",
                Some((1, "backslash right before a quote")),
            ),
            // A BEGIN ATOMIC body: its semicolons do not end the statement.
            (
                "create function f() returns int language sql begin atomic select 1; select 2; end;\n",
                None,
            ),
            // Truncated scripts.
            ("select 'abc\n", Some((1, "inside a quoted string"))),
            ("select $$abc\n", Some((1, "dollar-quoted"))),
            ("/* abc\n", Some((1, "comment"))),
            ("copy t from stdin;\n1\n", Some((2, "COPY data"))),
            (
                "create table t (x int)\n",
                Some((1, "a statement (no `;`)")),
            ),
        ];
        for (script, want) in cases {
            let got = run(script);
            match (want, &got) {
                (None, Ok(_)) => {}
                (Some((line, needle)), Err(e)) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(needle),
                        "{script:?}: expected {needle:?} in {msg}"
                    );
                    let at_line = msg.starts_with(&format!("line {line}:"))
                        || msg.contains(&format!("line {line}:"));
                    assert!(at_line, "{script:?}: expected line {line} in {msg}");
                }
                _ => panic!("{script:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn role_statements_for_the_connecting_role_are_skipped_with_their_lines() {
        let script = "CREATE ROLE \"postgres\";\n\
                      ALTER ROLE \"postgres\" WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:x';\n\
                      CREATE ROLE app;\n\
                      ALTER ROLE app WITH LOGIN PASSWORD 'app-pw';\n\
                      alter user postgres\n  password 'new';\n\
                      ALTER ROLE current_user PASSWORD 'x'; select 'after';\n\
                      DROP ROLE IF EXISTS app2, postgres;\n\
                      GRANT app TO postgres;\n\
                      DROP USER MAPPING FOR postgres SERVER s;\n\
                      ALTER ROLE postgres2 PASSWORD 'x';\n";
        let (out, report) = run(script).unwrap();
        assert_eq!(
            report
                .skipped
                .iter()
                .map(|s| (s.line, s.statement.as_str()))
                .collect::<Vec<_>>(),
            [
                (1, "CREATE ROLE \"postgres\""),
                (2, "ALTER ROLE \"postgres\""),
                (5, "ALTER USER postgres"),
                (7, "ALTER ROLE current_user"),
                (8, "DROP ROLE postgres"),
            ]
        );
        assert_eq!(out.lines().count(), script.lines().count(), "{out}");
        assert!(!out.contains("SCRAM"), "{out}");
        assert!(!out.contains("'new'"), "{out}");
        assert!(out.contains("CREATE ROLE app;"), "{out}");
        assert!(out.contains("ALTER ROLE app WITH LOGIN"), "{out}");
        assert!(out.contains(" select 'after';"), "{out}");
        assert!(out.contains("GRANT app TO postgres;"), "{out}");
        assert!(out.contains("DROP USER MAPPING FOR postgres"), "{out}");
        assert!(out.contains("ALTER ROLE postgres2"), "{out}");
        // Nothing a skipped statement said reaches the report.
        assert!(!format!("{report:?}").contains("PASSWORD"));
    }

    #[test]
    fn the_output_keeps_everything_else_byte_for_byte_and_starts_restricted() {
        let script = "\\restrict k1\nSET standard_conforming_strings = on;\n\
                      \\connect records\n\
                      copy t from stdin;\n1\t\\N\n\\.\n\
                      create table x (a text default 'q''r');\n\\unrestrict k1\n";
        let mut out = Vec::new();
        let report = filter(script.as_bytes(), &mut out, &policy()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (first, body) = text.split_once('\n').unwrap();
        assert!(
            first.starts_with("\\restrict ") && first.len() > 20,
            "{first}"
        );
        assert_eq!(
            body,
            "\nSET standard_conforming_strings = on;\n\ncopy t from stdin;\n1\t\\N\n\\.\n\
             create table x (a text default 'q''r');\n\n"
        );
        assert_eq!(report.copy_blocks, 1);
        assert_eq!(report.lines, 8);
    }
}
