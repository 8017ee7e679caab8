//! The expressions a replicated schema carries (CHECK constraints and column defaults), as
//! data rather than SQL text.
//!
//! A schema entry records each expression as the text `pg_get_expr` wrote on the author's
//! node. That text comes from the network: a hostile admin can sign any text it likes. So no
//! replica ever runs it. Each replica parses it here into an [`Expr`] of a small language,
//! checks it, and writes its own SQL from the tree with [`Expr::to_sql`]:
//!
//! - every identifier quoted, every string literal written so that it reads the same whatever
//!   `standard_conforming_strings` says;
//! - every function, operator and type qualified with `pg_catalog`, so that nothing in the
//!   session's `search_path` can stand in for them;
//! - functions only from a fixed list of immutable, side-effect-free built-ins
//!   ([`CHECK_FUNCTIONS`]); defaults may also draw from a fixed list of generators
//!   ([`DEFAULT_GENERATORS`]: the clock, random uuids, a sequence);
//! - no subqueries, no parameters, no system columns, no other table's columns.
//!
//! Text the parser cannot read is refused with a reason; so is anything outside the language.
//! The language covers what `pg_get_expr` writes for ordinary CHECK constraints and defaults:
//! comparisons, arithmetic, text and pattern operators, `AND`/`OR`/`NOT`, `IS [NOT] NULL`,
//! `IN` lists (written `= ANY (ARRAY[...])`), casts to the replicated column types, searched
//! `CASE`, `COALESCE`, and calls of the listed functions.

use crate::schema::ColumnType;
use crate::sql_name::{quote_ident, TableName};

/// The longest expression text read, in bytes.
pub const MAX_EXPR_BYTES: usize = 8192;
/// The deepest nesting read (the parser recurses; a deeper text is refused, not overflowed).
pub const MAX_DEPTH: usize = 48;

/// Built-in functions an expression may call: immutable in every overload, with no side
/// effect, reading nothing but their arguments.
pub const CHECK_FUNCTIONS: &[&str] = &[
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "sign",
    "mod",
    "div",
    "sqrt",
    "power",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "lower",
    "upper",
    "initcap",
    "btrim",
    "ltrim",
    "rtrim",
    "lpad",
    "rpad",
    "substr",
    "left",
    "right",
    "strpos",
    "replace",
    "translate",
    "reverse",
    "starts_with",
    "md5",
    "jsonb_typeof",
    "jsonb_array_length",
    "isfinite",
    "regexp_like",
];

/// What a default may call beyond [`CHECK_FUNCTIONS`]: values drawn where the row is written
/// (each replica receives the value, never the call).
pub const DEFAULT_GENERATORS: &[&str] =
    &["now", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "gen_random_uuid", "nextval"];

/// The SQL-standard value functions a default may use.
const SQL_VALUE_FUNCTIONS: &[&str] = &["current_timestamp", "current_date", "localtimestamp"];

/// A constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Const {
    Null,
    Bool(bool),
    /// An unsigned numeric literal as written (`12`, `0.5`, `1e10`).
    Number(String),
    String(String),
}

/// A type an expression may cast to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CastType {
    Column {
        ty: ColumnType,
        array: bool,
    },
    /// Only as `nextval`'s argument.
    Regclass,
}

/// `IS [NOT] NULL / TRUE / FALSE / UNKNOWN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    Null,
    True,
    False,
    Unknown,
}

/// An expression of the language.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Column(String),
    Const(Const),
    Cast(Box<Expr>, CastType),
    /// A unary `-` or `+`.
    Unary(&'static str, Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
    /// `left op ANY (array)` or `left op ALL (array)`.
    Quantified {
        op: &'static str,
        all: bool,
        left: Box<Expr>,
        array: Box<Expr>,
    },
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Is {
        expr: Box<Expr>,
        test: Test,
        negated: bool,
    },
    Array(Vec<Expr>),
    Case {
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Coalesce(Vec<Expr>),
    Call(&'static str, Vec<Expr>),
    /// `CURRENT_TIMESTAMP` and the like (defaults only).
    SqlValue(&'static str),
    /// `nextval('seq'::regclass)` (defaults only).
    NextVal(TableName),
}

/// Where an expression is used.
#[derive(Clone, Copy, Debug)]
pub enum Use<'a> {
    /// A CHECK constraint over the table's `columns`.
    Check { columns: &'a [&'a str] },
    /// A column default: no column, and the generators allowed.
    Default,
}

/// Why an expression is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

fn err<T>(why: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError(why.into()))
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// An identifier; `true` when it was quoted (so never a keyword).
    Ident(String, bool),
    Str(String),
    Num(String),
    Op(String),
    Punct(char),
    Cast,
}

fn tokenize(text: &str) -> Result<Vec<Tok>, ExprError> {
    if text.len() > MAX_EXPR_BYTES {
        return err(format!("longer than {MAX_EXPR_BYTES} bytes"));
    }
    if text.contains('\0') {
        return err("contains the NUL character");
    }
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' | b')' | b'[' | b']' | b',' | b'.' => {
                out.push(Tok::Punct(c as char));
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push(Tok::Cast);
                i += 2;
            }
            b'\'' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    let Some(rel) = text[j..].find('\'') else { return err("a string literal is not closed") };
                    s.push_str(&text[j..j + rel]);
                    j += rel + 1;
                    if b.get(j) == Some(&b'\'') {
                        s.push('\'');
                        j += 1;
                    } else {
                        break;
                    }
                }
                out.push(Tok::Str(s));
                i = j;
            }
            b'"' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    let Some(rel) = text[j..].find('"') else { return err("a quoted identifier is not closed") };
                    s.push_str(&text[j..j + rel]);
                    j += rel + 1;
                    if b.get(j) == Some(&b'"') {
                        s.push('"');
                        j += 1;
                    } else {
                        break;
                    }
                }
                crate::sql_name::check_ident("identifier", &s).map_err(|e| ExprError(e.to_string()))?;
                out.push(Tok::Ident(s, true));
                i = j;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if matches!(b.get(i), Some(b'e' | b'E')) {
                    let mut j = i + 1;
                    if matches!(b.get(j), Some(b'+' | b'-')) {
                        j += 1;
                    }
                    if b.get(j).is_some_and(u8::is_ascii_digit) {
                        i = j;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                if b.get(i).is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') {
                    return err("a number runs into a name");
                }
                out.push(Tok::Num(text[start..i].to_string()));
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                    i += 1;
                }
                // Unquoted names fold to lower case, as Postgres folds them.
                out.push(Tok::Ident(text[start..i].to_ascii_lowercase(), false));
            }
            b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|'
            | b'?' => {
                let start = i;
                while i < b.len() && b"+-*/<>=~!@#%^&|?".contains(&b[i]) {
                    i += 1;
                }
                let op = &text[start..i];
                if op.contains("--") || op.contains("/*") {
                    return err("comments are not allowed");
                }
                out.push(Tok::Op(op.to_string()));
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return err(format!("unexpected character {ch:?}"));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

fn known(list: &[&'static str], name: &str) -> Option<&'static str> {
    list.iter().copied().find(|x| *x == name)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s, false)) if s == kw)
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        let hit = self.keyword(kw);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), ExprError> {
        if self.eat_keyword(kw) {
            Ok(())
        } else {
            err(format!("expected {} at token {}", kw.to_uppercase(), self.pos + 1))
        }
    }

    fn eat_punct(&mut self, p: char) -> bool {
        let hit = self.peek() == Some(&Tok::Punct(p));
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect_punct(&mut self, p: char) -> Result<(), ExprError> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            err(format!("expected {p:?} at token {}", self.pos + 1))
        }
    }

    fn op(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Op(o)) => Some(o.as_str()),
            _ => None,
        }
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Parser) -> Result<T, ExprError>) -> Result<T, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        self.nested(|p| {
            let mut parts = vec![p.and()?];
            while p.eat_keyword("or") {
                parts.push(p.and()?);
            }
            Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::Or(parts) })
        })
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut parts = vec![self.not()?];
        while self.eat_keyword("and") {
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::And(parts) })
    }

    fn not(&mut self) -> Result<Expr, ExprError> {
        if self.eat_keyword("not") {
            return self.nested(|p| Ok(Expr::Not(Box::new(p.not()?))));
        }
        self.is()
    }

    fn is(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.comparison()?;
        while self.eat_keyword("is") {
            let negated = self.eat_keyword("not");
            let test = if self.eat_keyword("null") {
                Test::Null
            } else if self.eat_keyword("true") {
                Test::True
            } else if self.eat_keyword("false") {
                Test::False
            } else if self.eat_keyword("unknown") {
                Test::Unknown
            } else {
                return err("only IS [NOT] NULL, TRUE, FALSE or UNKNOWN are allowed after IS");
            };
            e = Expr::Is { expr: Box::new(e), test, negated };
        }
        Ok(e)
    }

    /// The right side of a binary operator: an operand, or `ANY`/`ALL` over an array.
    fn right_side(
        &mut self,
        op: &'static str,
        left: Expr,
        next: fn(&mut Parser) -> Result<Expr, ExprError>,
    ) -> Result<Expr, ExprError> {
        for (kw, all) in [("any", false), ("all", true)] {
            if self.keyword(kw) && self.toks.get(self.pos + 1) == Some(&Tok::Punct('(')) {
                self.pos += 2;
                let array = self.expr()?;
                self.expect_punct(')')?;
                return Ok(Expr::Quantified { op, all, left: Box::new(left), array: Box::new(array) });
            }
        }
        Ok(Expr::Binary(op, Box::new(left), Box::new(next(self)?)))
    }

    fn comparison(&mut self) -> Result<Expr, ExprError> {
        let left = self.other()?;
        let Some(op) = self.op() else { return Ok(left) };
        let op = if op == "!=" { "<>" } else { op };
        match known(&["=", "<>", "<", "<=", ">", ">="], op) {
            Some(op) => {
                self.pos += 1;
                self.right_side(op, left, Parser::other)
            }
            None => Ok(left),
        }
    }

    fn other(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.additive()?;
        while let Some(op) = self.op().and_then(|o| {
            known(&["||", "~", "~*", "!~", "!~*", "~~", "~~*", "!~~", "!~~*", "->", "->>", "?", "@>", "<@"], o)
        }) {
            self.pos += 1;
            e = self.nested(|p| p.right_side(op, e, Parser::additive))?;
        }
        Ok(e)
    }

    fn additive(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.multiplicative()?;
        while let Some(op) = self.op().and_then(|o| known(&["+", "-"], o)) {
            self.pos += 1;
            e = self.nested(|p| Ok(Expr::Binary(op, Box::new(e), Box::new(p.multiplicative()?))))?;
        }
        Ok(e)
    }

    fn multiplicative(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.power()?;
        while let Some(op) = self.op().and_then(|o| known(&["*", "/", "%"], o)) {
            self.pos += 1;
            e = self.nested(|p| Ok(Expr::Binary(op, Box::new(e), Box::new(p.power()?))))?;
        }
        Ok(e)
    }

    fn power(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.unary()?;
        while self.op() == Some("^") {
            self.pos += 1;
            e = self.nested(|p| Ok(Expr::Binary("^", Box::new(e), Box::new(p.unary()?))))?;
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if let Some(op) = self.op().and_then(|o| known(&["-", "+"], o)) {
            self.pos += 1;
            return self.nested(|p| Ok(Expr::Unary(op, Box::new(p.unary()?))));
        }
        let mut e = self.primary()?;
        while self.peek() == Some(&Tok::Cast) {
            self.pos += 1;
            let ty = self.cast_type()?;
            e = Expr::Cast(Box::new(e), ty);
        }
        Ok(e)
    }

    fn word(&mut self) -> Option<String> {
        match self.peek() {
            Some(Tok::Ident(s, false)) => {
                let s = s.clone();
                self.pos += 1;
                Some(s)
            }
            _ => None,
        }
    }

    fn cast_type(&mut self) -> Result<CastType, ExprError> {
        // `pg_catalog.` may qualify the type.
        if self.keyword("pg_catalog") && self.toks.get(self.pos + 1) == Some(&Tok::Punct('.')) {
            self.pos += 2;
        }
        let Some(first) = self.word() else { return err("expected a type name after ::") };
        let mut name = first.clone();
        match first.as_str() {
            "double" => {
                self.expect_keyword("precision")?;
                name.push_str(" precision");
            }
            "character" => {
                self.expect_keyword("varying")?;
                name.push_str(" varying");
            }
            "timestamp" => {
                if let Some(w) = ["with", "without"].into_iter().find(|w| self.keyword(w)) {
                    self.pos += 1;
                    self.expect_keyword("time")?;
                    self.expect_keyword("zone")?;
                    name = format!("timestamp {w} time zone");
                } else {
                    name = "timestamp without time zone".into();
                }
            }
            "regclass" => return Ok(CastType::Regclass),
            _ => {}
        }
        if self.eat_punct('(') {
            let mut nums = Vec::new();
            loop {
                match self.peek() {
                    Some(Tok::Num(n)) if n.bytes().all(|b| b.is_ascii_digit()) && n.len() <= 4 => {
                        nums.push(n.clone());
                        self.pos += 1;
                    }
                    _ => return err("expected a type modifier"),
                }
                if !self.eat_punct(',') {
                    break;
                }
            }
            self.expect_punct(')')?;
            name = format!("{name}({})", nums.join(","));
        }
        let ty = ColumnType::from_sql_name(&name)
            .ok_or_else(|| ExprError(format!("cast to type {name}, which is not a replicated type")))?;
        let array = if self.eat_punct('[') {
            self.expect_punct(']')?;
            true
        } else {
            false
        };
        Ok(CastType::Column { ty, array })
    }

    fn args(&mut self) -> Result<Vec<Expr>, ExprError> {
        let mut args = Vec::new();
        if self.eat_punct(')') {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat_punct(')') {
                return Ok(args);
            }
            self.expect_punct(',')?;
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let Some(tok) = self.peek().cloned() else { return err("the expression ends too early") };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Const(Const::Number(n))),
            Tok::Str(s) => Ok(Expr::Const(Const::String(s))),
            Tok::Punct('(') => {
                let e = self.expr()?;
                self.expect_punct(')')?;
                Ok(e)
            }
            Tok::Ident(name, false) => match name.as_str() {
                "true" => Ok(Expr::Const(Const::Bool(true))),
                "false" => Ok(Expr::Const(Const::Bool(false))),
                "null" => Ok(Expr::Const(Const::Null)),
                "array" => {
                    self.expect_punct('[')?;
                    let mut items = Vec::new();
                    if !self.eat_punct(']') {
                        loop {
                            items.push(self.expr()?);
                            if self.eat_punct(']') {
                                break;
                            }
                            self.expect_punct(',')?;
                        }
                    }
                    Ok(Expr::Array(items))
                }
                "case" => self.nested(|p| {
                    let mut whens = Vec::new();
                    while p.eat_keyword("when") {
                        let cond = p.expr()?;
                        p.expect_keyword("then")?;
                        whens.push((cond, p.expr()?));
                    }
                    if whens.is_empty() {
                        return err("only a searched CASE (CASE WHEN condition THEN ...) is allowed");
                    }
                    let otherwise = if p.eat_keyword("else") { Some(Box::new(p.expr()?)) } else { None };
                    p.expect_keyword("end")?;
                    Ok(Expr::Case { whens, otherwise })
                }),
                "coalesce" => {
                    self.expect_punct('(')?;
                    let args = self.args()?;
                    if args.is_empty() {
                        return err("COALESCE needs arguments");
                    }
                    Ok(Expr::Coalesce(args))
                }
                _ => match known(SQL_VALUE_FUNCTIONS, &name) {
                    Some(f) if self.peek() != Some(&Tok::Punct('(')) => Ok(Expr::SqlValue(f)),
                    _ => self.name_or_call(name),
                },
            },
            Tok::Ident(name, true) => self.name_or_call(name),
            other => err(format!("unexpected {}", describe(&other))),
        }
    }

    /// A column, or a function call (`f(...)`, `pg_catalog.f(...)`).
    fn name_or_call(&mut self, first: String) -> Result<Expr, ExprError> {
        let (schema, name) = if self.eat_punct('.') {
            match self.peek().cloned() {
                Some(Tok::Ident(n, _)) => {
                    self.pos += 1;
                    (Some(first), n)
                }
                _ => return err("expected a name after '.'"),
            }
        } else {
            (None, first)
        };
        if self.eat_punct('(') {
            if let Some(s) = schema.as_deref().filter(|s| *s != "pg_catalog") {
                return err(format!("calls {s}.{name}: only built-in functions of pg_catalog are allowed"));
            }
            let Some(f) = known(CHECK_FUNCTIONS, &name).or_else(|| known(DEFAULT_GENERATORS, &name)) else {
                return err(format!("calls {name}(), which is not among the functions pg_causal allows"));
            };
            let args = self.args()?;
            if f == "nextval" {
                return match args.as_slice() {
                    [Expr::Cast(inner, CastType::Regclass)] => match inner.as_ref() {
                        Expr::Const(Const::String(s)) => {
                            TableName::parse("sequence", s).map(Expr::NextVal).map_err(|e| ExprError(e.to_string()))
                        }
                        _ => err("nextval takes a sequence name"),
                    },
                    _ => err("nextval takes a sequence name"),
                };
            }
            return Ok(Expr::Call(f, args));
        }
        if schema.is_some() {
            return err(format!(
                "refers to {}.{name}: only the table's own columns are allowed",
                schema.unwrap_or_default()
            ));
        }
        Ok(Expr::Column(name))
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s, _) => format!("name {s:?}"),
        Tok::Str(_) => "string".into(),
        Tok::Num(n) => format!("number {n}"),
        Tok::Op(o) => format!("operator {o}"),
        Tok::Punct(p) => format!("{p:?}"),
        Tok::Cast => "::".into(),
    }
}

/// Parses an expression text and checks it for its use.
pub fn parse(text: &str, usage: Use<'_>) -> Result<Expr, ExprError> {
    let mut toks = tokenize(text)?;
    if let Use::Check { .. } = usage {
        // The form `pg_get_constraintdef` writes: `CHECK (expr)`, maybe `NOT VALID`.
        let word = |t: Option<&Tok>, w: &str| matches!(t, Some(Tok::Ident(s, false)) if s == w);
        if word(toks.first(), "check") && toks.get(1) == Some(&Tok::Punct('(')) {
            toks.remove(0);
        }
        let n = toks.len();
        if n >= 2 && word(toks.get(n - 2), "not") && word(toks.get(n - 1), "valid") {
            toks.truncate(n - 2);
        }
    }
    let mut p = Parser { toks, pos: 0, depth: 0 };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return err(format!("unexpected {} after the expression", describe(&p.toks[p.pos])));
    }
    e.check(usage, 0)?;
    Ok(e)
}

/// A string literal that reads the same whatever `standard_conforming_strings` says.
pub fn sql_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// A replicated column type, qualified: `pg_catalog.numeric(10,2)`.
pub fn qualified_type(ty: &ColumnType) -> String {
    let base = match ty {
        ColumnType::Text => "text".to_string(),
        ColumnType::Varchar(None) => "varchar".into(),
        ColumnType::Varchar(Some(n)) => format!("varchar({n})"),
        ColumnType::Int2 => "int2".into(),
        ColumnType::Int4 => "int4".into(),
        ColumnType::Int8 => "int8".into(),
        ColumnType::Numeric { precision: Some(p), scale } => format!("numeric({p},{})", scale.unwrap_or(0)),
        ColumnType::Numeric { .. } => "numeric".into(),
        ColumnType::Float8 => "float8".into(),
        ColumnType::Float4 => "float4".into(),
        ColumnType::Bool => "bool".into(),
        ColumnType::Date => "date".into(),
        ColumnType::Timestamp => "timestamp".into(),
        ColumnType::Timestamptz => "timestamptz".into(),
        ColumnType::Uuid => "uuid".into(),
        ColumnType::Bytea => "bytea".into(),
        ColumnType::Jsonb => "jsonb".into(),
    };
    format!("pg_catalog.{base}")
}

impl CastType {
    fn to_sql(&self) -> String {
        match self {
            CastType::Regclass => "pg_catalog.regclass".into(),
            CastType::Column { ty, array } => format!("{}{}", qualified_type(ty), if *array { "[]" } else { "" }),
        }
    }
}

impl Expr {
    fn check(&self, usage: Use<'_>, depth: usize) -> Result<(), ExprError> {
        let is_default = matches!(usage, Use::Default);
        let sub = |e: &Expr| e.check(usage, depth + 1);
        match self {
            Expr::Column(c) => match usage {
                Use::Default => err(format!("a default may not refer to column {c}")),
                Use::Check { columns } if columns.contains(&c.as_str()) => Ok(()),
                Use::Check { .. } => err(format!("refers to {c}, which is not a column of the table")),
            },
            Expr::Const(Const::Number(n)) if n.len() > 1000 => err(format!("number {}... is too long", &n[..20])),
            Expr::Const(_) => Ok(()),
            Expr::Cast(e, CastType::Regclass) => err(format!("casts {e:?} to regclass outside nextval")),
            Expr::Cast(e, _) | Expr::Unary(_, e) | Expr::Not(e) | Expr::Is { expr: e, .. } => sub(e),
            Expr::Binary(_, a, b) | Expr::Quantified { left: a, array: b, .. } => {
                sub(a)?;
                sub(b)
            }
            Expr::And(v) | Expr::Or(v) | Expr::Array(v) | Expr::Coalesce(v) => v.iter().try_for_each(sub),
            Expr::Case { whens, otherwise } => {
                whens.iter().try_for_each(|(c, v)| sub(c).and_then(|_| sub(v)))?;
                otherwise.as_deref().map_or(Ok(()), sub)
            }
            Expr::Call(f, args) => {
                if !is_default && known(CHECK_FUNCTIONS, f).is_none() {
                    return err(format!(
                        "calls {f}(), which a CHECK constraint may not call: its value differs between replicas"
                    ));
                }
                args.iter().try_for_each(sub)
            }
            Expr::SqlValue(_) if is_default => Ok(()),
            Expr::SqlValue(f) => err(format!("uses {}, which a CHECK constraint may not use", f.to_uppercase())),
            Expr::NextVal(_) if is_default && depth == 0 => Ok(()),
            Expr::NextVal(_) => err("nextval() is allowed only as a whole default"),
        }
    }

    /// The expression as SQL that means the same whatever the session's `search_path` and
    /// `standard_conforming_strings`: names quoted, functions, operators and types qualified.
    pub fn to_sql(&self) -> String {
        let list = |v: &[Expr], sep: &str| v.iter().map(Expr::to_sql).collect::<Vec<_>>().join(sep);
        match self {
            Expr::Column(c) => quote_ident(c),
            Expr::Const(Const::Null) => "NULL".into(),
            Expr::Const(Const::Bool(b)) => b.to_string(),
            Expr::Const(Const::Number(n)) => n.clone(),
            Expr::Const(Const::String(s)) => sql_literal(s),
            Expr::Cast(e, ty) => format!("CAST({} AS {})", e.to_sql(), ty.to_sql()),
            Expr::Unary(op, e) => format!("(OPERATOR(pg_catalog.{op}) {})", e.to_sql()),
            Expr::Binary(op, a, b) => format!("({} OPERATOR(pg_catalog.{op}) {})", a.to_sql(), b.to_sql()),
            Expr::Quantified { op, all, left, array } => format!(
                "({} OPERATOR(pg_catalog.{op}) {} ({}))",
                left.to_sql(),
                if *all { "ALL" } else { "ANY" },
                array.to_sql()
            ),
            Expr::And(v) => format!("({})", list(v, " AND ")),
            Expr::Or(v) => format!("({})", list(v, " OR ")),
            Expr::Not(e) => format!("(NOT {})", e.to_sql()),
            Expr::Is { expr, test, negated } => format!(
                "({} IS {}{})",
                expr.to_sql(),
                if *negated { "NOT " } else { "" },
                match test {
                    Test::Null => "NULL",
                    Test::True => "TRUE",
                    Test::False => "FALSE",
                    Test::Unknown => "UNKNOWN",
                }
            ),
            Expr::Array(v) => format!("ARRAY[{}]", list(v, ", ")),
            Expr::Case { whens, otherwise } => {
                let mut s = "CASE".to_string();
                for (c, v) in whens {
                    s.push_str(&format!(" WHEN {} THEN {}", c.to_sql(), v.to_sql()));
                }
                if let Some(o) = otherwise {
                    s.push_str(&format!(" ELSE {}", o.to_sql()));
                }
                s.push_str(" END");
                s
            }
            Expr::Coalesce(v) => format!("COALESCE({})", list(v, ", ")),
            Expr::Call(f, args) => format!("pg_catalog.{f}({})", list(args, ", ")),
            Expr::SqlValue(f) => f.to_uppercase(),
            Expr::NextVal(seq) => {
                format!("pg_catalog.nextval(CAST({} AS pg_catalog.regclass))", sql_literal(&seq.to_sql()))
            }
        }
    }

    /// The sequences the expression draws from.
    pub fn sequence(&self) -> Option<&TableName> {
        match self {
            Expr::NextVal(t) => Some(t),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "sql_expr_tests.rs"]
mod tests;
