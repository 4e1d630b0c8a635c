//! The YAML that `inject` reads and writes: a stream split into documents by
//! line (so a document it leaves alone is written back as its own text, comments
//! and all), a value tree built from saphyr-parser's events, and a block-style
//! writer for the documents it changes.
//!
//! The tree keeps each scalar's text and quoting as written rather than a typed
//! value: kubectl reads YAML 1.1 (`0440` is octal, `yes` is a boolean) while
//! YAML 1.2 readers disagree, so the only safe way to write back a value we did
//! not change is the way it was written.

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

/// How a scalar was written, or `Auto` for one made here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Made by `inject`: written plain where that reads back as the same string, else quoted.
    Auto,
    /// Plain (unquoted): written back as it was, so it keeps its YAML 1.1 meaning.
    Plain,
    /// Single-quoted.
    Single,
    /// Double-quoted.
    Double,
    /// A literal or folded block.
    Block,
}

/// A YAML node.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// A scalar: its text (after unquoting), how it was written, and its tag if any.
    Scalar {
        /// The text.
        value: String,
        /// How it was written.
        style: Style,
        /// An explicit tag (`!!str`), as written.
        tag: Option<String>,
    },
    /// A sequence; `flow` when it was written `[a, b]`.
    Seq {
        /// The items.
        items: Vec<Node>,
        /// Written in flow style.
        flow: bool,
    },
    /// A mapping with string keys, in order; `flow` when it was written `{a: b}`.
    Map {
        /// The entries.
        entries: Vec<(String, Node)>,
        /// Written in flow style.
        flow: bool,
        /// Keys written plain that a plain key made here could not be (`on`,
        /// `1`): written plain again, to keep the meaning they had.
        plain_keys: Vec<String>,
    },
}

impl Node {
    /// A string made here.
    pub fn str(s: impl Into<String>) -> Node {
        Node::Scalar {
            value: s.into(),
            style: Style::Auto,
            tag: None,
        }
    }

    /// A number or boolean made here (written plain).
    pub fn plain(s: impl ToString) -> Node {
        Node::Scalar {
            value: s.to_string(),
            style: Style::Plain,
            tag: None,
        }
    }

    /// A block mapping made here.
    pub fn map(entries: Vec<(&str, Node)>) -> Node {
        Node::Map {
            entries: entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            flow: false,
            plain_keys: Vec::new(),
        }
    }

    /// A block sequence made here.
    pub fn seq(items: Vec<Node>) -> Node {
        Node::Seq { items, flow: false }
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map { entries, .. } => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under `key` of a mapping, to change.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map { entries, .. } => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` of a mapping (in place if present, else appended); a no-op on other nodes.
    pub fn set(&mut self, key: &str, value: Node) {
        if let Node::Map { entries, .. } = self {
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => entries.push((key.to_owned(), value)),
            }
        }
    }

    /// The mapping under `key`, created empty when absent or null.
    pub fn map_at(&mut self, key: &str) -> Option<&mut Node> {
        if !matches!(self.get(key), Some(Node::Map { .. })) {
            if self.get(key).is_some_and(|v| !v.is_null()) {
                return None;
            }
            self.set(key, Node::map(Vec::new()));
        }
        self.get_mut(key)
    }

    /// The sequence under `key`, created empty when absent or null.
    pub fn seq_at(&mut self, key: &str) -> Option<&mut Vec<Node>> {
        if !matches!(self.get(key), Some(Node::Seq { .. })) {
            if self.get(key).is_some_and(|v| !v.is_null()) {
                return None;
            }
            self.set(key, Node::seq(Vec::new()));
        }
        match self.get_mut(key) {
            Some(Node::Seq { items, .. }) => Some(items),
            _ => None,
        }
    }

    /// A scalar's text (any style), `None` for a collection or a null.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar { .. } if self.is_null() => None,
            Node::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// An integer written plain (`8080`), as YAML and JSON read it.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Node::Scalar {
                value,
                style: Style::Plain,
                tag: None,
            } => value.parse().ok(),
            _ => None,
        }
    }

    /// A sequence's items.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match self {
            Node::Seq { items, .. } => Some(items),
            _ => None,
        }
    }

    /// A sequence's items, to change.
    pub fn as_seq_mut(&mut self) -> Option<&mut Vec<Node>> {
        match self {
            Node::Seq { items, .. } => Some(items),
            _ => None,
        }
    }

    /// Whether this is a mapping.
    pub fn is_map(&self) -> bool {
        matches!(self, Node::Map { .. })
    }

    /// A plain `null`, `~` or nothing: what YAML reads as null.
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { value, style: Style::Plain, tag: None }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// Forgets how scalars and collections were written (for JSON input, whose
    /// quotes and brackets say nothing about the YAML a reader wants to see).
    pub fn restyle(&mut self) {
        match self {
            Node::Scalar { style, .. } => {
                if *style != Style::Plain {
                    *style = Style::Auto;
                }
            }
            Node::Seq { items, flow } => {
                *flow = false;
                items.iter_mut().for_each(Node::restyle);
            }
            Node::Map { entries, flow, .. } => {
                *flow = false;
                entries.iter_mut().for_each(|(_, v)| v.restyle());
            }
        }
    }
}

/// Why a document is not YAML, and where (1-based line and column in its file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The line, 1-based, counted from the start of the piece parsed.
    pub line: usize,
    /// The column, 1-based.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// One document's lines of a stream: its `---` line if any, comments and all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The text, whole lines.
    pub text: &'a str,
    /// How many lines of the stream come before it.
    pub first_line: usize,
}

/// Whether a line is a document marker: `---` or `...` at the start of a line,
/// alone or followed by white space. YAML forbids such a line inside any
/// scalar, so splitting on it needs no parser.
fn marker(line: &str, m: &str) -> bool {
    line.strip_prefix(m)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Splits a stream into pieces of at most one document each: a piece begins at
/// a `---` line and ends before the next one, or after a `...` line.
pub fn split(text: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 0, 0);
    // Directives (`%YAML 1.2`) belong to the `---` that follows them.
    let mut directives = false;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let directive = line.starts_with('%');
        if (directive || marker(line, "---")) && !directives && offset > start {
            pieces.push(Piece {
                text: &text[start..offset],
                first_line: start_line,
            });
            (start, start_line) = (offset, n);
        }
        if directive {
            directives = true;
        } else if marker(line, "---") {
            directives = false;
        }
        offset += line.len();
        if marker(line, "...") {
            pieces.push(Piece {
                text: &text[start..offset],
                first_line: start_line,
            });
            (start, start_line) = (offset, n + 1);
        }
    }
    if offset > start {
        pieces.push(Piece {
            text: &text[start..offset],
            first_line: start_line,
        });
    }
    pieces
}

/// Half-built collections while events arrive.
enum Frame {
    Seq(Vec<Node>, bool, usize),
    Map(
        Vec<(String, Node)>,
        Option<String>,
        bool,
        usize,
        Vec<String>,
    ),
}

/// Parses a piece into its document: `None` when it holds only comments.
pub fn parse(text: &str) -> Result<Option<Node>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let at = |span: &Span, message: String| ParseError {
        line: span.start.line(),
        column: span.start.col() + 1,
        message,
    };
    let mut anchors: Vec<Option<Node>> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut docs: Vec<Node> = Vec::new();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| ParseError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_owned(),
        })?;
        let flow = || matches!(chars.get(span.start.index()), Some('[' | '{'));
        let node = match event {
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq(Vec::new(), flow(), anchor));
                continue;
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map(Vec::new(), None, flow(), anchor, Vec::new()));
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(items, flow, anchor)) => {
                    remember(&mut anchors, anchor, Node::Seq { items, flow })
                }
                _ => return Err(at(&span, "unbalanced sequence".into())),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(entries, None, flow, anchor, plain_keys)) => remember(
                    &mut anchors,
                    anchor,
                    Node::Map {
                        entries,
                        flow,
                        plain_keys,
                    },
                ),
                _ => return Err(at(&span, "unbalanced mapping".into())),
            },
            Event::Scalar(value, style, anchor, tag) => {
                let style = match style {
                    ScalarStyle::Plain => Style::Plain,
                    ScalarStyle::SingleQuoted => Style::Single,
                    ScalarStyle::DoubleQuoted => Style::Double,
                    ScalarStyle::Literal | ScalarStyle::Folded => Style::Block,
                };
                let node = Node::Scalar {
                    value: value.into_owned(),
                    style,
                    tag: tag.map(|t| tag_text(&t)),
                };
                remember(&mut anchors, anchor, node)
            }
            Event::Alias(id) => match anchors.get(id).cloned().flatten() {
                Some(node) => node,
                None => return Err(at(&span, "an alias to an unknown anchor".into())),
            },
            Event::DocumentStart(_) => {
                stack.clear();
                continue;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
        };
        match stack.last_mut() {
            None => docs.push(node),
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(entries, key @ None, flow, _, plain_keys)) => {
                let Node::Scalar { value, style, .. } = node else {
                    return Err(at(&span, "a mapping key must be a scalar".into()));
                };
                if entries.iter().any(|(k, _)| *k == value) {
                    return Err(at(&span, format!("duplicate key {value}")));
                }
                if style == Style::Plain && !plain_ok(&value, *flow) {
                    plain_keys.push(value.clone());
                }
                *key = Some(value);
            }
            Some(Frame::Map(entries, key @ Some(_), ..)) => {
                if let Some(k) = key.take() {
                    entries.push((k, node));
                }
            }
        }
    }
    // A piece of comments only still yields one empty document from the parser.
    let meaningful = text.lines().any(|l| {
        let t = l.trim_start();
        !(t.is_empty() || t.starts_with('#') || marker(l, "---") || marker(l, "..."))
    });
    if docs.len() > 1 {
        return Err(ParseError {
            line: 1,
            column: 1,
            message: "more than one document: separate them with a --- line".into(),
        });
    }
    Ok(docs.pop().filter(|_| meaningful))
}

fn remember(anchors: &mut Vec<Option<Node>>, anchor: usize, node: Node) -> Node {
    if anchor > 0 {
        if anchors.len() <= anchor {
            anchors.resize(anchor + 1, None);
        }
        anchors[anchor] = Some(node.clone());
    }
    node
}

fn tag_text(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else if tag.handle.starts_with('!') {
        format!("{}{}", tag.handle, tag.suffix)
    } else {
        format!("!<{}{}>", tag.handle, tag.suffix)
    }
}

// ------------------------------------------------------------------ writing

/// Writes a document in block style: sequences indented under their key, as
/// this repository's manifests are.
pub fn write(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map { entries, .. } if !entries.is_empty() => write_map(&mut out, node, 0, false),
        Node::Seq { items, .. } if !items.is_empty() => write_seq(&mut out, items, 0, false),
        other => {
            out.push_str(&inline(other).unwrap_or_else(|| scalar(other, false, 0)));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &Node, indent: usize, first_inline: bool) {
    let Node::Map {
        entries,
        plain_keys,
        ..
    } = map
    else {
        return;
    };
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 || !first_inline {
            push_indent(out, indent);
        }
        out.push_str(&key_text(key, plain_keys));
        out.push(':');
        write_value(out, value, indent, indent + 2);
    }
}

fn write_seq(out: &mut String, items: &[Node], indent: usize, first_inline: bool) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !first_inline {
            push_indent(out, indent);
        }
        out.push('-');
        match item {
            Node::Map { .. } if inline(item).is_none() => {
                out.push(' ');
                write_map(out, item, indent + 2, true);
            }
            Node::Seq { items, .. } if inline(item).is_none() => {
                out.push(' ');
                write_seq(out, items, indent + 2, true);
            }
            _ => write_value(out, item, indent, indent + 2),
        }
    }
}

/// Writes what follows `key:` or `-`: a space and an inline value, or a
/// nested block on the next lines (mappings at `indent + 2`; sequences under
/// a key at `seq_indent`).
fn write_value(out: &mut String, value: &Node, indent: usize, seq_indent: usize) {
    if let Some(text) = inline(value) {
        out.push(' ');
        out.push_str(&text);
        out.push('\n');
        return;
    }
    match value {
        Node::Map { .. } => {
            out.push('\n');
            write_map(out, value, indent + 2, false);
        }
        Node::Seq { items, .. } => {
            out.push('\n');
            write_seq(out, items, seq_indent, false);
        }
        Node::Scalar { .. } => {
            out.push(' ');
            out.push_str(&scalar(value, false, indent + 2));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
    }
}

fn push_indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A value that fits on its line: a one-line scalar, an empty collection, or a
/// short collection of scalars that was written in flow style.
fn inline(node: &Node) -> Option<String> {
    let text = match node {
        Node::Scalar { value, .. } if value.contains('\n') => return None,
        Node::Scalar { .. } => scalar(node, false, 0),
        Node::Seq { items, .. } if items.is_empty() => "[]".into(),
        Node::Map { entries, .. } if entries.is_empty() => "{}".into(),
        Node::Seq { items, flow: true } => {
            let parts: Option<Vec<String>> = items.iter().map(flow_scalar).collect();
            format!("[{}]", parts?.join(", "))
        }
        Node::Map {
            entries,
            flow: true,
            plain_keys,
        } => {
            let parts: Option<Vec<String>> = entries
                .iter()
                .map(|(k, v)| Some(format!("{}: {}", flow_key(k, plain_keys), flow_scalar(v)?)))
                .collect();
            format!("{{{}}}", parts?.join(", "))
        }
        _ => return None,
    };
    (text.len() <= 100).then_some(text)
}

fn flow_scalar(node: &Node) -> Option<String> {
    match node {
        Node::Scalar { value, .. } if !value.contains('\n') => Some(scalar(node, true, 0)),
        _ => None,
    }
}

fn flow_key(key: &str, plain_keys: &[String]) -> String {
    if plain_ok(key, true) || plain_keys.iter().any(|k| k == key) {
        key.to_owned()
    } else {
        single_or_double(key)
    }
}

fn key_text(key: &str, plain_keys: &[String]) -> String {
    if plain_ok(key, false) || plain_keys.iter().any(|k| k == key) {
        key.to_owned()
    } else {
        single_or_double(key)
    }
}

/// A scalar's text in the style it had, or the plainest that reads back the
/// same; a multi-line string becomes a literal block indented by `indent`.
fn scalar(node: &Node, flow: bool, indent: usize) -> String {
    let Node::Scalar { value, style, tag } = node else {
        return String::new();
    };
    let text = match style {
        // Written plain before, so plain again means the same to any reader.
        Style::Plain if !value.contains('\n') => value.clone(),
        Style::Single if printable(value) && !value.contains('\n') => single(value),
        Style::Double => double(value),
        _ if value.contains('\n') => literal(value, indent).unwrap_or_else(|| double(value)),
        _ if plain_ok(value, flow) => value.clone(),
        _ => single_or_double(value),
    };
    match tag {
        Some(t) => format!("{t} {text}"),
        None => text,
    }
}

fn printable(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\n')
}

fn single_or_double(s: &str) -> String {
    if printable(s) && !s.contains('\n') {
        single(s)
    } else {
        double(s)
    }
}

fn single(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn double(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `|`, `|-` or `|+` and the lines; `None` where a literal block cannot hold
/// the text as it is (leading white space on its first line, control characters).
fn literal(s: &str, indent: usize) -> Option<String> {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    let first = body.lines().find(|l| !l.is_empty())?;
    if first.starts_with([' ', '\t']) || s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return None;
    }
    let mut out = String::from(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    out.push('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            push_indent(&mut out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    Some(out)
}

/// Whether `s` written plain reads back as the same string, to YAML 1.1
/// (kubectl, PyYAML) and 1.2 readers alike: nothing that could be a null, a
/// boolean, a number or a date, no indicator where YAML would see one.
fn plain_ok(s: &str, flow: bool) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let second = s.chars().nth(1);
    const RESERVED: &[&str] = &[
        "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        "=", "<<", ".inf", ".Inf", ".INF", "-.inf", "-.Inf", "-.INF", "+.inf", ".nan", ".NaN",
        ".NAN",
    ];
    // Wider than the YAML 1.1 and 1.2 patterns for numbers, dates and times
    // (`1_000`, `0x1F`, `1:20`, `2001-12-14t21:59:43.10z`): a string made of
    // their characters is quoted, `10s` and `64Mi` are not.
    let starts_numeric = first.is_ascii_digit()
        || (matches!(first, '+' | '-' | '.')
            && second.is_some_and(|c| c.is_ascii_digit() || c == '.'));
    let numberish = starts_numeric
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || "._:+-xXoOtTzZ ".contains(c));
    let indicator = matches!(
        first,
        '?' | ':'
            | ','
            | '['
            | ']'
            | '{'
            | '}'
            | '#'
            | '&'
            | '*'
            | '!'
            | '|'
            | '>'
            | '\''
            | '"'
            | '%'
            | '@'
            | '`'
    ) || (first == '-' && second.is_none_or(|c| c == ' '));
    !(RESERVED.contains(&s)
        || numberish
        || indicator
        || s.starts_with([' ', '\t'])
        || s.ends_with([' ', '\t', ':'])
        || s.contains(": ")
        || s.contains(" #")
        || s.contains(['\t', '\n', '\r'])
        || s.chars().any(char::is_control)
        || (flow && s.contains([',', '[', ']', '{', '}'])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        match parse(text) {
            Ok(Some(n)) => n,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn split_keeps_every_byte_and_cuts_at_markers_only() {
        let text =
            "# head\na: 1\n---\nb: |\n  --- not a marker, indented\n--- # c\nc: 3\n...\n# after\n";
        let pieces = split(text);
        let joined: String = pieces.iter().map(|p| p.text).collect();
        assert_eq!(joined, text);
        let texts: Vec<&str> = pieces.iter().map(|p| p.text).collect();
        assert_eq!(
            texts,
            [
                "# head\na: 1\n",
                "---\nb: |\n  --- not a marker, indented\n",
                "--- # c\nc: 3\n...\n",
                "# after\n"
            ]
        );
        assert_eq!(
            pieces.iter().map(|p| p.first_line).collect::<Vec<_>>(),
            [0, 2, 5, 8]
        );
        assert!(split("----\na: 1\n").len() == 1, "---- is no marker");
        let texts: Vec<&str> = split("# c\n%YAML 1.2\n---\na: 1\n")
            .iter()
            .map(|p| p.text)
            .collect();
        assert_eq!(texts, ["# c\n", "%YAML 1.2\n---\na: 1\n"]);
    }

    #[test]
    fn comments_only_is_no_document() {
        assert_eq!(parse("# nothing\n\n---\n"), Ok(None));
        assert_eq!(parse(""), Ok(None));
    }

    #[test]
    fn scalars_keep_how_they_were_written() {
        // kubectl reads 0440 as octal and yes as true: both must stay as written.
        let text = "mode: 0440\nflag: yes\ns: 'it''s'\nd: \"a\\tb\"\nn: 8080\nq: \"8080\"\nz: ~\n";
        let node = one(text);
        assert_eq!(write(&node), text);
        assert_eq!(node.get("n").and_then(Node::as_int), Some(8080));
        assert_eq!(node.get("q").and_then(Node::as_int), None);
        assert_eq!(node.get("q").and_then(Node::as_str), Some("8080"));
        assert!(node.get("z").is_some_and(Node::is_null));
    }

    #[test]
    fn strings_made_here_are_quoted_only_where_needed() {
        let node = Node::map(vec![
            ("a", Node::str("--upstream=http://127.0.0.1:8080")),
            ("b", Node::str("1")),
            ("c", Node::str("yes")),
            ("d", Node::str("100m")),
            ("d2", Node::str("0x1F")),
            ("d3", Node::str("2001-12-14t21:59:43.10z")),
            ("e", Node::str("a: b")),
            ("f", Node::str("")),
            ("g", Node::str("line 1\nline 2\n")),
            ("h", Node::str("tab\there")),
            ("i", Node::str("-")),
        ]);
        assert_eq!(
            write(&node),
            "a: --upstream=http://127.0.0.1:8080\nb: '1'\nc: 'yes'\nd: 100m\nd2: '0x1F'\nd3: '2001-12-14t21:59:43.10z'\ne: 'a: b'\nf: ''\n\
             g: |\n  line 1\n  line 2\nh: \"tab\\there\"\ni: '-'\n"
        );
    }

    #[test]
    fn layout_follows_the_repository_style() {
        let text =
            "spec:\n  containers:\n    - name: app\n      args:\n        - -x\n      ports: []\n  \
                    drop: [\"ALL\"]\n  sel: {a: b}\n  list:\n    - - 1\n      - 2\n";
        assert_eq!(write(&one(text)), text);
    }

    #[test]
    fn block_scalars_round_trip() {
        for text in [
            "s: |\n  a\n\n  b\n",
            "s: |-\n  a\n  b\n",
            "s: |+\n  a\n\n\nt: 1\n",
            "- |\n  x\n- y\n",
        ] {
            let node = one(text);
            let again = one(&write(&node));
            assert_eq!(again, node, "{text:?} -> {:?}", write(&node));
        }
        // Folded text is kept as its value, written as a literal block.
        assert_eq!(write(&one("s: >\n  a\n  b\n")), "s: |\n  a b\n");
    }

    #[test]
    fn json_reads_as_yaml_and_restyles_to_block() {
        let mut node =
            one("{\"kind\": \"Pod\", \"n\": 1, \"on\": 2, \"l\": [\"a\", true], \"e\": {}}");
        node.restyle();
        // Quoted keys that YAML 1.1 would read as booleans stay quoted.
        assert_eq!(
            write(&node),
            "kind: Pod\n'n': 1\n'on': 2\nl:\n  - a\n  - true\ne: {}\n"
        );
    }

    #[test]
    fn aliases_expand_and_errors_have_positions() {
        let node = one("a: &x {k: v}\nb: *x\n");
        assert_eq!(node.get("b"), node.get("a"));
        let e = parse("a: 1\nb: [1, 2\n").err();
        assert_eq!(e.as_ref().map(|e| e.line), Some(3));
        let e = parse("a: 1\na: 2\n").err();
        assert_eq!(
            e.map(|e| (e.line, e.message)),
            Some((2, "duplicate key a".to_owned()))
        );
    }
}
