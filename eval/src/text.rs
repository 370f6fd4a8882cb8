//! Python's string whitespace rules, which the reference code relies on (`str.split()`,
//! `str.strip()`, `str.rstrip()`).

/// Python's `str.isspace` for one character: Unicode White_Space plus the ASCII
/// information separators U+001C..U+001F.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Unicode Nd (decimal digits), approximated as numeric characters outside the No/Nl blocks.
pub fn is_decimal_digit(c: char) -> bool {
    if c.is_ascii_digit() {
        return true;
    }
    if !c.is_numeric() {
        return false;
    }
    let u = c as u32;
    !matches!(
        u,
        0x00B2 | 0x00B3 | 0x00B9 | 0x00BC..=0x00BE
            | 0x09F4..=0x09F9
            | 0x0BF0..=0x0BF2
            | 0x0D70..=0x0D75
            | 0x0F2A..=0x0F33
            | 0x1369..=0x137C
            | 0x16EE..=0x16F0
            | 0x17F0..=0x17F9
            | 0x2070..=0x2189
            | 0x2460..=0x24FF
            | 0x2776..=0x2793
            | 0x2CFD
            | 0x3007
            | 0x3021..=0x3029
            | 0x3038..=0x303A
            | 0x3192..=0x3195
            | 0x3220..=0x3229
            | 0x3248..=0x324F
            | 0x3251..=0x325F
            | 0x3280..=0x3289
            | 0x32B1..=0x32BF
            | 0xA830..=0xA835
    )
}

/// `s.split()`: runs of whitespace separate words; no empty words.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_isspace).filter(|w| !w.is_empty())
}

/// `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_isspace)
}

/// `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Python's `round(x, 2)` for a finite double: the exact binary value rounded to two
/// decimals, ties to even (as CPython does through its correctly rounded dtoa).
pub fn py_round2(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // 1100 fractional digits hold the exact decimal expansion of any double.
    let exact = format!("{:.1100}", x.abs());
    let (int_part, frac) = exact.split_once('.').unwrap_or((&exact, ""));
    let kept = &frac[..2];
    let rest = &frac[2..];
    let first_dropped = rest.as_bytes().first().copied().unwrap_or(b'0');
    let beyond_half = rest.bytes().skip(1).any(|b| b != b'0');
    let mut digits: Vec<u8> = format!("{int_part}{kept}").into_bytes();
    let last_even = (digits.last().copied().unwrap_or(b'0') - b'0').is_multiple_of(2);
    let round_up = first_dropped > b'5' || (first_dropped == b'5' && (beyond_half || !last_even));
    if round_up {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let text = String::from_utf8(digits).expect("ascii digits");
    let (i, f) = text.split_at(text.len() - 2);
    let value: f64 = format!("{i}.{f}").parse().expect("a decimal number");
    if x.is_sign_negative() { -value } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rules() {
        assert_eq!(
            py_split(" a\u{a0}b\tc  ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(py_rstrip("a b \u{1f}"), "a b");
        // round(2.675, 2) == 2.67 in Python (the double is below 2.675).
        assert_eq!(py_round2(2.675), 2.67);
        assert_eq!(py_round2(0.125), 0.12, "an exact tie goes to even");
        assert_eq!(py_round2(0.375), 0.38);
        assert_eq!(py_round2(99.995), 100.0, "the double is just above 99.995");
        assert_eq!(py_round2(66.66666666666667), 66.67);
        assert_eq!(py_round2(100.0), 100.0);
    }
}
