//! A small regular-expression engine for the JFlex syntax of `PTBLexer.flex`.
//!
//! Only what the tokenizer's macros use: literals (caseless outside character classes, as
//! JFlex's `%caseless`), escapes (`\uXXXX`, `\xHH`, `\t`, ...), character classes with
//! ranges and negation, `[^]` (any unit), `[:letter:]` / `[:digit:]` / `[:uppercase:]`,
//! `.` (any unit but `\n`), groups, `|`, `*`, `+`, `?`, `{n}`, `{n,m}` and `{MACRO}`.
//! Patterns compile to a Thompson NFA that is run over UTF-16 code units (JFlex 1.4 scans
//! Java `char`s) and reports every position where a match ends, which is what JFlex's
//! longest-match rule and trailing contexts (`r1/r2`) need.

use std::collections::HashMap;

/// A set of UTF-16 code units.
#[derive(Clone, Debug)]
pub struct Class {
    ranges: Vec<(u32, u32)>,
    named: Vec<Named>,
    negated: bool,
    /// Membership of the ASCII units, filled when the pattern is compiled.
    ascii: u128,
}

#[derive(Clone, Copy, Debug)]
enum Named {
    Letter,
    Digit,
    Upper,
}

impl Class {
    fn new(ranges: Vec<(u32, u32)>, named: Vec<Named>, negated: bool) -> Class {
        Class {
            ranges,
            named,
            negated,
            ascii: 0,
        }
    }

    fn single(c: u32) -> Class {
        Class::new(vec![(c, c)], Vec::new(), false)
    }

    fn with_ascii_table(mut self) -> Class {
        self.ascii = (0..128u32)
            .filter(|&u| self.contains_slow(u))
            .fold(0, |m, u| m | (1u128 << u));
        self
    }

    fn contains(&self, u: u32) -> bool {
        if u < 128 {
            return self.ascii & (1u128 << u) != 0;
        }
        self.contains_slow(u)
    }

    fn contains_slow(&self, u: u32) -> bool {
        let hit = self.ranges.iter().any(|&(a, b)| a <= u && u <= b)
            || self.named.iter().any(|n| named_contains(*n, u));
        hit != self.negated
    }
}

/// A UTF-16 unit as a `char`; surrogate halves are none (they are neither letters nor digits).
fn unit_char(u: u32) -> Option<char> {
    char::from_u32(u)
}

/// Java's `Character.isLetter` / `isDigit` / `isUpperCase` as JFlex 1.4 tabulated them, here
/// approximated by Rust's Unicode tables (see docs/eval.md: letters are `is_alphabetic`,
/// digits are numeric characters that are not superscripts, fractions, circled or roman
/// numerals).
fn named_contains(n: Named, u: u32) -> bool {
    let Some(c) = unit_char(u) else { return false };
    match n {
        Named::Letter => c.is_alphabetic() && !is_number_letter(u),
        Named::Digit => crate::text::is_decimal_digit(c),
        Named::Upper => c.is_uppercase(),
    }
}

/// Letter numbers (Nl) that `is_alphabetic` includes and Java's `isLetter` does not.
fn is_number_letter(u: u32) -> bool {
    matches!(u, 0x16EE..=0x16F0 | 0x2160..=0x2188 | 0x3007 | 0x3021..=0x3029 | 0x3038..=0x303A)
}

#[derive(Clone, Debug)]
enum Node {
    Class(Class),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, u32, Option<u32>),
}

/// Parse error in a built-in pattern (a bug in this crate, caught by its tests).
#[derive(Debug)]
pub struct PatternError(pub String);

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

struct Parser<'a> {
    s: Vec<char>,
    pos: usize,
    macros: &'a HashMap<&'static str, &'static str>,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> PatternError {
        let s: String = self.s.iter().collect();
        PatternError(format!("{what} at {} in {s:?}", self.pos))
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn alt(&mut self) -> Result<Node, PatternError> {
        let mut arms = vec![self.concat()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            arms.push(self.concat()?);
        }
        Ok(if arms.len() == 1 {
            arms.pop().unwrap()
        } else {
            Node::Alt(arms)
        })
    }

    fn concat(&mut self) -> Result<Node, PatternError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.postfix(atom)?);
        }
        Ok(Node::Concat(items))
    }

    fn postfix(&mut self, mut atom: Node) -> Result<Node, PatternError> {
        loop {
            match self.peek() {
                Some('*') => {
                    self.pos += 1;
                    atom = Node::Repeat(Box::new(atom), 0, None);
                }
                Some('+') => {
                    self.pos += 1;
                    atom = Node::Repeat(Box::new(atom), 1, None);
                }
                Some('?') => {
                    self.pos += 1;
                    atom = Node::Repeat(Box::new(atom), 0, Some(1));
                }
                Some('{') if self.s.get(self.pos + 1).is_some_and(|c| c.is_ascii_digit()) => {
                    self.pos += 1;
                    let lo = self.number()?;
                    let hi = if self.peek() == Some(',') {
                        self.pos += 1;
                        Some(self.number()?)
                    } else {
                        Some(lo)
                    };
                    if self.peek() != Some('}') {
                        return Err(self.err("expected }"));
                    }
                    self.pos += 1;
                    atom = Node::Repeat(Box::new(atom), lo, hi);
                }
                _ => return Ok(atom),
            }
        }
    }

    fn number(&mut self) -> Result<u32, PatternError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let text: String = self.s[start..self.pos].iter().collect();
        text.parse().map_err(|_| self.err("expected a number"))
    }

    fn atom(&mut self) -> Result<Node, PatternError> {
        let c = self.peek().ok_or_else(|| self.err("unexpected end"))?;
        match c {
            '(' => {
                self.pos += 1;
                let inner = self.alt()?;
                if self.peek() != Some(')') {
                    return Err(self.err("expected )"));
                }
                self.pos += 1;
                Ok(inner)
            }
            '[' => self.class().map(Node::Class),
            '{' => {
                let end = self.s[self.pos..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or_else(|| self.err("unclosed macro"))?;
                let name: String = self.s[self.pos + 1..self.pos + end].iter().collect();
                self.pos += end + 1;
                let body = *self
                    .macros
                    .get(name.as_str())
                    .ok_or_else(|| self.err(&format!("unknown macro {name}")))?;
                if self.depth > 32 {
                    return Err(self.err("macro recursion"));
                }
                let mut sub = Parser {
                    s: body.chars().collect(),
                    pos: 0,
                    macros: self.macros,
                    depth: self.depth + 1,
                };
                let node = sub.alt()?;
                if sub.pos != sub.s.len() {
                    return Err(sub.err("trailing text in macro"));
                }
                Ok(node)
            }
            '.' => {
                self.pos += 1;
                Ok(Node::Class(Class::new(
                    vec![(u32::from('\n'), u32::from('\n'))],
                    Vec::new(),
                    true,
                )))
            }
            '\\' => {
                let u = self.escape()?;
                Ok(caseless(u))
            }
            _ => {
                self.pos += 1;
                Ok(caseless(u32::from(c)))
            }
        }
    }

    /// After a backslash: the escaped unit.
    fn escape(&mut self) -> Result<u32, PatternError> {
        self.pos += 1;
        let c = self.peek().ok_or_else(|| self.err("dangling backslash"))?;
        self.pos += 1;
        let hex = |p: &mut Self, n: usize| -> Result<u32, PatternError> {
            let text: String = p.s.get(p.pos..p.pos + n).unwrap_or(&[]).iter().collect();
            p.pos += n;
            u32::from_str_radix(&text, 16).map_err(|_| p.err("bad hex escape"))
        };
        Ok(match c {
            'u' => hex(self, 4)?,
            'x' => hex(self, 2)?,
            't' => 9,
            'n' => 10,
            'r' => 13,
            'f' => 12,
            '0' => 0,
            other => u32::from(other),
        })
    }

    fn class(&mut self) -> Result<Class, PatternError> {
        // `[:letter:]`-style predefined classes stand alone.
        let rest: String = self.s[self.pos..].iter().take(14).collect();
        for (name, named) in [
            ("[:letter:]", Named::Letter),
            ("[:digit:]", Named::Digit),
            ("[:uppercase:]", Named::Upper),
        ] {
            if rest.starts_with(name) {
                self.pos += name.chars().count();
                return Ok(Class::new(Vec::new(), vec![named], false));
            }
        }
        self.pos += 1; // [
        let mut class = Class::new(Vec::new(), Vec::new(), false);
        if self.peek() == Some('^') {
            class.negated = true;
            self.pos += 1;
        }
        loop {
            let c = self.peek().ok_or_else(|| self.err("unclosed class"))?;
            if c == ']' {
                self.pos += 1;
                return Ok(class);
            }
            let lo = self.class_unit()?;
            if self.peek() == Some('-') && self.s.get(self.pos + 1).is_some_and(|&c| c != ']') {
                self.pos += 1;
                let hi = self.class_unit()?;
                class.ranges.push((lo, hi));
            } else {
                class.ranges.push((lo, lo));
            }
        }
    }

    fn class_unit(&mut self) -> Result<u32, PatternError> {
        match self.peek() {
            Some('\\') => self.escape(),
            Some(c) => {
                self.pos += 1;
                Ok(u32::from(c))
            }
            None => Err(self.err("unclosed class")),
        }
    }
}

/// A literal outside a class: with `%caseless` it matches its upper and lower case too.
fn caseless(u: u32) -> Node {
    let mut class = Class::single(u);
    if let Some(c) = unit_char(u) {
        for other in [single_case(c.to_lowercase()), single_case(c.to_uppercase())]
            .into_iter()
            .flatten()
        {
            let o = u32::from(other);
            if o != u && o <= 0xFFFF {
                class.ranges.push((o, o));
            }
        }
    }
    Node::Class(class)
}

fn single_case(mut it: impl Iterator<Item = char>) -> Option<char> {
    let first = it.next()?;
    if it.next().is_some() {
        None
    } else {
        Some(first)
    }
}

#[derive(Clone, Debug)]
enum State {
    /// Consume one unit in the class, then go to the target.
    Unit(usize, usize),
    Split(usize, usize),
    Jump(usize),
    Accept,
}

/// A compiled pattern.
#[derive(Debug)]
pub struct Regex {
    states: Vec<State>,
    classes: Vec<Class>,
    start: usize,
    /// The states reachable from `start` without input, to reject a first unit quickly.
    start_closure: Vec<usize>,
}

struct Builder {
    states: Vec<State>,
    classes: Vec<Class>,
}

impl Builder {
    fn push(&mut self, s: State) -> usize {
        self.states.push(s);
        self.states.len() - 1
    }

    /// Compile `node` so that it continues at `next`; returns its entry state.
    fn compile(&mut self, node: &Node, next: usize) -> usize {
        match node {
            Node::Class(c) => {
                self.classes.push(c.clone().with_ascii_table());
                let id = self.classes.len() - 1;
                self.push(State::Unit(id, next))
            }
            Node::Concat(items) => {
                let mut entry = next;
                for item in items.iter().rev() {
                    entry = self.compile(item, entry);
                }
                entry
            }
            Node::Alt(arms) => {
                let entries: Vec<usize> = arms.iter().map(|a| self.compile(a, next)).collect();
                let mut entry = *entries.last().unwrap();
                for &e in entries.iter().rev().skip(1) {
                    entry = self.push(State::Split(e, entry));
                }
                entry
            }
            Node::Repeat(inner, lo, hi) => {
                // Tail first: the optional part, then `lo` mandatory copies in front of it.
                let mut entry = match hi {
                    None => {
                        // loop: split -> inner -> back to split, or out.
                        let split = self.push(State::Jump(0));
                        let body = self.compile(inner, split);
                        self.states[split] = State::Split(body, next);
                        split
                    }
                    Some(hi) => {
                        let mut entry = next;
                        for _ in *lo..*hi {
                            let body = self.compile(inner, entry);
                            entry = self.push(State::Split(body, next));
                        }
                        entry
                    }
                };
                for _ in 0..*lo {
                    entry = self.compile(inner, entry);
                }
                entry
            }
        }
    }
}

impl Regex {
    /// Compile `pattern`, expanding `{NAME}` from `macros`.
    pub fn new(
        pattern: &str,
        macros: &HashMap<&'static str, &'static str>,
    ) -> Result<Regex, PatternError> {
        let mut p = Parser {
            s: pattern.chars().collect(),
            pos: 0,
            macros,
            depth: 0,
        };
        let node = p.alt()?;
        if p.pos != p.s.len() {
            return Err(p.err("trailing text"));
        }
        let mut b = Builder {
            states: Vec::new(),
            classes: Vec::new(),
        };
        let accept = b.push(State::Accept);
        let start = b.compile(&node, accept);
        let mut re = Regex {
            states: b.states,
            classes: b.classes,
            start,
            start_closure: Vec::new(),
        };
        let mut scratch = Scratch::default();
        scratch.reset(re.states.len());
        let mut closure = Vec::new();
        re.add(start, &mut closure, &mut scratch);
        re.start_closure = closure;
        Ok(re)
    }

    /// Every `end` such that `input[start..end]` matches, ascending.
    pub fn match_ends(&self, input: &[u32], start: usize, scratch: &mut Scratch) -> Vec<usize> {
        // Most rules cannot start with a given unit: answer those without simulating.
        let can_start = self.start_closure.iter().any(|&s| match self.states[s] {
            State::Accept => true,
            State::Unit(class, _) => input
                .get(start)
                .is_some_and(|&u| self.classes[class].contains(u)),
            _ => false,
        });
        if !can_start {
            return Vec::new();
        }
        scratch.reset(self.states.len());
        let mut ends = Vec::new();
        let mut current = std::mem::take(&mut scratch.current);
        let mut next = std::mem::take(&mut scratch.next);
        current.clear();
        self.add(self.start, &mut current, scratch);
        let mut pos = start;
        loop {
            if current
                .iter()
                .any(|&s| matches!(self.states[s], State::Accept))
            {
                ends.push(pos);
            }
            if pos == input.len() || current.is_empty() {
                scratch.current = current;
                scratch.next = next;
                return ends;
            }
            let u = input[pos];
            scratch.generation += 1;
            next.clear();
            for &s in &current {
                if let State::Unit(class, to) = self.states[s]
                    && self.classes[class].contains(u)
                {
                    self.add(to, &mut next, scratch);
                }
            }
            std::mem::swap(&mut current, &mut next);
            pos += 1;
        }
    }

    /// The longest match at `start`, if any.
    pub fn longest(&self, input: &[u32], start: usize, scratch: &mut Scratch) -> Option<usize> {
        self.match_ends(input, start, scratch).last().copied()
    }

    fn add(&self, s: usize, list: &mut Vec<usize>, scratch: &mut Scratch) {
        if scratch.seen[s] == scratch.generation {
            return;
        }
        scratch.seen[s] = scratch.generation;
        match self.states[s] {
            State::Split(a, b) => {
                self.add(a, list, scratch);
                self.add(b, list, scratch);
            }
            State::Jump(a) => self.add(a, list, scratch),
            _ => list.push(s),
        }
    }
}

/// Reusable marks for the NFA simulation.
#[derive(Default)]
pub struct Scratch {
    seen: Vec<u64>,
    generation: u64,
    current: Vec<usize>,
    next: Vec<usize>,
}

impl Scratch {
    fn reset(&mut self, n: usize) {
        if self.seen.len() < n {
            self.seen.resize(n, 0);
        }
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(p: &str, text: &str) -> Vec<usize> {
        let macros = HashMap::from([("D", "[0-9]"), ("W", "{D}+x")]);
        let re = Regex::new(p, &macros).unwrap();
        let units: Vec<u32> = text.encode_utf16().map(u32::from).collect();
        re.match_ends(&units, 0, &mut Scratch::default())
    }

    #[test]
    fn basics() {
        assert_eq!(ends("ab|a", "abc"), vec![1, 2]);
        assert_eq!(ends("{D}{1,2}", "1234"), vec![1, 2]);
        assert_eq!(ends("{W}", "12x"), vec![3]);
        assert_eq!(ends("can", "CaN"), vec![3], "caseless literal");
        assert_eq!(
            ends("[a]b", "Ab"),
            Vec::<usize>::new(),
            "classes are case-sensitive"
        );
        assert_eq!(ends("[^][^]", "xyz"), vec![2]);
        assert_eq!(ends("\\u00A0+", "\u{a0}\u{a0}"), vec![1, 2]);
        assert_eq!(ends("[:letter:]+", "é1"), vec![1]);
        assert_eq!(ends("(x-)?y", "x-y"), vec![3]);
        assert_eq!(ends("a*", ""), vec![0]);
    }
}
