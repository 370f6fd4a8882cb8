//! The `blip2` command: captions, answers and device information from the terminal.

mod cli;
mod dataset;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::common::error_chain;
use cli::generate::GenOpts;

#[derive(Parser)]
#[command(
    name = "blip2",
    version,
    about = "BLIP-2 image captioning and visual question answering on CPU or any wgpu GPU",
    after_help = "Without --model, caption/ask/chat use the small demo model built into the binary, which\nknows the synthetic scenes of `blip2 demo-scene`. Quick start:\n  blip2 demo-scene --seed 42 scene.png\n  blip2 caption scene.png\n  blip2 ask scene.png \"how many shapes are there?\""
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption one or more images.
    #[command(
        after_help = "Examples:\n  blip2 caption examples/three_shapes.png            (embedded demo model)\n  blip2 caption photo.jpg --model ./blip2-opt-2.7b\n  blip2 caption a.png b.png --model DIR --prompt \"a photo of\" --json\n  blip2 caption a.jpg b.jpg c.jpg --model DIR --batch-size 2 --num-beams 3"
    )]
    Caption {
        /// Image files, directories of images, or - for image bytes on stdin.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Text given to the processor verbatim after the image tokens (default: none).
        #[arg(long)]
        prompt: Option<String>,
        /// Images per forward pass (each result is the one the image gets alone).
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        #[command(flatten)]
        opts: GenOpts,
    },
    /// Answer a question about an image (prompt "Question: {q} Answer:").
    #[command(
        after_help = "Examples:\n  blip2 ask examples/three_shapes.png \"what shape is orange?\"   (embedded demo model)\n  blip2 ask photo.jpg \"what is the dog doing?\" --model ./blip2-opt-2.7b"
    )]
    Ask {
        image: PathBuf,
        question: String,
        #[command(flatten)]
        opts: GenOpts,
    },
    /// Multi-turn questions about an image, one per line on stdin ("/reset" starts over).
    #[command(
        after_help = "Examples:\n  blip2 chat photo.jpg --model ./blip2-opt-2.7b\n  printf 'what is it?\\nwhat color is it?\\n' | blip2 chat photo.jpg --model DIR --json"
    )]
    Chat {
        image: PathBuf,
        #[command(flatten)]
        opts: GenOpts,
    },
    /// Image-text matching: ITM probability and ITC similarity of each text with an image
    /// (needs a retrieval checkpoint such as Salesforce/blip2-itm-vit-g).
    #[command(
        after_help = "Example:\n  blip2 match photo.jpg \"a dog on a beach\" \"a cat\" --model ./blip2-itm-vit-g --json"
    )]
    Match {
        /// Image file.
        image: PathBuf,
        /// Texts to score against the image.
        #[arg(required = true)]
        texts: Vec<String>,
        #[command(flatten)]
        opts: cli::common::ModelOpts,
    },
    /// Rank the texts of a file (one per line) for each image, best ITM probability first.
    #[command(
        after_help = "Example:\n  blip2 rank --model ./blip2-itm-vit-g --texts captions.txt a.jpg b.jpg"
    )]
    Rank {
        /// Image files, directories of images, or - for image bytes on stdin.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Text file with one candidate text per line.
        #[arg(long)]
        texts: PathBuf,
        #[command(flatten)]
        opts: cli::common::ModelOpts,
    },
    /// List the compute devices (CPU and GPU adapters) and what they support, and the
    /// weights of a model (the embedded demo model without --model).
    #[command(
        after_help = "Examples:\n  blip2 info\n  blip2 info --model DIR --dtype q4 --json\n  WGPU_BACKEND=vulkan blip2 info      (only Vulkan adapters)\n  WGPU_ADAPTER_NAME=nvidia blip2 info (the adapter --device gpu opens)"
    )]
    Info(cli::info::InfoOpts),
    /// Write a copy of a checkpoint with its linear weights and token embeddings
    /// quantized (q8 or q4), which
    /// later loads map in place instead of quantizing again.
    #[command(
        after_help = "Example:\n  blip2 quantize --model ./blip2-opt-2.7b --dtype q4 --out ./blip2-opt-2.7b-q4\n  blip2 caption photo.jpg --model ./blip2-opt-2.7b-q4"
    )]
    Quantize(cli::quantize::QuantizeOpts),
    /// Draw a scene like those the demo model learned, and print its ground truth.
    #[command(
        name = "demo-scene",
        after_help = "Examples:\n  blip2 demo-scene --seed 7 scene.png --json\n  blip2 caption scene.png\n  blip2 demo-scene --seed 100 --count 50 --out-dir scenes/"
    )]
    DemoScene(cli::scene::SceneOpts),
    /// Time every stage with random weights at real model sizes.
    #[command(
        after_help = "Examples:\n  blip2 bench --preset opt-2.7b --device cpu --dtype f16\n  blip2 bench --preset tiny --batch-size 4 --json"
    )]
    Bench(cli::bench::BenchOpts),
    /// Serve the model over HTTP with an OpenAI-compatible API (chat completions with
    /// images, completions, embeddings and matching for retrieval checkpoints), batching
    /// concurrent requests (docs/serve.md).
    #[command(
        after_help = "Examples:\n  blip2 serve                                   (demo model on http://127.0.0.1:8080)\n  blip2 serve --model ./blip2-opt-2.7b --port 8000 --max-batch 16 --api-key secret\n  blip2 serve --preset opt-2.7b --dtype q8      (random weights, for load tests)"
    )]
    Serve(serve::ServeOpts),
    /// Score predictions against references: captions (BLEU-1..4, CIDEr-D, exactly as
    /// pycocoevalcap) or VQAv2 answers (official accuracy) (docs/eval.md).
    #[command(
        subcommand,
        after_help = "Examples:\n  blip2 eval caption --predictions results.json --references captions_val2017.json\n  blip2 eval vqa --predictions answers.json --annotations v2_mscoco_val2014_annotations.json --json"
    )]
    Eval(cli::eval::EvalCommand),
    /// Dataset jobs: caption a whole dataset into sharded, resumable Parquet/JSONL files
    /// (docs/dataset.md).
    #[command(subcommand)]
    Dataset(cli::dataset::DatasetCommand),
}

/// `blip2 ... | head` should end quietly when the reader goes away, as other Unix tools do,
/// rather than panic in `println!`: restore the default SIGPIPE action that Rust's runtime
/// replaces with "ignore".
#[cfg(unix)]
fn default_sigpipe() {
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn default_sigpipe() {}

fn main() -> ExitCode {
    default_sigpipe();
    quiet_mesa_device_select();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Caption {
            images,
            prompt,
            batch_size,
            opts,
        } => cli::generate::caption(&images, prompt.as_deref(), batch_size, &opts),
        Command::Ask {
            image,
            question,
            opts,
        } => cli::generate::ask(&image, &question, &opts),
        Command::Chat { image, opts } => cli::generate::chat(&image, &opts),
        Command::Match { image, texts, opts } => cli::retrieval::match_texts(&image, &texts, &opts),
        Command::Rank {
            images,
            texts,
            opts,
        } => cli::retrieval::rank(&images, &texts, &opts),
        Command::Info(o) => cli::info::info(&o),
        Command::Quantize(o) => cli::quantize::quantize(&o),
        Command::Bench(o) => cli::bench::bench(&o),
        Command::DemoScene(o) => cli::scene::demo_scene(&o),
        Command::Serve(o) => serve::serve(&o),
        Command::Eval(c) => cli::eval::eval(&c),
        Command::Dataset(c) => cli::dataset::run(&c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Mesa's implicit Vulkan layer `VK_LAYER_MESA_device_select` connects to the display
/// server to reorder GPUs, and on a headless machine prints "XDG_RUNTIME_DIR is invalid or
/// not set" twice to stderr for every Vulkan instance, on successful runs. wgpu chooses the
/// adapter itself (power preference, `WGPU_ADAPTER_NAME`), so the binary turns the layer off
/// through its documented switch unless the user configured it.
fn quiet_mesa_device_select() {
    if std::env::var_os("NODEVICE_SELECT").is_none()
        && std::env::var_os("MESA_VK_DEVICE_SELECT").is_none()
    {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}
