//! The macros and rules of Stanford CoreNLP 3.4.1's `PTBLexer.flex` (the tokenizer jar that
//! pycocoevalcap bundles), transcribed in rule order with the options pycocoevalcap runs it
//! with: the defaults plus `tokenizeNLs` (from `-preserveLines`), i.e. PTB3 escaping of
//! brackets, latex quotes, `--` dashes, `...` ellipses, no americanize, no slash escaping,
//! splitAssimilations on, not strictTreebank3 (so FRACSTB3 is unused).

/// The macro section (name, JFlex pattern), verbatim except for dropped, unused macros.
pub const MACROS: &[(&str, &str)] = &[
    (
        "SGML",
        r#"\<([!\?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:\.\-]*([ ]+([A-Za-z][A-Za-z0-9_:\.\-]*|[A-Za-z][A-Za-z0-9_:\.\-]*[ ]*=[ ]*('[^']*'|\"[^\"]*\")))*[ ]*\/?|\/[A-Za-z][A-Za-z0-9_:\.\-]*)[ ]*\>"#,
    ),
    (
        "SPMDASH",
        r#"&(MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]"#,
    ),
    ("SPAMP", r#"&amp;"#),
    ("SPPUNC", r#"&(HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"#),
    ("SPLET", r#"&[aeiouAEIOU](acute|grave|uml);"#),
    ("SPACE", r#"[ \t\u00A0\u2000-\u200A\u3000]"#),
    ("SPACES", r#"{SPACE}+"#),
    ("NEWLINE", r#"\r|\r?\n|\u2028|\u2029|\u000B|\u000C|\u0085"#),
    ("SPACENL", r#"({SPACE}|{NEWLINE})"#),
    ("SPACENLS", r#"{SPACENL}+"#),
    ("SENTEND", r#"{SPACENL}({SPACENL}|[:uppercase:]|{SGML})"#),
    ("DIGIT", r#"[:digit:]|[\u07C0-\u07C9]"#),
    (
        "DATE",
        r#"{DIGIT}{1,2}[\-\/]{DIGIT}{1,2}[\-\/]{DIGIT}{2,4}"#,
    ),
    (
        "NUM",
        r#"{DIGIT}+|{DIGIT}*([.:,\u00AD\u066B\u066C]{DIGIT}+)+"#,
    ),
    ("NUMBER", r#"[\-+]?{NUM}"#),
    (
        "SUBSUPNUM",
        r#"[\u207A\u207B\u208A\u208B]?([\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"#,
    ),
    (
        "FRAC",
        r#"({DIGIT}{1,4}[- \u00A0])?{DIGIT}{1,4}(\\?\/|\u2044){DIGIT}{1,4}"#,
    ),
    ("FRAC2", r#"[\u00BC\u00BD\u00BE\u2153-\u215E]"#),
    ("DOLSIGN", r#"([A-Z]*\$|#)"#),
    (
        "DOLSIGN2",
        r#"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"#,
    ),
    (
        "LETTER",
        r#"([:letter:]|{SPLET}|[\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD])"#,
    ),
    (
        "WORD",
        r#"{LETTER}({LETTER}|{DIGIT})*([.!?]{LETTER}({LETTER}|{DIGIT})*)*"#,
    ),
    (
        "FILENAME_EXT",
        r#"bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip"#,
    ),
    (
        "FILENAME",
        r#"({LETTER}|{DIGIT})+([.]({LETTER}|{DIGIT})+)*([.]{FILENAME_EXT})"#,
    ),
    (
        "THING",
        r#"([dDoOlL]{APOSETCETERA}([:letter:]|[:digit:]))?([:letter:]|[:digit:])+({HYPHEN}([dDoOlL]{APOSETCETERA}([:letter:]|[:digit:]))?([:letter:]|[:digit:])+)*"#,
    ),
    ("THINGA", r#"[A-Z]+(([+&]|{SPAMP})[A-Z]+)+"#),
    (
        "THING3",
        r#"[A-Za-z0-9]+(-[A-Za-z]+){0,2}(\\?\/[A-Za-z0-9]+(-[A-Za-z]+){0,2}){1,2}"#,
    ),
    ("APOS", r#"['\u0092\u2019]|&apos;"#),
    ("APOSETCETERA", r#"{APOS}|[`\u0091\u2018\u201B]"#),
    (
        "HTHING",
        r#"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(-([A-Za-z0-9\u00AD]+|{ACRO2}\.))+"#,
    ),
    ("REDAUX", r#"{APOS}([msdMSD]|re|ve|ll)"#),
    ("SWORD", r#"[A-Za-z\u00AD]*[A-MO-Za-mo-z](\u00AD)*"#),
    ("SREDAUX", r#"n{APOSETCETERA}t"#),
    (
        "APOWORD",
        r#"{APOS}n{APOS}?|[lLdDjJ]{APOS}|Dunkin{APOS}|somethin{APOS}|ol{APOS}|{APOS}em|[A-HJ-XZn]{APOSETCETERA}[:letter:]{2}[:letter:]*|{APOS}[2-9]0s|{APOS}till?|[:letter:][:letter:]*[aeiouyAEIOUY]{APOSETCETERA}[aeiouA-Z][:letter:]*|{APOS}cause|cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l|O{APOSETCETERA}o"#,
    ),
    ("APOWORD2", r#"y{APOS}"#),
    (
        "FULLURL",
        r#"https?:\/\/[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]"#,
    ),
    (
        "LIKELYURL",
        r#"((www\.([^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(([^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(com|net|org|edu)))(\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"#,
    ),
    (
        "EMAIL",
        r#"(&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@([^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*([^ \t\n\f\r\"<>|(){}.\u00A0]+)(&gt;|>)?"#,
    ),
    ("TWITTER_NAME", r#"@[a-zA-Z_][a-zA-Z_0-9]*"#),
    ("TWITTER_CATEGORY", r#"#{LETTER}+"#),
    ("TWITTER", r#"{TWITTER_NAME}|{TWITTER_CATEGORY}"#),
    (
        "ABMONTH",
        r#"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"#,
    ),
    ("ABDAYS", r#"Mon|Tue|Tues|Wed|Thu|Thurs|Fri"#),
    (
        "ABSTATE",
        r#"Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo"#,
    ),
    (
        "ABCOMP",
        r#"Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys"#,
    ),
    ("ABNUM", r#"tel|est|ext|sq"#),
    ("ABPTIT", r#"Jr|Sr|Bros|(Ed|Ph)\.D|Blvd|Rd|Esq"#),
    (
        "ABBREV1",
        r#"({ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|etc|al|seq|Bldg)\."#,
    ),
    (
        "ACRO",
        r#"[A-Za-z](\.[A-Za-z])*|(Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(U\.K|U\.S\.S\.R)"#,
    ),
    (
        "ACRO2",
        r#"[A-Za-z](\.[A-Za-z])+|(Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(U\.K|U\.S\.S\.R)"#,
    ),
    (
        "ABTITLE",
        r#"Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc"#,
    ),
    ("ABCOMP2", r#"Invt|Elec|Natl|M[ft]g|Dept"#),
    (
        "ABBREV4",
        r#"{ABTITLE}|vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph|{ACRO}|{ABCOMP2}"#,
    ),
    ("ABBREV2", r#"{ABBREV4}\."#),
    ("ACRONYM", r#"({ACRO})\."#),
    ("ABBREV3", r#"(ca|figs?|prop|nos?|art|bldg|prop|pp|op)\."#),
    (
        "PHONE",
        r#"(\([0-9]{2,3}\)[ \u00A0]?|(\+\+?)?([0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}|((\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"#,
    ),
    ("FAKEDUCKFEET", r#"<<|>>"#),
    ("LESSTHAN", r#"<|&lt;"#),
    ("GREATERTHAN", r#">|&gt;"#),
    ("HYPHEN", r#"[-_\u058A\u2010\u2011]"#),
    ("HYPHENS", r#"\-+"#),
    ("LDOTS", r#"\.{3,5}|(\.[ \u00A0]){2,4}\.|[\u0085\u2026]"#),
    ("ATS", r#"@+"#),
    ("UNDS", r#"_+"#),
    ("ASTS", r#"\*+|(\\\*){1,3}"#),
    ("HASHES", r#"#+"#),
    ("FNMARKS", r#"{ATS}|{HASHES}|{UNDS}"#),
    ("INSENTP", r#"[,;:\u3001]"#),
    (
        "QUOTES",
        r#"{APOS}|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}"#,
    ),
    ("DBLQUOT", r#"\"|&quot;"#),
    (
        "TBSPEC",
        r#"-(RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(&|&amp;)P-500|S(&|&amp;)Ls|Cap{APOS}n|c{APOS}est"#,
    ),
    ("TBSPEC2", r#"{APOS}[0-9][0-9]"#),
    ("SMILEY", r#"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]"#),
    (
        "ASIANSMILEY",
        r#"[\^x=~<>]\.\[\^x=~<>]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)"#,
    ),
    (
        "MISCSYMBOL",
        r#"[+%&~\^|\\¦\u00A7¨\u00A9\u00AC\u00AE¯\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65\uFF65]"#,
    ),
];

/// What a rule's Java action does with the matched text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// The text as it is.
    Plain,
    /// `yypushback(n)`: the text without its last `n` units (splitAssimilations).
    Pushback(usize),
    /// Soft hyphens (U+00AD) removed; `-` if nothing is left.
    SoftHyphen,
    /// Spaces become U+00A0 (SGML, fractions).
    Nbsp,
    /// Phone numbers: spaces to U+00A0, parentheses to -LRB- / -RRB-.
    Phone,
    /// A fixed token.
    Const(&'static str),
    /// `&amp;` becomes `&`.
    Amp,
    /// Latex quotes; `true` when the quote probably opens.
    Quotes(bool),
    /// ¼ ½ ¾ ⅓ ⅔ spelled with a slash.
    Fractions,
    /// ¢ £ ¤ € ₠ and U+0080 mapped to cents, #, $.
    Currency,
    /// Smileys: parentheses to -LRB- / -RRB-.
    Parens,
    /// `--` for 3 or 4 hyphens, else the text.
    Hyphens,
    /// The acronym-before-a-sentence-start rule: a one-letter acronym gives the letter and
    /// the period next; longer ones give the text with its period and the period again.
    AcronymSentEnd,
    /// Abbreviation before a sentence end: the text with its period, then the period again.
    DupPeriod,
    /// No token (spaces, deleted characters).
    Skip,
    /// A line break (`tokenizeNLs`).
    Newline,
}

/// The rules in file order: (pattern, trailing context, action). Only the
/// `YyTraditionalTreebank3` lexical state is live with these options.
pub const RULES: &[(&str, Option<&str>, Action)] = &[
    (r#"c[+][+]"#, None, Action::Plain),
    (r#"(c|f)#"#, None, Action::Plain),
    (r#"cannot"#, None, Action::Pushback(3)),
    (r#"'twas"#, None, Action::Pushback(3)),
    (r#"'tis"#, None, Action::Pushback(2)),
    (
        r#"gonna|gotta|lemme|gimme|wanna"#,
        None,
        Action::Pushback(2),
    ),
    (r#"{SGML}"#, None, Action::Nbsp),
    (r#"{SPMDASH}"#, None, Action::Const("--")),
    (r#"{SPAMP}"#, None, Action::Amp),
    (r#"{SPPUNC}"#, None, Action::Plain),
    (r#"{WORD}"#, Some(r#"{REDAUX}"#), Action::SoftHyphen),
    (r#"{SWORD}"#, Some(r#"{SREDAUX}"#), Action::SoftHyphen),
    (r#"{WORD}"#, None, Action::SoftHyphen),
    (r#"{APOWORD}"#, None, Action::Plain),
    (r#"{APOWORD2}"#, Some(r#"[:letter:]"#), Action::Plain),
    (r#"{FULLURL}"#, None, Action::Plain),
    (r#"{LIKELYURL}"#, None, Action::Plain),
    (r#"{EMAIL}"#, None, Action::Plain),
    (r#"{TWITTER}"#, None, Action::Plain),
    (r#"{REDAUX}"#, Some(r#"[^A-Za-z]"#), Action::Quotes(false)),
    (r#"{SREDAUX}"#, Some(r#"[^A-Za-z]"#), Action::Quotes(false)),
    (r#"{DATE}"#, None, Action::Plain),
    (r#"{NUMBER}"#, None, Action::SoftHyphen),
    (r#"{SUBSUPNUM}"#, None, Action::Plain),
    (r#"{FRAC}"#, None, Action::Nbsp),
    (r#"{FRAC2}"#, None, Action::Fractions),
    (r#"{TBSPEC}"#, None, Action::Amp),
    (r#"{THING3}"#, None, Action::Plain),
    (r#"{DOLSIGN}"#, None, Action::Plain),
    (r#"{DOLSIGN2}"#, None, Action::Currency),
    (
        r#"{ACRONYM}"#,
        Some(
            r#"({SPACENLS})([A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\.|[M]s\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou|{SGML}){SPACENL}"#,
        ),
        Action::AcronymSentEnd,
    ),
    (
        r#"{ABBREV3}"#,
        Some(r#"{SPACENL}?[:digit:]"#),
        Action::Plain,
    ),
    (
        r#"(pt[eyEY]|co)\."#,
        Some(r#"{SPACE}(ltd|lim)"#),
        Action::Plain,
    ),
    (r#"{ABBREV1}"#, Some(r#"{SENTEND}"#), Action::DupPeriod),
    (r#"{ABBREV1}"#, Some(r#"[^][^]"#), Action::Plain),
    (r#"{ABBREV1}"#, None, Action::DupPeriod),
    (r#"{ABBREV2}"#, None, Action::Plain),
    (r#"{ABBREV4}"#, Some(r#"{SPACE}"#), Action::Plain),
    (r#"{ACRO}"#, Some(r#"{SPACENL}"#), Action::Plain),
    (r#"{TBSPEC2}"#, Some(r#"{SPACENL}"#), Action::Plain),
    (
        r#"{FILENAME}"#,
        Some(r#"({SPACENL}|[.?!,])"#),
        Action::Plain,
    ),
    (r#"{WORD}\."#, Some(r#"{INSENTP}"#), Action::SoftHyphen),
    (r#"{PHONE}"#, None, Action::Phone),
    (
        r#"{DBLQUOT}"#,
        Some(r#"[A-Za-z0-9$]"#),
        Action::Quotes(true),
    ),
    (r#"{DBLQUOT}"#, None, Action::Quotes(false)),
    (r#"\x7f"#, None, Action::Skip),
    (r#"{LESSTHAN}"#, None, Action::Const("<")),
    (r#"{GREATERTHAN}"#, None, Action::Const(">")),
    (r#"{SMILEY}"#, Some(r#"[^A-Za-z0-9]"#), Action::Parens),
    (r#"{ASIANSMILEY}"#, None, Action::Parens),
    (r#"\{"#, None, Action::Const("-LCB-")),
    (r#"\}"#, None, Action::Const("-RCB-")),
    (r#"\["#, None, Action::Const("-LSB-")),
    (r#"\]"#, None, Action::Const("-RSB-")),
    (r#"\("#, None, Action::Const("-LRB-")),
    (r#"\)"#, None, Action::Const("-RRB-")),
    (r#"{HYPHENS}"#, None, Action::Hyphens),
    (r#"{LDOTS}"#, None, Action::Const("...")),
    (r#"{FNMARKS}"#, None, Action::Plain),
    (r#"{ASTS}"#, None, Action::Plain),
    (r#"{INSENTP}"#, None, Action::Plain),
    (r#"[?!]+"#, None, Action::Plain),
    (
        r#"[.¡¿\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]"#,
        None,
        Action::Plain,
    ),
    (r#"="#, None, Action::Plain),
    (r#"\/"#, None, Action::Plain),
    (r#"{HTHING}\."#, Some(r#"{INSENTP}"#), Action::SoftHyphen),
    (r#"{HTHING}"#, None, Action::SoftHyphen),
    (r#"{THING}\."#, Some(r#"{INSENTP}"#), Action::Plain),
    (r#"{THING}"#, None, Action::Plain),
    (r#"{THINGA}\."#, Some(r#"{INSENTP}"#), Action::Amp),
    (r#"{THINGA}"#, None, Action::Amp),
    (
        r#"'"#,
        Some(r#"[A-Za-z][^ \t\n\r\u00A0]"#),
        Action::Quotes(true),
    ),
    (r#"{REDAUX}"#, None, Action::Quotes(false)),
    (r#"{SREDAUX}"#, None, Action::Quotes(false)),
    (r#"{QUOTES}"#, None, Action::Quotes(false)),
    (r#"{FAKEDUCKFEET}"#, None, Action::Plain),
    (r#"{MISCSYMBOL}"#, None, Action::Plain),
    (
        r#"\0|{SPACES}|[\u200B\u200E-\u200F\uFEFF]"#,
        None,
        Action::Skip,
    ),
    (r#"{NEWLINE}"#, None, Action::Newline),
    (r#"&nbsp;"#, None, Action::Skip),
    // Untokenizable characters: deleted (the default `untokenizable=firstDelete`).
    (r#"."#, None, Action::Skip),
];
