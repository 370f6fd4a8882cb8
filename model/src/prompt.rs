//! Prompt templates of the BLIP-2 checkpoints, in one place for the library, the CLI and
//! the demo scenes.

/// The VQA prompt of the BLIP-2 model cards (and of vLLM's BLIP-2):
/// `Question: {question} Answer:`, the question trimmed.
pub fn vqa_prompt(question: &str) -> String {
    format!("Question: {} Answer:", question.trim())
}

#[cfg(test)]
mod tests {
    #[test]
    fn vqa_prompt_trims_the_question() {
        assert_eq!(
            super::vqa_prompt(" what is it? "),
            "Question: what is it? Answer:"
        );
    }
}
