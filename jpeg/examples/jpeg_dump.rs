//! `cargo run -p blip2-jpeg --example jpeg_dump -- IN.jpg OUT.rgb`: decodes with blip2-jpeg
//! and writes the raw interleaved RGB bytes (for comparing with Pillow).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: jpeg_dump IN.jpg OUT.rgb");
        std::process::exit(2);
    }
    let data = std::fs::read(&args[1]).expect("read input");
    match blip2_jpeg::decode(&data, &blip2_jpeg::DecodeOptions::default()) {
        Ok(img) => {
            eprintln!("{}x{} {:?}", img.width, img.height, img.color_space);
            std::fs::write(&args[2], img.into_rgb()).expect("write output");
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
