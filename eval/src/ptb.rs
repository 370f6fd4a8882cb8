//! pycocoevalcap's `PTBTokenizer`: Stanford CoreNLP 3.4.1's PTB tokenizer run with
//! `-preserveLines -lowerCase`, then the tokens in `PUNCTUATIONS` dropped.
//!
//! The lexer is the JFlex specification itself (`ptb/rules.rs`, transcribed from
//! `PTBLexer.flex` at tag v3.4.1) run by a small NFA engine (`ptb/regex.rs`) with JFlex's
//! matching rule: at each position the rule with the longest match wins (a trailing context
//! `r1/r2` counts the `r2` text too), ties go to the earlier rule, and the token is the
//! `r1` text transformed by the rule's action.
//!
//! Like pycocoevalcap, captions are joined by `\n` (after replacing `\n` inside a caption by a
//! space) and tokenized as one text, so a line break that the lexer sees inside a caption
//! (`\r`, U+2028, U+0085, ...) shifts the following captions onto later lines exactly as it
//! does there.

mod regex;
mod rules;

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::{Regex, Scratch};
use rules::Action;

/// Tokens that pycocoevalcap removes after tokenizing (its `PUNCTUATIONS` list). The bracket
/// names are upper case there while the tokenizer has lower-cased them, so `-lrb-` and the
/// like stay in the text, as they do in pycocoevalcap.
pub const PUNCTUATIONS: &[&str] = &[
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

struct Rule {
    pattern: Regex,
    trailing: Option<Regex>,
    action: Action,
}

fn compiled_rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let macros: HashMap<&'static str, &'static str> = rules::MACROS.iter().copied().collect();
        rules::RULES
            .iter()
            .map(|&(pattern, trailing, action)| Rule {
                // The patterns are constants of this crate; the unit test `rules_compile`
                // checks that every one parses.
                pattern: compile(pattern, &macros),
                trailing: trailing.map(|t| compile(t, &macros)),
                action,
            })
            .collect()
    })
}

fn compile(pattern: &str, macros: &HashMap<&'static str, &'static str>) -> Regex {
    Regex::new(pattern, macros).unwrap_or_else(|e| panic!("built-in PTB rule {pattern}: {e}"))
}

/// One lexer output: a token or a line break.
#[derive(Clone, Debug, PartialEq)]
pub enum Lexeme {
    Token(String),
    Newline,
}

/// The PTB lexer over `text`, tokens as CoreNLP produces them (not lower-cased).
pub fn lex(text: &str) -> Vec<Lexeme> {
    let units: Vec<u32> = text.encode_utf16().map(u32::from).collect();
    let rules = compiled_rules();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < units.len() {
        // (rule index, end of the token text, end of the match with trailing context)
        let mut best: Option<(usize, usize, usize)> = None;
        for (index, rule) in rules.iter().enumerate() {
            let Some((end, total)) = rule_match(rule, &units, pos, &mut scratch) else {
                continue;
            };
            if total > pos && best.is_none_or(|(_, _, t)| total > t) {
                best = Some((index, end, total));
            }
        }
        let Some((index, end, _)) = best else {
            // Only `\n` escapes `.`, and NEWLINE takes it; kept for safety.
            pos += 1;
            continue;
        };
        let text = String::from_utf16_lossy(
            &units[pos..end]
                .iter()
                .map(|&u| u as u16)
                .collect::<Vec<_>>(),
        );
        let (token, consumed) = apply(rules[index].action, text, end - pos);
        match token {
            Some(Lexeme::Token(t)) => out.push(Lexeme::Token(t)),
            Some(Lexeme::Newline) => out.push(Lexeme::Newline),
            None => {}
        }
        pos += consumed.max(1);
    }
    out
}

/// Where `rule` matches at `pos`: (end of its own text, end including the trailing context).
/// For `r1/r2` the longest whole match wins, and of the splits giving it the longest `r1`.
fn rule_match(
    rule: &Rule,
    units: &[u32],
    pos: usize,
    scratch: &mut Scratch,
) -> Option<(usize, usize)> {
    match &rule.trailing {
        None => rule.pattern.longest(units, pos, scratch).map(|e| (e, e)),
        Some(trailing) => {
            let ends = rule.pattern.match_ends(units, pos, scratch);
            let mut best: Option<(usize, usize)> = None;
            for &e1 in ends.iter().rev() {
                if let Some(total) = trailing.longest(units, e1, scratch)
                    && best.is_none_or(|(_, t)| total > t)
                {
                    best = Some((e1, total));
                }
            }
            best
        }
    }
}

/// The rule's Java action: the token (if any) and how many units it consumed (after
/// `yypushback`).
fn apply(action: Action, text: String, len: usize) -> (Option<Lexeme>, usize) {
    let token = |t: String| Some(Lexeme::Token(t));
    match action {
        Action::Plain => (token(text), len),
        Action::Pushback(n) => {
            let units: Vec<u16> = text.encode_utf16().collect();
            let keep = len - n;
            (token(String::from_utf16_lossy(&units[..keep])), keep)
        }
        Action::SoftHyphen => (token(remove_soft_hyphens(&text)), len),
        Action::Nbsp => (token(text.replace(' ', "\u{a0}")), len),
        Action::Phone => (
            token(
                text.replace(' ', "\u{a0}")
                    .replace('(', "-LRB-")
                    .replace(')', "-RRB-"),
            ),
            len,
        ),
        Action::Const(c) => (token(c.to_string()), len),
        Action::Amp => (token(normalize_amp(&text)), len),
        Action::Quotes(left) => (token(latex_quotes(&text, left)), len),
        Action::Fractions => (
            token(
                text.replace('\u{bc}', "1/4")
                    .replace('\u{bd}', "1/2")
                    .replace('\u{be}', "3/4")
                    .replace('\u{2153}', "1/3")
                    .replace('\u{2154}', "2/3"),
            ),
            len,
        ),
        Action::Currency => (
            token(
                text.replace('\u{a2}', "cents")
                    .replace('\u{a3}', "#")
                    .replace(['\u{80}', '\u{a4}', '\u{20a0}', '\u{20ac}'], "$"),
            ),
            len,
        ),
        Action::Parens => (token(text.replace('(', "-LRB-").replace(')', "-RRB-")), len),
        Action::Hyphens => {
            if (3..=4).contains(&len) {
                (token("--".to_string()), len)
            } else {
                (token(text), len)
            }
        }
        Action::AcronymSentEnd => {
            if len == 2 {
                // "I." and the like: the letter now, the period next time.
                let first: String = text.chars().take(1).collect();
                (token(first), 1)
            } else {
                // The text with its period, and the period again next time.
                (token(text), len - 1)
            }
        }
        Action::DupPeriod => (token(text), len - 1),
        Action::Skip => (None, len),
        Action::Newline => (Some(Lexeme::Newline), len),
    }
}

fn remove_soft_hyphens(s: &str) -> String {
    if !s.contains('\u{ad}') {
        return s.to_string();
    }
    let out: String = s.chars().filter(|&c| c != '\u{ad}').collect();
    if out.is_empty() { "-".to_string() } else { out }
}

/// Java's `(?i:&amp;)` replaced by `&`.
fn normalize_amp(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.len() >= 5 && tail.is_char_boundary(5) && tail[..5].eq_ignore_ascii_case("&amp;") {
            out.push('&');
            rest = &tail[5..];
        } else {
            out.push('&');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// CoreNLP's `latexQuotes`: ASCII quotes by the side they probably stand on, curly and
/// CP1252 quotes by their shape.
fn latex_quotes(s: &str, probably_left: bool) -> String {
    let (single, double) = if probably_left {
        ("`", "``")
    } else {
        ("'", "''")
    };
    let s = s.replace("&apos;", single).replace('\'', single);
    let s = s.replace('"', double).replace("&quot;", double);
    s.replace(['\u{91}', '\u{2018}', '\u{201B}', '\u{2039}'], "`")
        .replace(['\u{92}', '\u{2019}', '\u{203A}'], "'")
        .replace(['\u{93}', '\u{201C}', '\u{AB}'], "``")
        .replace(['\u{94}', '\u{201D}', '\u{BB}'], "''")
}

/// The tokenizer's output lines for `text`: tokens lower-cased (Java's
/// `toLowerCase(Locale.ENGLISH)`) and joined by one space, a new line at each line break.
pub fn output_lines(text: &str) -> Vec<String> {
    let mut lines = vec![String::new()];
    for lexeme in lex(text) {
        match lexeme {
            Lexeme::Newline => lines.push(String::new()),
            Lexeme::Token(t) => {
                let line = lines.last_mut().expect("lines starts non-empty");
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(&t.to_lowercase());
            }
        }
    }
    lines
}

/// pycocoevalcap's `PTBTokenizer.tokenize` for captions in the order it would write them:
/// one tokenized string per caption, punctuation tokens removed.
pub fn tokenize_captions<S: AsRef<str>>(captions: &[S]) -> Vec<String> {
    let joined = captions
        .iter()
        .map(|c| c.as_ref().replace('\n', " "))
        .collect::<Vec<_>>()
        .join("\n");
    let lines = output_lines(&joined);
    // `zip(image_id, lines)`: there are at least as many lines as captions.
    lines
        .iter()
        .take(captions.len())
        .map(|line| {
            crate::text::py_rstrip(line)
                .split(' ')
                .filter(|w| !PUNCTUATIONS.contains(w))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_compile() {
        let rules = compiled_rules();
        assert_eq!(rules.len(), rules::RULES.len());
    }

    #[test]
    fn a_few_captions() {
        let out = tokenize_captions(&[
            "A man's dog isn't running.",
            "A black-and-white photo (at the zoo)!",
            "They cannot gonna",
        ]);
        assert_eq!(
            out,
            vec![
                "a man 's dog is n't running",
                "a black-and-white photo -lrb- at the zoo -rrb-",
                "they can not gon na",
            ]
        );
    }
}
