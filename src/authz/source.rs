//! A `*.cedar` file cut into its policies, each with where it starts.
//!
//! Cedar's public API keeps no source position of a parsed policy, yet
//! attestd names every policy without an `@id` by `file:line`, and every
//! error by the line it is on. A policy ends at the first `;` outside a
//! string literal or a `//` comment (Cedar has no other place a `;` may
//! appear), so the file is cut there and each piece parsed on its own: an
//! error's offset within its piece then gives the line in the file.

/// One policy's text within its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The text, from the end of the previous policy through this one's
    /// `;` (leading blanks and comments included, so offsets into it map
    /// back to the file).
    pub text: &'a str,
    /// Byte offset of `text` in the file.
    pub offset: usize,
    /// Byte offset in the file of the policy's first token.
    pub start: usize,
}

/// The policies of `file`, in order. Trailing text without a `;` is a piece
/// too (Cedar then says what it lacks); trailing blanks and comments are
/// not.
pub fn pieces(file: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut piece_offset = 0;
    let mut first_token = None;
    let mut state = State::Code;
    let mut chars = file.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if let (State::Code, ';') = (state, c) {
            pieces.push(Piece {
                text: &file[piece_offset..=at],
                offset: piece_offset,
                start: first_token.unwrap_or(at),
            });
            piece_offset = at + 1;
            first_token = None;
            continue;
        }
        state = match (state, c) {
            (State::Code, '"') => State::String,
            (State::Code, '/') if chars.peek().is_some_and(|(_, next)| *next == '/') => State::Comment,
            (State::String, '\\') => State::Escape,
            (State::String, '"') | (State::Comment, '\n') => State::Code,
            (State::Escape, _) => State::String,
            (state, _) => state,
        };
        if first_token.is_none() && !c.is_whitespace() && matches!(state, State::Code | State::String) {
            first_token = Some(at);
        }
    }
    if let Some(start) = first_token {
        pieces.push(Piece {
            text: &file[piece_offset..],
            offset: piece_offset,
            start,
        });
    }
    pieces
}

/// Where the scanner is.
#[derive(Debug, Clone, Copy)]
enum State {
    Code,
    String,
    /// Just after a `\` in a string.
    Escape,
    /// In a `//` comment, until the end of the line.
    Comment,
}

/// Where the lines of a file start, to find the line of an offset without
/// rescanning the file (a file may hold thousands of policies).
#[derive(Debug, Clone)]
pub struct Lines(Vec<usize>);

impl Lines {
    /// The line breaks of `file`.
    pub fn new(file: &str) -> Self {
        Self(file.match_indices('\n').map(|(at, _)| at).collect())
    }

    /// The 1-based line of byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        self.0.partition_point(|&newline| newline < offset) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_semicolons_outside_strings_and_comments() {
        let file = "// a comment; not an end\npermit(principal, action, resource)\n  when { context.args.getTag(\"k\") == \"a;b\\\";c\" };\n\n@id(\"second\")\nforbid(principal, action, resource); // trailing; comment\n";
        let pieces = pieces(file);
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert!(pieces[0].text.starts_with("// a comment"));
        assert!(pieces[0].text.ends_with("\"a;b\\\";c\" };"));
        let lines = Lines::new(file);
        assert_eq!(lines.line_of(pieces[0].start), 2);
        assert_eq!(
            &file[pieces[1].offset..pieces[1].offset + pieces[1].text.len()],
            pieces[1].text
        );
        assert_eq!(lines.line_of(pieces[1].start), 5);
        assert!(pieces[1].text.trim_start().starts_with("@id(\"second\")"));
    }

    #[test]
    fn lines_of_offsets() {
        let lines = Lines::new("a\nbc\n\nd");
        let found: Vec<usize> = (0..8).map(|at| lines.line_of(at)).collect();
        assert_eq!(found, [1, 1, 2, 2, 2, 3, 4, 4]);
    }

    #[test]
    fn trailing_text_without_a_semicolon_is_a_piece_and_blank_files_have_none() {
        assert!(pieces("  \n// only a comment\n").is_empty());
        let file = "permit(principal, action, resource);\n\npermit(principal";
        let pieces = pieces(file);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[1].text, "\n\npermit(principal");
        assert_eq!(Lines::new(file).line_of(pieces[1].start), 3);
    }
}
