//! VQAv2 accuracy as the official evaluation computes it (`vqaEval.py` of
//! GT-Vision-Lab/VQA, Python 3 version): the prediction goes through `processPunctuation`
//! and `processDigitArticle`; the ten human answers through `processPunctuation` only, and
//! only when they are not all the same; the score is the mean over the ten leave-one-out
//! subsets of min(#matching answers among the other nine / 3, 1). Reported numbers are
//! `round(100 * mean, 2)` with Python's rounding.
//!
//! Quirks kept on purpose: `periodStrip` removes a period not followed by a digit (its
//! `(?!<=\d)` is a typo for a lookbehind and never fails) and, because `re.UNICODE` lands in
//! `sub`'s `count` argument, at most 32 of them; the punctuation characters are deleted
//! outright (not replaced by a space) whenever the text has "p " or " p" for that
//! character, or any digit-comma-digit.

use crate::text::{py_round2, py_split, py_strip};

/// One question with its human answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub question_id: String,
    /// `answer_type` of the annotation (`yes/no`, `number`, `other`).
    pub answer_type: String,
    /// `question_type` of the annotation (e.g. `what color is the`); empty when unknown.
    pub question_type: String,
    /// The human answers; each with the rest of its annotation object, because the official
    /// leave-one-out compares whole answer objects (`item != gtAnsDatum`).
    pub answers: Vec<HumanAnswer>,
}

/// One human answer.
#[derive(Clone, Debug, PartialEq)]
pub struct HumanAnswer {
    pub answer: String,
    /// The other fields of the answer object (`answer_id`, `answer_confidence`), compared
    /// with the answer when leaving one out; the index of the answer when the input had
    /// plain strings.
    pub identity: String,
}

/// The accuracy of every question and the aggregates.
#[derive(Clone, Debug, PartialEq)]
pub struct VqaScores {
    /// Overall accuracy in percent, `round(100 * mean, 2)`.
    pub overall: f64,
    /// The same before rounding (for tests).
    pub overall_unrounded: f64,
    /// Per answer type, in first-seen order, rounded like `overall`.
    pub per_answer_type: Vec<(String, f64)>,
    /// Per question type, in first-seen order, rounded like `overall` (questions without a
    /// type are left out).
    pub per_question_type: Vec<(String, f64)>,
    /// Per question (input order): the unrounded mean leave-one-out accuracy in [0, 1].
    pub per_question: Vec<f64>,
}

const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

fn manual_map(word: &str) -> &str {
    match word {
        "none" | "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "ten" => "10",
        other => other,
    }
}

/// The official `contractions` table (key without apostrophes -> with).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// `re.search("(\d)(\,)(\d)", text)`; Python's `\d` is any Unicode decimal digit.
fn has_digit_comma_digit(chars: &[char]) -> bool {
    chars
        .windows(3)
        .any(|w| is_py_digit(w[0]) && w[1] == ',' && is_py_digit(w[2]))
}

fn is_py_digit(c: char) -> bool {
    crate::text::is_decimal_digit(c)
}

/// The official `processPunctuation`.
pub fn process_punctuation(in_text: &str) -> String {
    let chars: Vec<char> = in_text.chars().collect();
    let comma_digits = has_digit_comma_digit(&chars);
    let mut out = in_text.to_string();
    for p in PUNCT {
        let spaced = in_text.contains(&format!("{p} ")) || in_text.contains(&format!(" {p}"));
        if spaced || comma_digits {
            out = out.replace(p, "");
        } else {
            out = out.replace(p, " ");
        }
    }
    period_strip(&out)
}

/// `periodStrip.sub("", text, re.UNICODE)`: up to 32 periods not followed by a digit removed.
fn period_strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let next_is_digit = chars.get(i + 1).is_some_and(|&n| is_py_digit(n));
        if c == '.' && !next_is_digit && removed < 32 {
            removed += 1;
            continue;
        }
        out.push(c);
    }
    out
}

/// The official `processDigitArticle`.
pub fn process_digit_article(in_text: &str) -> String {
    let lower = in_text.to_lowercase();
    let mut words: Vec<&str> = py_split(&lower)
        .map(manual_map)
        .filter(|w| !ARTICLES.contains(w))
        .collect();
    for w in &mut words {
        if let Some((_, full)) = CONTRACTIONS.iter().find(|(k, _)| k == w) {
            *w = full;
        }
    }
    words.join(" ")
}

/// How the official code normalises a prediction.
pub fn normalize_prediction(answer: &str) -> String {
    let a = answer.replace(['\n', '\t'], " ");
    let a = py_strip(&a);
    process_digit_article(&process_punctuation(a))
}

/// Accuracy of `predictions[i]` for `questions[i]`.
pub fn evaluate(questions: &[Question], predictions: &[String]) -> VqaScores {
    let mut per_question = Vec::with_capacity(questions.len());
    let mut by_answer_type: Vec<(String, Vec<f64>)> = Vec::new();
    let mut by_question_type: Vec<(String, Vec<f64>)> = Vec::new();
    for (q, pred) in questions.iter().zip(predictions) {
        let res = normalize_prediction(pred);
        let distinct: std::collections::HashSet<&str> =
            q.answers.iter().map(|a| a.answer.as_str()).collect();
        let gts: Vec<HumanAnswer> = if distinct.len() > 1 {
            q.answers
                .iter()
                .map(|a| HumanAnswer {
                    answer: process_punctuation(&a.answer),
                    identity: a.identity.clone(),
                })
                .collect()
        } else {
            q.answers.clone()
        };
        let mut gt_acc = Vec::with_capacity(gts.len());
        for datum in &gts {
            let matching = gts
                .iter()
                .filter(|item| *item != datum && item.answer == res)
                .count();
            gt_acc.push((matching as f64 / 3.0).min(1.0));
        }
        let avg = gt_acc.iter().sum::<f64>() / gt_acc.len() as f64;
        per_question.push(avg);
        push_group(&mut by_answer_type, &q.answer_type, avg);
        // JSONL annotations may leave the question type out: no group for those.
        if !q.question_type.is_empty() {
            push_group(&mut by_question_type, &q.question_type, avg);
        }
    }
    let mean = |v: &[f64]| 100.0 * v.iter().sum::<f64>() / v.len() as f64;
    let overall_unrounded = mean(&per_question);
    VqaScores {
        overall: py_round2(overall_unrounded),
        overall_unrounded,
        per_answer_type: by_answer_type
            .iter()
            .map(|(t, v)| (t.clone(), py_round2(mean(v))))
            .collect(),
        per_question_type: by_question_type
            .iter()
            .map(|(t, v)| (t.clone(), py_round2(mean(v))))
            .collect(),
        per_question,
    }
}

fn push_group(groups: &mut Vec<(String, Vec<f64>)>, key: &str, value: f64) {
    match groups.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => v.push(value),
        None => groups.push((key.to_string(), vec![value])),
    }
}

/// Unused-map guard: the contraction keys are unique (a duplicate would shadow silently).
#[cfg(test)]
fn contraction_keys() -> std::collections::HashMap<&'static str, &'static str> {
    CONTRACTIONS.iter().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_rules() {
        assert_eq!(normalize_prediction("Two dogs."), "2 dogs");
        assert_eq!(normalize_prediction("the dont"), "don't");
        assert_eq!(normalize_prediction("1,000"), "1000");
        assert_eq!(normalize_prediction("yes!"), "yes");
        assert_eq!(normalize_prediction("black-and-white"), "black and white");
        assert_eq!(normalize_prediction("3.5"), "3.5");
        assert_eq!(contraction_keys().len(), CONTRACTIONS.len());
    }

    #[test]
    fn leave_one_out() {
        let answers = |xs: &[&str]| {
            xs.iter()
                .enumerate()
                .map(|(i, a)| HumanAnswer {
                    answer: a.to_string(),
                    identity: i.to_string(),
                })
                .collect()
        };
        let q = Question {
            question_id: "1".into(),
            answer_type: "other".into(),
            question_type: "what".into(),
            answers: answers(&["cat", "cat", "dog", "dog", "dog", "x", "x", "x", "x", "x"]),
        };
        let s = evaluate(&[q], &["cat".into()]);
        // Two "cat": leaving one of them out leaves 1 match (1/3), leaving any other out
        // leaves 2 (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
        assert!((s.per_question[0] - 0.6).abs() < 1e-12);
        assert_eq!(s.overall, 60.0);
    }
}
