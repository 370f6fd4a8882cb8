//! The `blip2` command: captions, answers and device information from the terminal.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::generate::GenOpts;

#[derive(Parser)]
#[command(name = "blip2", version, about = "BLIP-2 image captioning and visual question answering on CPU or any wgpu GPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption one or more images.
    #[command(after_help = "Examples:\n  blip2 caption photo.jpg --model ./blip2-opt-2.7b\n  blip2 caption a.png b.png --model DIR --prompt \"a photo of\" --json")]
    Caption {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Text given to the processor verbatim after the image tokens (default: none).
        #[arg(long)]
        prompt: Option<String>,
        #[command(flatten)]
        opts: GenOpts,
    },
    /// Answer a question about an image (prompt "Question: {q} Answer:").
    #[command(after_help = "Example:\n  blip2 ask photo.jpg \"what is the dog doing?\" --model ./blip2-opt-2.7b")]
    Ask {
        image: PathBuf,
        question: String,
        #[command(flatten)]
        opts: GenOpts,
    },
    /// List the compute devices (CPU and GPU adapters) and what they support.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Caption { images, prompt, opts } => cli::generate::caption(&images, prompt.as_deref(), &opts),
        Command::Ask { image, question, opts } => cli::generate::ask(&image, &question, &opts),
        Command::Info => cli::info::info(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
