//! The rule language: small, positive and deterministic. A rule says when a write to a
//! replicated table is allowed (see docs/RULES.md):
//!
//! ```text
//! rule       := disjunct
//! disjunct   := conjunct ("or" conjunct)*
//! conjunct   := atom ("and" atom)*
//! atom       := "true" | "(" disjunct ")" | exists | comparison
//! exists     := "exists" "(" table "where" disjunct ")"
//! comparison := operand ("=" | "<>" | "<" | "<=" | ">" | ">=") operand
//! operand    := "new" "." column | "old" "." column | "$author"
//!             | table "." column | column          -- inside exists: the scanned table's row
//!             | 'string' | number | "true" | "false"
//! ```
//!
//! Keywords and unquoted names are case-insensitive (folded to lower case, as SQL does);
//! `"Quoted"` names keep their case. There is no negation, so a rule can only become true
//! when more data arrives: that is what keeps verdicts monotone.

use std::fmt;

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A value a comparison reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A column of the row being written, after the write.
    New(String),
    /// A column of the row being written, before the write.
    Old(String),
    /// The key id of the entry's author.
    Author,
    /// A column of the row an `exists` is scanning.
    Scanned(String),
    /// A string literal.
    Text(String),
    /// A numeric literal, kept as written (compared as a decimal).
    Number(String),
    Bool(bool),
}

/// A parsed rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    True,
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Compare { left: Operand, op: CmpOp, right: Operand },
    Exists { table: String, condition: Box<Rule> },
}

/// The kind of a rule error; the SQL edge maps it to a SQLSTATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleErrorKind {
    /// Bad syntax (42601).
    Syntax,
    /// A table that is not replicated in the group (42P01 is "undefined table"; the issue
    /// asks for 42703 or 42601, so the edge reports 42703 for names it cannot resolve).
    UnknownTable,
    /// A column the table does not have (42703).
    UnknownColumn,
}

/// Why a rule was refused, and where (1-based character position in the rule text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at position {position} of the rule")]
pub struct RuleError {
    pub kind: RuleErrorKind,
    pub position: usize,
    pub message: String,
}

/// What a rule may name, for checking it when it is declared.
pub trait RuleScope {
    /// Columns of the table the rule guards (for `new.` and `old.`).
    fn target_columns(&self) -> &[String];
    /// Columns of another replicated table of the group, or `None` if it is not one.
    fn table_columns(&self, table: &str) -> Option<Vec<String>>;
}

/// Which operation a rule guards: it decides whether `new.` and `old.` make sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }

    /// The operation [`Operation::name`] names.
    pub fn from_name(name: &str) -> Option<Operation> {
        [Operation::Insert, Operation::Update, Operation::Delete].into_iter().find(|o| o.name() == name)
    }
}

impl Rule {
    /// Adds to `out` the tables this rule's `exists` clauses scan.
    pub fn scanned_tables(&self, out: &mut std::collections::BTreeSet<String>) {
        match self {
            Rule::True | Rule::Compare { .. } => {}
            Rule::And(rules) | Rule::Or(rules) => rules.iter().for_each(|r| r.scanned_tables(out)),
            Rule::Exists { table, condition } => {
                out.insert(table.clone());
                condition.scanned_tables(out);
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Quoted(String),
    Str(String),
    Num(String),
    Author,
    Dot,
    LParen,
    RParen,
    Op(CmpOp),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "{s}"),
            Tok::Quoted(s) => write!(f, "\"{s}\""),
            Tok::Str(s) => write!(f, "'{s}'"),
            Tok::Num(s) => write!(f, "{s}"),
            Tok::Author => write!(f, "$author"),
            Tok::Dot => write!(f, "."),
            Tok::LParen => write!(f, "("),
            Tok::RParen => write!(f, ")"),
            Tok::Op(op) => write!(f, "{}", op.symbol()),
            Tok::End => write!(f, "end of rule"),
        }
    }
}

fn syntax(position: usize, message: impl Into<String>) -> RuleError {
    RuleError { kind: RuleErrorKind::Syntax, position, message: message.into() }
}

/// Splits rule text into tokens with their 1-based character positions.
fn lex(text: &str) -> Result<Vec<(Tok, usize)>, RuleError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let tok = match c {
            '.' => {
                i += 1;
                Tok::Dot
            }
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            '=' => {
                i += 1;
                Tok::Op(CmpOp::Eq)
            }
            '<' | '>' | '!' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('<', Some('=')) => (CmpOp::Le, 2),
                    ('<', Some('>')) => (CmpOp::Ne, 2),
                    ('<', _) => (CmpOp::Lt, 1),
                    ('>', Some('=')) => (CmpOp::Ge, 2),
                    ('>', _) => (CmpOp::Gt, 1),
                    ('!', Some('=')) => (CmpOp::Ne, 2),
                    _ => return Err(syntax(pos, "unexpected character '!' (use <> for not equal)")),
                };
                i += len;
                Tok::Op(op)
            }
            '\'' | '"' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(syntax(
                                pos,
                                format!("unterminated {}", if quote == '\'' { "string" } else { "quoted name" }),
                            ))
                        }
                        Some(&q) if q == quote => {
                            if chars.get(i + 1) == Some(&quote) {
                                s.push(quote);
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                if quote == '\'' {
                    Tok::Str(s)
                } else if s.is_empty() {
                    return Err(syntax(pos, "empty quoted name"));
                } else {
                    Tok::Quoted(s)
                }
            }
            '$' => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let word: String = chars[start..j].iter().collect::<String>().to_lowercase();
                if word != "author" {
                    return Err(syntax(pos, format!("unknown parameter ${word}: the only parameter is $author")));
                }
                i = j;
                Tok::Author
            }
            c if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let s: String = chars[start..i].iter().collect();
                if s.matches('.').count() > 1 || s.ends_with('.') {
                    return Err(syntax(pos, format!("malformed number {s}")));
                }
                Tok::Num(s)
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                Tok::Ident(chars[start..i].iter().collect::<String>().to_lowercase())
            }
            other => return Err(syntax(pos, format!("unexpected character {other:?}"))),
        };
        out.push((tok, pos));
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

struct Parser<'a, S: RuleScope + ?Sized> {
    toks: Vec<(Tok, usize)>,
    at: usize,
    scope: &'a S,
    operation: Operation,
    /// The table the innermost `exists` scans.
    scanning: Vec<(String, Vec<String>)>,
}

const KEYWORDS: &[&str] = &["and", "or", "exists", "where", "true", "false", "new", "old"];

impl<S: RuleScope + ?Sized> Parser<'_, S> {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn pos(&self) -> usize {
        self.toks[self.at].1
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(w) if w == kw)
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<(), RuleError> {
        let (t, pos) = self.next();
        if t == want {
            Ok(())
        } else {
            Err(syntax(pos, format!("expected {what}, found {t}")))
        }
    }

    fn name(&mut self, what: &str) -> Result<(String, usize), RuleError> {
        match self.next() {
            (Tok::Ident(w), pos) if !KEYWORDS.contains(&w.as_str()) => Ok((w, pos)),
            (Tok::Quoted(w), pos) => Ok((w, pos)),
            (t, pos) => Err(syntax(pos, format!("expected {what}, found {t}"))),
        }
    }

    fn disjunct(&mut self) -> Result<Rule, RuleError> {
        let mut parts = vec![self.conjunct()?];
        while self.is_keyword("or") {
            self.next();
            parts.push(self.conjunct()?);
        }
        Ok(if parts.len() == 1 { parts.pop().unwrap_or(Rule::True) } else { Rule::Or(parts) })
    }

    fn conjunct(&mut self) -> Result<Rule, RuleError> {
        let mut parts = vec![self.atom()?];
        while self.is_keyword("and") {
            self.next();
            parts.push(self.atom()?);
        }
        Ok(if parts.len() == 1 { parts.pop().unwrap_or(Rule::True) } else { Rule::And(parts) })
    }

    fn atom(&mut self) -> Result<Rule, RuleError> {
        if self.is_keyword("true") && !matches!(self.toks.get(self.at + 1), Some((Tok::Op(_), _))) {
            self.next();
            return Ok(Rule::True);
        }
        if *self.peek() == Tok::LParen {
            self.next();
            let inner = self.disjunct()?;
            self.expect(Tok::RParen, "')'")?;
            return Ok(inner);
        }
        if self.is_keyword("exists") {
            self.next();
            self.expect(Tok::LParen, "'(' after exists")?;
            let (table, pos) = self.name("a table name")?;
            let columns = self.scope.table_columns(&table).ok_or_else(|| RuleError {
                kind: RuleErrorKind::UnknownTable,
                position: pos,
                message: format!("table {table:?} is not replicated in this group"),
            })?;
            if !self.is_keyword("where") {
                return Err(syntax(self.pos(), format!("expected where, found {}", self.peek())));
            }
            self.next();
            self.scanning.push((table.clone(), columns));
            let condition = self.disjunct();
            self.scanning.pop();
            let condition = condition?;
            self.expect(Tok::RParen, "')' closing exists")?;
            return Ok(Rule::Exists { table, condition: Box::new(condition) });
        }
        let left = self.operand()?;
        let op = match self.next() {
            (Tok::Op(op), _) => op,
            (t, pos) => return Err(syntax(pos, format!("expected a comparison operator (= <> < <= > >=), found {t}"))),
        };
        let right = self.operand()?;
        Ok(Rule::Compare { left, op, right })
    }

    fn column_of(&self, columns: &[String], table: &str, col: String, pos: usize) -> Result<String, RuleError> {
        if columns.contains(&col) {
            Ok(col)
        } else {
            Err(RuleError {
                kind: RuleErrorKind::UnknownColumn,
                position: pos,
                message: format!("column {col:?} does not exist in {table}"),
            })
        }
    }

    fn operand(&mut self) -> Result<Operand, RuleError> {
        let (tok, pos) = self.next();
        match tok {
            Tok::Author => Ok(Operand::Author),
            Tok::Str(s) => Ok(Operand::Text(s)),
            Tok::Num(n) => Ok(Operand::Number(n)),
            Tok::Ident(w) if w == "true" || w == "false" => Ok(Operand::Bool(w == "true")),
            Tok::Ident(w) if w == "new" || w == "old" => {
                let allowed =
                    !matches!((w.as_str(), self.operation), ("new", Operation::Delete) | ("old", Operation::Insert));
                if !allowed {
                    return Err(syntax(pos, format!("{w}. is not available in {} rules", self.operation.name())));
                }
                self.expect(Tok::Dot, &format!("'.' after {w}"))?;
                let (col, cpos) = self.name("a column name")?;
                let col = self.column_of(self.scope.target_columns(), "the guarded table", col, cpos)?;
                Ok(if w == "new" { Operand::New(col) } else { Operand::Old(col) })
            }
            Tok::Ident(first) | Tok::Quoted(first) => {
                let Some((scan_table, scan_cols)) = self.scanning.last().cloned() else {
                    return Err(syntax(pos, format!("{first} is not defined here: outside exists(...), use new.<column>, old.<column>, $author or a literal")));
                };
                if *self.peek() == Tok::Dot {
                    self.next();
                    if first != scan_table {
                        return Err(RuleError {
                            kind: RuleErrorKind::UnknownTable,
                            position: pos,
                            message: format!("{first} is not the table this exists scans ({scan_table})"),
                        });
                    }
                    let (col, cpos) = self.name("a column name")?;
                    Ok(Operand::Scanned(self.column_of(&scan_cols, &scan_table, col, cpos)?))
                } else {
                    Ok(Operand::Scanned(self.column_of(&scan_cols, &scan_table, first, pos)?))
                }
            }
            t => Err(syntax(pos, format!("expected a value, found {t}"))),
        }
    }
}

/// Parses and checks a rule for `operation` on the table `scope` describes.
pub fn parse_rule<S: RuleScope + ?Sized>(text: &str, operation: Operation, scope: &S) -> Result<Rule, RuleError> {
    let toks = lex(text)?;
    let mut p = Parser { toks, at: 0, scope, operation, scanning: Vec::new() };
    if *p.peek() == Tok::End {
        return Err(syntax(1, "empty rule (write true to allow everything)"));
    }
    let rule = p.disjunct()?;
    if *p.peek() != Tok::End {
        return Err(syntax(p.pos(), format!("unexpected {} after the end of the rule", p.peek())));
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scope;
    impl RuleScope for Scope {
        fn target_columns(&self) -> &[String] {
            static COLS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
            COLS.get_or_init(|| vec!["id".into(), "owner".into(), "title".into()])
        }
        fn table_columns(&self, table: &str) -> Option<Vec<String>> {
            (table == "caps").then(|| vec!["label".into(), "grantee".into()])
        }
    }

    fn ok(text: &str) -> Rule {
        parse_rule(text, Operation::Insert, &Scope).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str, op: Operation) -> RuleError {
        parse_rule(text, op, &Scope).expect_err(text)
    }

    #[test]
    fn scanned_tables_are_those_of_exists_clauses() {
        let tables = |text: &str| {
            let mut out = std::collections::BTreeSet::new();
            ok(text).scanned_tables(&mut out);
            out.into_iter().collect::<Vec<_>>()
        };
        assert!(tables("new.owner = $author").is_empty());
        assert_eq!(tables("new.owner = $author or exists(caps where caps.grantee = $author)"), ["caps"]);
        for op in ["insert", "update", "delete"] {
            assert_eq!(Operation::from_name(op).map(Operation::name), Some(op));
        }
        assert_eq!(Operation::from_name("select"), None);
    }

    #[test]
    fn parses_the_issue_example() {
        let r = ok("exists(caps where caps.label = 'writer' and caps.grantee = $author)");
        assert_eq!(
            r,
            Rule::Exists {
                table: "caps".into(),
                condition: Box::new(Rule::And(vec![
                    Rule::Compare {
                        left: Operand::Scanned("label".into()),
                        op: CmpOp::Eq,
                        right: Operand::Text("writer".into())
                    },
                    Rule::Compare { left: Operand::Scanned("grantee".into()), op: CmpOp::Eq, right: Operand::Author },
                ])),
            }
        );
    }

    #[test]
    fn precedence_and_parentheses() {
        let r = ok("true or new.owner = $author and new.id > 10");
        assert!(matches!(r, Rule::Or(ref v) if v.len() == 2 && matches!(v[1], Rule::And(_))));
        let r = ok("(TRUE OR new.owner = $author) AND new.title <> 'x'");
        assert!(matches!(r, Rule::And(ref v) if matches!(v[0], Rule::Or(_))));
        assert_eq!(
            ok("new.\"id\" >= -1.5"),
            Rule::Compare { left: Operand::New("id".into()), op: CmpOp::Ge, right: Operand::Number("-1.5".into()) }
        );
        assert_eq!(
            ok("new.title = 'it''s'"),
            Rule::Compare { left: Operand::New("title".into()), op: CmpOp::Eq, right: Operand::Text("it's".into()) }
        );
    }

    #[test]
    fn errors_have_kinds_and_positions() {
        let e = err("exists(pages where x = 1)", Operation::Insert);
        assert_eq!((e.kind, e.position), (RuleErrorKind::UnknownTable, 8));
        let e = err("exists(caps where caps.nope = 1)", Operation::Insert);
        assert_eq!((e.kind, e.position), (RuleErrorKind::UnknownColumn, 24));
        let e = err("new.nope = 1", Operation::Insert);
        assert_eq!((e.kind, e.position), (RuleErrorKind::UnknownColumn, 5));
        let e = err("new.id = ", Operation::Insert);
        assert_eq!((e.kind, e.position), (RuleErrorKind::Syntax, 10));
        let e = err("new.id == 1", Operation::Insert);
        assert_eq!((e.kind, e.position), (RuleErrorKind::Syntax, 9));
        let e = err("old.id = 1", Operation::Insert);
        assert_eq!(e.kind, RuleErrorKind::Syntax);
        assert!(e.message.contains("not available in insert rules"));
        assert_eq!(err("new.id = 1", Operation::Delete).kind, RuleErrorKind::Syntax);
        assert_eq!(err("'unterminated", Operation::Insert).position, 1);
        assert_eq!(err("", Operation::Insert).kind, RuleErrorKind::Syntax);
        assert_eq!(err("true true", Operation::Insert).position, 6);
        assert_eq!(err("label = 'x'", Operation::Insert).kind, RuleErrorKind::Syntax);
        assert_eq!(err("$user = 'x'", Operation::Insert).kind, RuleErrorKind::Syntax);
        assert!(err("new.id = 1", Operation::Delete).to_string().contains("at position 1"));
    }

    #[test]
    fn update_rules_see_both_rows() {
        parse_rule("new.owner = old.owner", Operation::Update, &Scope).unwrap();
        parse_rule("old.owner = $author", Operation::Delete, &Scope).unwrap();
    }
}
