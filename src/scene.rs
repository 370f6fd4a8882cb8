//! Procedural scenes for the bundled demo model: one to three flat shapes on a plain background,
//! with a caption and question/answer pairs that are exact by construction.
//!
//! The same generator draws the training data (through `blip2 demo-scene --count`) and the scenes
//! our tests and users check the model on, so both come from one set of rules. Everything is integer
//! arithmetic on a seeded splitmix64 stream: a seed gives the same pixels and text on every platform.
//!
//! Layout rules that keep every answer unambiguous:
//! - objects sit in distinct horizontal slots (left, center, right) with at least 2 px between slots;
//! - within a scene every shape and every colour occurs at most once;
//! - sizes come from two disjoint ranges (small 8..=11 px, large 15..=18 px bounding boxes).
//!
//! Caption grammar (objects listed left to right):
//! `a {size} {colour} {shape}[, a ...] [and a ...] on a {background} background`, e.g.
//! "a small red circle, a large blue square and a small green triangle on a white background".

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};
use serde::Serialize;

/// Width and height of every scene in pixels (the demo model's `image_size`, so no resize happens).
pub const SCENE_SIZE: u32 = 64;

/// Horizontal centres of the left, center and right slots.
const SLOT_CENTRES: [i32; 3] = [10, 32, 54];
/// Bounding-box sides: small 8..=11, large 15..=18 (disjoint so the size word is never a judgement call).
const SMALL_SIDE: (i32, i32) = (8, 11);
const LARGE_SIDE: (i32, i32) = (15, 18);
/// Vertical margin kept free at the top and bottom.
const MARGIN_Y: i32 = 3;

/// A shape kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

/// An object colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

/// A background colour (never used for objects).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Background {
    White,
    Gray,
    Black,
}

/// Size class of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    Small,
    Large,
}

/// Horizontal slot of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Position {
    Left,
    Center,
    Right,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
}

impl Colour {
    pub const ALL: [Colour; 6] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [30, 160, 50],
            Colour::Blue => [30, 70, 220],
            Colour::Yellow => [240, 210, 20],
            Colour::Purple => [140, 50, 170],
            Colour::Orange => [245, 130, 20],
        }
    }
}

impl Background {
    pub const ALL: [Background; 3] = [Background::White, Background::Gray, Background::Black];

    pub fn name(self) -> &'static str {
        match self {
            Background::White => "white",
            Background::Gray => "gray",
            Background::Black => "black",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::White => [255, 255, 255],
            Background::Gray => [128, 128, 128],
            Background::Black => [0, 0, 0],
        }
    }
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

impl Position {
    pub const ALL: [Position; 3] = [Position::Left, Position::Center, Position::Right];

    pub fn name(self) -> &'static str {
        match self {
            Position::Left => "left",
            Position::Center => "center",
            Position::Right => "right",
        }
    }
}

/// One drawn object; `x`, `y` and `side` give its bounding box `[x, x+side) x [y, y+side)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SceneObject {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub position: Position,
    pub x: u32,
    pub y: u32,
    pub side: u32,
}

/// A question about a scene and its exact answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QaPair {
    pub question: String,
    pub answer: String,
}

/// A drawn scene with its ground truth.
#[derive(Clone, Debug)]
pub struct Scene {
    pub seed: u64,
    pub background: Background,
    /// Objects ordered left to right (the caption's order).
    pub objects: Vec<SceneObject>,
    pub caption: String,
    pub qa: Vec<QaPair>,
    pub image: RgbImage,
}

/// splitmix64: tiny, well mixed, and defined purely with wrapping integer ops (portable).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough integer in `0..n` (multiply-high; bias below 2^-58 for our n).
    fn below(&mut self, n: u32) -> u32 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u32
    }

    /// Integer in `lo..=hi`.
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + self.below((hi - lo + 1) as u32) as i32
    }

    /// The first `k` items of a Fisher-Yates shuffle of `items`.
    fn choose<T: Copy>(&mut self, items: &[T], k: usize) -> Vec<T> {
        let mut v = items.to_vec();
        for i in 0..k {
            let j = i + self.below((v.len() - i) as u32) as usize;
            v.swap(i, j);
        }
        v.truncate(k);
        v
    }
}

/// Draws the scene for `seed` (deterministic on every platform).
pub fn draw_scene(seed: u64) -> Scene {
    let mut rng = SplitMix64(seed);
    let background = Background::ALL[rng.below(3) as usize];
    let count = 1 + rng.below(3) as usize;
    let shapes = rng.choose(&Shape::ALL, count);
    let colours = rng.choose(&Colour::ALL, count);
    let mut positions = rng.choose(&Position::ALL, count);
    positions.sort();
    let size_limit = SCENE_SIZE as i32;

    let mut objects = Vec::with_capacity(count);
    for i in 0..count {
        let size = if rng.below(2) == 0 {
            Size::Small
        } else {
            Size::Large
        };
        let (lo, hi) = match size {
            Size::Small => SMALL_SIDE,
            Size::Large => LARGE_SIDE,
        };
        let side = rng.range(lo, hi);
        let jitter = rng.range(-1, 1);
        let x = SLOT_CENTRES[positions[i] as usize] - side / 2 + jitter;
        let y = rng.range(MARGIN_Y, size_limit - MARGIN_Y - side);
        objects.push(SceneObject {
            shape: shapes[i],
            colour: colours[i],
            size,
            position: positions[i],
            // The slot geometry keeps boxes inside the image: left x >= 10-9-1 = 0, right end <= 54+9+1 = 64.
            x: x as u32,
            y: y as u32,
            side: side as u32,
        });
    }

    let mut image = RgbImage::from_pixel(SCENE_SIZE, SCENE_SIZE, Rgb(background.rgb()));
    for obj in &objects {
        paint(&mut image, obj);
    }
    let caption = caption(background, &objects);
    let qa = questions(background, &objects);
    Scene {
        seed,
        background,
        objects,
        caption,
        qa,
        image,
    }
}

/// Whether pixel `(px, py)` belongs to the object, tested at the pixel centre in doubled coordinates.
fn covers(obj: &SceneObject, px: u32, py: u32) -> bool {
    let (x0, y0, s) = (2 * obj.x as i64, 2 * obj.y as i64, 2 * obj.side as i64);
    let (cx, cy) = (2 * px as i64 + 1, 2 * py as i64 + 1);
    if cx < x0 || cx >= x0 + s || cy < y0 || cy >= y0 + s {
        return false;
    }
    match obj.shape {
        Shape::Square => true,
        Shape::Circle => {
            let (dx, dy) = (2 * cx - (2 * x0 + s), 2 * cy - (2 * y0 + s));
            dx * dx + dy * dy <= s * s
        }
        Shape::Triangle => {
            // Apex at the top middle, base along the bottom edge: inside when below both slanted edges.
            let (ax, ay) = (x0 + s / 2, y0);
            let left = (x0 - ax) * (cy - ay) - (y0 + s - ay) * (cx - ax);
            let right = (x0 + s - ax) * (cy - ay) - (y0 + s - ay) * (cx - ax);
            left <= 0 && right >= 0
        }
    }
}

fn paint(image: &mut RgbImage, obj: &SceneObject) {
    let colour = Rgb(obj.colour.rgb());
    for py in obj.y..obj.y + obj.side {
        for px in obj.x..obj.x + obj.side {
            if covers(obj, px, py) {
                image.put_pixel(px, py, colour);
            }
        }
    }
}

fn object_phrase(obj: &SceneObject) -> String {
    format!(
        "a {} {} {}",
        obj.size.name(),
        obj.colour.name(),
        obj.shape.name()
    )
}

fn caption(background: Background, objects: &[SceneObject]) -> String {
    let phrases: Vec<String> = objects.iter().map(object_phrase).collect();
    let list = match phrases.as_slice() {
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [head @ .., last] => format!("{} and {last}", head.join(", ")),
        [] => String::new(),
    };
    format!("{list} on a {} background", background.name())
}

fn number_word(n: usize) -> &'static str {
    match n {
        1 => "one",
        2 => "two",
        _ => "three",
    }
}

fn qa(question: String, answer: &str) -> QaPair {
    QaPair {
        question,
        answer: answer.to_string(),
    }
}

/// Every question the scene answers unambiguously, in a fixed order.
fn questions(background: Background, objects: &[SceneObject]) -> Vec<QaPair> {
    let mut out = vec![
        qa(
            "how many shapes are there?".into(),
            number_word(objects.len()),
        ),
        qa("what color is the background?".into(), background.name()),
    ];
    for obj in objects {
        let shape = obj.shape.name();
        out.push(qa(format!("what color is the {shape}?"), obj.colour.name()));
        out.push(qa(format!("what size is the {shape}?"), obj.size.name()));
        out.push(qa(format!("where is the {shape}?"), obj.position.name()));
        out.push(qa(format!("what shape is {}?", obj.colour.name()), shape));
    }
    for shape in Shape::ALL {
        let present = objects.iter().any(|o| o.shape == shape);
        out.push(qa(
            format!("is there a {}?", shape.name()),
            if present { "yes" } else { "no" },
        ));
    }
    out
}

/// The VQA prompt the demo model was trained with (the BLIP-2 OPT convention).
pub use blip2_model::prompt::vqa_prompt;

/// Normalises a generated or expected answer for comparison: trimmed, lower case, no trailing period.
pub fn normalize_answer(text: &str) -> String {
    let t = text.trim().to_lowercase();
    t.strip_suffix('.').unwrap_or(&t).trim_end().to_string()
}

#[derive(Serialize)]
struct SceneRecord<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    caption: &'a str,
    qa: &'a [QaPair],
}

/// Ground truth as one JSON object: `{"caption": ..., "qa": [{"question": ..., "answer": ...}]}`.
pub fn scene_json(scene: &Scene) -> String {
    let record = SceneRecord {
        seed: None,
        file: None,
        caption: &scene.caption,
        qa: &scene.qa,
    };
    // Serialising plain strings into a String cannot fail.
    serde_json::to_string(&record).unwrap_or_default()
}

/// Errors of [`write_scene_batch`].
#[derive(Debug)]
pub enum SceneError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Png {
        path: PathBuf,
        source: image::ImageError,
    },
    SeedOverflow {
        first_seed: u64,
        count: u64,
    },
}

impl fmt::Display for SceneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SceneError::Io { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            SceneError::Png { path, source } => {
                write!(f, "cannot encode {}: {source}", path.display())
            }
            SceneError::SeedOverflow { first_seed, count } => {
                write!(f, "seed range {first_seed} + {count} overflows u64")
            }
        }
    }
}

impl std::error::Error for SceneError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SceneError::Io { source, .. } => Some(source),
            SceneError::Png { source, .. } => Some(source),
            SceneError::SeedOverflow { .. } => None,
        }
    }
}

/// Writes the scenes for seeds `first_seed..first_seed+count` as `dir/{seed}.png` plus
/// `dir/scenes.jsonl` (one `{"seed", "file", "caption", "qa"}` object per line, in seed order).
/// Creates `dir` if needed. Returns the path of the JSONL file.
pub fn write_scene_batch(dir: &Path, first_seed: u64, count: u64) -> Result<PathBuf, SceneError> {
    let end = first_seed
        .checked_add(count)
        .ok_or(SceneError::SeedOverflow { first_seed, count })?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SceneError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Every file is written under a temporary name and renamed when complete, so a killed
    // run leaves whole PNGs and no scenes.jsonl (or the previous one), never a torn file.
    let jsonl_path = dir.join("scenes.jsonl");
    let jsonl_tmp = temp_name(&jsonl_path);
    let mut jsonl = BufWriter::new(File::create(&jsonl_tmp).map_err(io_err(&jsonl_tmp))?);
    for seed in first_seed..end {
        let scene = draw_scene(seed);
        let file = format!("{seed}.png");
        save_png_atomic(&scene.image, &dir.join(&file))?;
        let record = SceneRecord {
            seed: Some(seed),
            file: Some(&file),
            caption: &scene.caption,
            qa: &scene.qa,
        };
        let line = serde_json::to_string(&record).unwrap_or_default();
        writeln!(jsonl, "{line}").map_err(io_err(&jsonl_path))?;
    }
    jsonl.flush().map_err(io_err(&jsonl_tmp))?;
    drop(jsonl);
    std::fs::rename(&jsonl_tmp, &jsonl_path).map_err(io_err(&jsonl_path))?;
    Ok(jsonl_path)
}

/// `dir/.name.tmp` beside `path`: same filesystem, so the rename is atomic.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes a PNG under a temporary name, then renames it to `path`.
pub fn save_png_atomic(image: &RgbImage, path: &Path) -> Result<(), SceneError> {
    let tmp = temp_name(path);
    image
        .save_with_format(&tmp, ImageFormat::Png)
        .map_err(|source| SceneError::Png {
            path: path.to_path_buf(),
            source,
        })?;
    std::fs::rename(&tmp, path).map_err(|source| SceneError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// What the pixels say about one colour region, recovered without the generator's object list.
    struct Region {
        colour: Colour,
        min_x: u32,
        max_x: u32,
        min_y: u32,
        max_y: u32,
        pixels: u32,
    }

    fn regions(image: &RgbImage, background: Background) -> Vec<Region> {
        let mut by_colour: HashMap<[u8; 3], Region> = HashMap::new();
        for (x, y, p) in image.enumerate_pixels() {
            if p.0 == background.rgb() {
                continue;
            }
            let colour = *Colour::ALL
                .iter()
                .find(|c| c.rgb() == p.0)
                .unwrap_or_else(|| {
                    panic!(
                        "pixel ({x},{y}) has a colour outside the palette: {:?}",
                        p.0
                    )
                });
            let r = by_colour.entry(p.0).or_insert(Region {
                colour,
                min_x: x,
                max_x: x,
                min_y: y,
                max_y: y,
                pixels: 0,
            });
            r.min_x = r.min_x.min(x);
            r.max_x = r.max_x.max(x);
            r.min_y = r.min_y.min(y);
            r.max_y = r.max_y.max(y);
            r.pixels += 1;
        }
        let mut v: Vec<Region> = by_colour.into_values().collect();
        v.sort_by_key(|r| r.min_x);
        v
    }

    /// Shape from the fill ratio of the width x width box: square 1.0, circle ~pi/4 = 0.785,
    /// triangle ~0.5 (more on small rasters). The thresholds sit between the classes' measured
    /// ranges; integer maths keeps the test platform-independent.
    fn shape_of(r: &Region) -> Shape {
        let w = r.max_x - r.min_x + 1;
        let ratio_permille = r.pixels * 1000 / (w * w);
        if ratio_permille > 950 {
            Shape::Square
        } else if ratio_permille > 640 {
            Shape::Circle
        } else {
            Shape::Triangle
        }
    }

    fn answer(scene: &Scene, question: &str) -> String {
        let hits: Vec<&QaPair> = scene.qa.iter().filter(|p| p.question == question).collect();
        assert_eq!(
            hits.len(),
            1,
            "seed {}: question {question:?} asked {} times",
            scene.seed,
            hits.len()
        );
        hits[0].answer.clone()
    }

    #[test]
    fn same_seed_same_scene() {
        for seed in [0, 1, 42, u64::MAX] {
            let a = draw_scene(seed);
            let b = draw_scene(seed);
            assert_eq!(a.image, b.image);
            assert_eq!(a.caption, b.caption);
            assert_eq!(a.qa, b.qa);
        }
        // Different seeds give different scenes (not a guarantee for every pair, but for these).
        assert_ne!(draw_scene(1).image, draw_scene(2).image);
    }

    /// Fixed splitmix64 outputs (published reference values for seed 1234567) pin the stream
    /// so a platform or refactor change cannot silently redraw every scene.
    #[test]
    fn splitmix64_reference_stream() {
        let mut rng = SplitMix64(1234567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    /// Every caption and answer is re-derived from the pixels alone and compared.
    #[test]
    fn ground_truth_matches_pixels() {
        let mut counts = [0usize; 4];
        let mut shapes_seen = HashSet::new();
        for seed in 0..3000u64 {
            let scene = draw_scene(seed);
            assert_eq!(scene.image.dimensions(), (SCENE_SIZE, SCENE_SIZE));
            // The corner pixel is never covered (margins), so it shows the background.
            let bg = *Background::ALL
                .iter()
                .find(|b| b.rgb() == scene.image.get_pixel(0, 0).0)
                .expect("corner pixel is a background colour");
            let regs = regions(&scene.image, bg);
            assert!(
                (1..=3).contains(&regs.len()),
                "seed {seed}: {} regions",
                regs.len()
            );
            counts[regs.len()] += 1;

            let mut phrases = Vec::new();
            for r in &regs {
                // Width is the side for all shapes (a triangle's apex row may be empty, so not height).
                let w = r.max_x - r.min_x + 1;
                let size = if w <= SMALL_SIDE.1 as u32 {
                    Size::Small
                } else {
                    assert!(
                        w >= LARGE_SIDE.0 as u32,
                        "seed {seed}: side {w} between the size classes"
                    );
                    Size::Large
                };
                // Slot from the box centre in thirds of the image.
                let centre2 = r.min_x + r.max_x + 1;
                let position = Position::ALL[(centre2 * 3 / (2 * SCENE_SIZE)) as usize];
                let shape = shape_of(r);
                shapes_seen.insert(shape);
                let (s, c) = (shape.name(), r.colour.name());
                assert_eq!(
                    answer(&scene, &format!("what color is the {s}?")),
                    c,
                    "seed {seed}"
                );
                assert_eq!(
                    answer(&scene, &format!("what shape is {c}?")),
                    s,
                    "seed {seed}"
                );
                assert_eq!(
                    answer(&scene, &format!("what size is the {s}?")),
                    size.name(),
                    "seed {seed}"
                );
                assert_eq!(
                    answer(&scene, &format!("where is the {s}?")),
                    position.name(),
                    "seed {seed}"
                );
                phrases.push(format!("a {} {c} {s}", size.name()));
            }
            let n = regs.len();
            assert_eq!(
                answer(&scene, "how many shapes are there?"),
                ["one", "two", "three"][n - 1]
            );
            assert_eq!(answer(&scene, "what color is the background?"), bg.name());
            let present: HashSet<Shape> = regs.iter().map(shape_of).collect();
            assert_eq!(present.len(), n, "seed {seed}: a shape occurs twice");
            for shape in Shape::ALL {
                let yes = if present.contains(&shape) {
                    "yes"
                } else {
                    "no"
                };
                assert_eq!(
                    answer(&scene, &format!("is there a {}?", shape.name())),
                    yes
                );
            }
            assert_eq!(
                scene.qa.len(),
                2 + 4 * n + 3,
                "seed {seed}: unexpected extra questions"
            );
            let list = match n {
                1 => phrases[0].clone(),
                2 => format!("{} and {}", phrases[0], phrases[1]),
                _ => format!("{}, {} and {}", phrases[0], phrases[1], phrases[2]),
            };
            assert_eq!(
                scene.caption,
                format!("{list} on a {} background", bg.name()),
                "seed {seed}"
            );
        }
        // Each object count and each shape occurs (3000 draws: each count has p = 1/3).
        assert!(
            counts[1] > 800 && counts[2] > 800 && counts[3] > 800,
            "{counts:?}"
        );
        assert_eq!(shapes_seen.len(), 3);
    }

    #[test]
    fn json_has_caption_and_qa() {
        let scene = draw_scene(7);
        let v: serde_json::Value = serde_json::from_str(&scene_json(&scene)).expect("valid JSON");
        assert_eq!(v["caption"], scene.caption.as_str());
        let qa = v["qa"].as_array().expect("qa is a list");
        assert_eq!(qa.len(), scene.qa.len());
        for (j, p) in qa.iter().zip(&scene.qa) {
            assert_eq!(j["question"], p.question.as_str());
            assert_eq!(j["answer"], p.answer.as_str());
        }
    }

    #[test]
    fn batch_writes_pngs_and_jsonl() {
        let dir = std::env::temp_dir().join(format!("blip2-scene-test-{}", std::process::id()));
        let jsonl = write_scene_batch(&dir, 100, 5).expect("batch written");
        let text = std::fs::read_to_string(&jsonl).expect("jsonl readable");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        for (i, line) in lines.iter().enumerate() {
            let seed = 100 + i as u64;
            let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON line");
            let scene = draw_scene(seed);
            assert_eq!(v["seed"], seed);
            assert_eq!(v["caption"], scene.caption.as_str());
            let png = image::open(dir.join(v["file"].as_str().expect("file name")))
                .expect("png readable");
            assert_eq!(png.to_rgb8(), scene.image, "PNG is lossless");
        }
        std::fs::remove_dir_all(&dir).expect("temp dir removed");
    }

    #[test]
    fn seed_overflow_is_an_error() {
        let dir = std::env::temp_dir().join("blip2-scene-never-created");
        assert!(matches!(
            write_scene_batch(&dir, u64::MAX, 2),
            Err(SceneError::SeedOverflow { .. })
        ));
    }

    #[test]
    fn answers_normalise() {
        assert_eq!(normalize_answer(" Red.\n"), "red");
        assert_eq!(normalize_answer("left"), "left");
        assert_eq!(
            vqa_prompt("how many shapes are there?"),
            "Question: how many shapes are there? Answer:"
        );
    }
}
