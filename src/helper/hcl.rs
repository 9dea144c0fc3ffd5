//! spiffe-helper's own file format, HCL, read by translating it into TOML
//! line for line: each top-level key lands on the line it was written on,
//! so the one validator in `config` (and its file:line:key errors) serves
//! both formats.
//!
//! spiffe-helper decodes with HCL 1, whose integers follow Go's base-0 rules:
//! `cert_file_mode = 0644` is octal. HCL 2 (what the parser reads) would
//! take it as decimal 644, so integers are re-read from their source text.

use std::fmt::Write as _;
use std::ops::Range;

use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Block, Structure};
use toml_writer::{ToTomlValue as _, TomlStringBuilder};

/// Why HCL text could not be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HclError {
    /// 1-based line of the offending text.
    pub line: usize,
    /// The top-level key, when the problem is inside one.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// How deeply brackets (`(`, `[`, `{`) may nest. spiffe-helper's settings
/// nest two deep (`jwt_svids = [{ ... }]`); the HCL parser backtracks
/// exponentially in the depth of nested expressions (`(a+b.c+(...`), so
/// 28 levels kept it busy for minutes.
const MAX_NESTING: usize = 8;

/// Translates spiffe-helper HCL into TOML with the same line numbers.
pub(super) fn to_toml(text: &str) -> Result<String, HclError> {
    check_nesting(text)?;
    let body = hcl_edit::parser::parse_body(text).map_err(|e| HclError {
        line: e.location().line(),
        key: None,
        message: e.message().to_owned(),
    })?;
    let mut out = Translation {
        source: text,
        toml: String::new(),
        line: 1,
    };
    for structure in body.iter() {
        let line = out.line_of(structure.span());
        match structure {
            Structure::Attribute(attribute) => {
                let key = attribute.key.as_str();
                let value = out.value(&attribute.value, key, line)?;
                out.emit(line, key, &value);
            }
            Structure::Block(block) => {
                let key = block.ident.as_str();
                let value = out.block(block, line)?;
                out.emit(line, key, &value);
            }
        }
    }
    Ok(out.toml)
}

struct Translation<'a> {
    source: &'a str,
    toml: String,
    /// The line `toml` is on now.
    line: usize,
}

impl Translation<'_> {
    fn line_of(&self, span: Option<Range<usize>>) -> usize {
        let start = span.map_or(0, |s| s.start).min(self.source.len());
        1 + self.source[..start].bytes().filter(|&b| b == b'\n').count()
    }

    /// Writes `key = value` on `line` (or the next free one).
    fn emit(&mut self, line: usize, key: &str, value: &str) {
        while self.line < line {
            self.toml.push('\n');
            self.line += 1;
        }
        let _ = writeln!(self.toml, "{} = {value}", toml_key(key));
        self.line += 1;
    }

    /// A block without labels is a table: `health_checks { ... }`.
    fn block(&self, block: &Block, line: usize) -> Result<String, HclError> {
        let key = block.ident.as_str();
        if !block.labels.is_empty() {
            return Err(error(line, key, "takes no labels (write `key { ... }`)"));
        }
        let mut fields = Vec::new();
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attribute) => {
                    let name = attribute.key.as_str();
                    let value = self.value(&attribute.value, name, line)?;
                    fields.push(format!("{} = {value}", toml_key(name)));
                }
                Structure::Block(inner) => {
                    let message = format!(
                        "holds a block {:?}; only `key = value` lines belong here",
                        inner.ident.as_str()
                    );
                    return Err(error(line, key, &message));
                }
            }
        }
        Ok(format!("{{ {} }}", fields.join(", ")))
    }

    /// One value as TOML inline syntax. `key` is the nearest key name, for
    /// the octal rule and for errors.
    fn value(&self, expr: &Expression, key: &str, line: usize) -> Result<String, HclError> {
        Ok(match expr {
            Expression::Bool(b) => b.value().to_string(),
            Expression::String(s) => toml_string(s.value()),
            Expression::Number(n) => {
                let literal = n.span().and_then(|s| self.source.get(s)).unwrap_or_default();
                match go_integer(literal) {
                    Some(i) => i.to_string(),
                    None if n.is_f64() => n.to_string(),
                    None => return Err(error(line, key, &format!("{literal:?} is not a number"))),
                }
            }
            Expression::Array(array) => {
                let items: Result<Vec<_>, _> = array.iter().map(|item| self.value(item, key, line)).collect();
                format!("[{}]", items?.join(", "))
            }
            Expression::Object(object) => {
                let mut fields = Vec::new();
                for (object_key, value) in object.iter() {
                    let name = match object_key {
                        ObjectKey::Ident(ident) => ident.as_str().to_owned(),
                        ObjectKey::Expression(Expression::String(s)) => s.value().clone(),
                        ObjectKey::Expression(_) => {
                            return Err(error(line, key, "object keys must be names or strings"));
                        }
                    };
                    let value = self.value(value.expr(), &name, line)?;
                    fields.push(format!("{} = {value}", toml_key(&name)));
                }
                format!("{{ {} }}", fields.join(", "))
            }
            Expression::Null(_) => {
                return Err(error(
                    line,
                    key,
                    "null is not a value here; leave the key out instead",
                ));
            }
            _ => {
                return Err(error(
                    line,
                    key,
                    "must be a literal (a string, number, boolean, list or object): \
                     spiffe-helper evaluates no expressions or interpolations",
                ));
            }
        })
    }
}

/// Refuses brackets nested deeper than [`MAX_NESTING`], before the parser
/// sees them. Counted over every character, in strings and comments too
/// (an interpolation in a string is an expression as well): no setting
/// needs brackets that deep, even inside a value.
fn check_nesting(text: &str) -> Result<(), HclError> {
    let mut depth: usize = 0;
    let mut line = 1;
    for byte in text.bytes() {
        match byte {
            b'\n' => line += 1,
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(HclError {
                        line,
                        key: None,
                        message: format!(
                            "brackets nested more than {MAX_NESTING} deep: spiffe-helper's settings nest two deep"
                        ),
                    });
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn error(line: usize, key: &str, message: &str) -> HclError {
    HclError {
        line,
        key: Some(key.to_owned()),
        message: message.to_owned(),
    }
}

/// An integer literal read as Go's `strconv.ParseInt(s, 0, 64)` reads it
/// (HCL 1's rule): `0x` hex, `0o` or a leading `0` octal, else decimal.
fn go_integer(literal: &str) -> Option<i64> {
    let (digits, radix) = if let Some(hex) = literal.strip_prefix("0x").or_else(|| literal.strip_prefix("0X"))
    {
        (hex, 16)
    } else if let Some(octal) = literal.strip_prefix("0o").or_else(|| literal.strip_prefix("0O")) {
        (octal, 8)
    } else if literal.len() > 1 && literal.starts_with('0') {
        (&literal[1..], 8)
    } else {
        (literal, 10)
    };
    i64::from_str_radix(digits, radix).ok()
}

/// A bare key when TOML allows it (spiffe-helper's keys all qualify), else
/// a quoted one.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        toml_string(key)
    }
}

/// A single-line TOML string: a string holding a newline (HCL takes one
/// in quotes) must not become a multi-line one, which would move every
/// later key down a line.
fn toml_string(text: &str) -> String {
    TomlStringBuilder::new(text).as_basic().to_toml_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz target `helper_config`: 28 nested expressions
    /// kept the HCL parser busy for minutes; brackets that deep are refused
    /// before it sees them.
    #[test]
    fn deeply_nested_brackets_are_refused_before_parsing() {
        let deep = format!("a = 1\ngert = {}x.\n", "(n+a.b+".repeat(28));
        let error = to_toml(&deep).unwrap_err();
        assert_eq!(error.line, 2);
        assert!(
            error.message.contains("nested more than 8 deep"),
            "{}",
            error.message
        );
        let shallow = format!("gert = {}1{}\n", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert!(to_toml(&shallow).is_ok());
    }

    /// Found by the fuzz target `helper_config`: a quoted string holding a
    /// newline became a TOML multi-line string, and the next key's error
    /// named a line past the end of the file.
    #[test]
    fn a_string_holding_a_newline_keeps_later_keys_on_their_lines() {
        let toml = to_toml("svid_file_name = \"a\nb\"\nsvid_key = \"k\"\n").unwrap();
        let lines: Vec<&str> = toml.lines().collect();
        assert_eq!(lines[0], r#"svid_file_name = "a\nb""#);
        assert_eq!(lines[2], r#"svid_key = "k""#, "{toml}");
    }

    #[test]
    fn spiffe_helper_readme_example_translates_line_for_line() {
        let hcl = r#"agent_address = "/tmp/spire-agent/public/api.sock"
cmd = "ghostunnel"
cmd_args = "server --listen localhost:8002 --allow-uri-san spiffe://example.org/Database"
cert_dir = "certs"
renew_signal = "SIGUSR1"
svid_file_name = "svid.pem"
svid_key_file_name = "svid_key.pem"
svid_bundle_file_name = "svid_bundle.pem"
jwt_svids = [{jwt_audience="your-audience",jwt_extra_audiences=["your-extra-audience-1", "your-extra-audience-2"], jwt_svid_file_name="jwt_svid.token"}]
jwt_bundle_file_name = "bundle.json"
cert_file_mode = 0444
key_file_mode = 0444
health_checks {
  listener_enabled = true
  bind_port = 8081
}
omit_expired = true
"#;
        let toml = to_toml(hcl).unwrap();
        let lines: Vec<&str> = toml.lines().collect();
        assert_eq!(lines[0], r#"agent_address = "/tmp/spire-agent/public/api.sock""#);
        assert_eq!(lines[10], "cert_file_mode = 292", "0444 is octal, as in HCL 1");
        assert_eq!(
            lines[12],
            "health_checks = { listener_enabled = true, bind_port = 8081 }"
        );
        assert_eq!(lines[16], "omit_expired = true", "later keys keep their lines");
        let table: toml::Table = toml.parse().unwrap();
        let jwt = &table["jwt_svids"][0];
        assert_eq!(
            jwt["jwt_extra_audiences"][1].as_str(),
            Some("your-extra-audience-2")
        );
    }

    #[test]
    fn integers_follow_go_base_zero() {
        assert_eq!(go_integer("0644"), Some(0o644));
        assert_eq!(go_integer("420"), Some(420));
        assert_eq!(go_integer("0"), Some(0));
        assert_eq!(go_integer("0x1ff"), Some(0o777));
        assert_eq!(go_integer("0999"), None);
    }

    #[test]
    fn expressions_and_labels_are_refused_with_their_line() {
        let err = to_toml("cert_dir = \"certs\"\ncmd = var.x\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (2, Some("cmd")));
        let err = to_toml("\nhealth_checks \"x\" {\n}\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (2, Some("health_checks")));
        let err = to_toml("a = \"unterminated\n").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn strings_are_escaped_for_toml() {
        let toml = to_toml(r#"cmd_args = "\"one arg\" C:\\x""#).unwrap();
        let table: toml::Table = toml.parse().unwrap();
        assert_eq!(table["cmd_args"].as_str(), Some(r#""one arg" C:\x"#));
    }
}
