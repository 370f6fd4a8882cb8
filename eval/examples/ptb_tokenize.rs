//! Tokenize captions the way pycocoevalcap does: a JSON list of strings on stdin, the JSON
//! list of tokenized strings on stdout (for comparing with the Java tokenizer).

use std::io::Read;

fn main() {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("error: cannot read stdin: {e}");
        std::process::exit(1);
    }
    let captions: Vec<String> = match serde_json::from_str(&input) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: expected a JSON list of strings: {e}");
            std::process::exit(1);
        }
    };
    let out = blip2_eval::ptb::tokenize_captions(&captions);
    println!("{}", serde_json::Value::from(out));
}
