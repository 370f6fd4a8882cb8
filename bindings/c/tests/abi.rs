//! The C ABI called from Rust as a C program would call it: status codes, last-error
//! messages, NULL handling, JSON options, streaming, chats, and retrieval on the
//! `blip2-itm-tiny` fixture.

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::{null, null_mut};

use blip2_c::*;

const CAPTION: &str = "a large green circle and a small blue triangle on a gray background";

fn repo(rel: &str) -> CString {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    CString::new(p.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(blip2_last_error()) }
        .to_str()
        .unwrap()
        .to_string()
}

/// Takes a library string and frees it.
fn take(s: *mut c_char) -> String {
    assert!(!s.is_null());
    let t = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
    unsafe { blip2_string_free(s) };
    t
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn demo() -> *mut Blip2Model {
    let mut m = null_mut();
    let st = unsafe { blip2_model_load(null(), c("cpu").as_ptr(), null(), &mut m) };
    assert_eq!(st, Blip2Status::Ok, "{}", last_error());
    m
}

fn image(rel: &str) -> *mut Blip2Image {
    let mut img = null_mut();
    let st = unsafe { blip2_image_load(repo(rel).as_ptr(), &mut img) };
    assert_eq!(st, Blip2Status::Ok, "{}", last_error());
    img
}

unsafe extern "C" fn collect(piece: *const c_char, user: *mut c_void) {
    let v = unsafe { &mut *(user as *mut Vec<String>) };
    v.push(
        unsafe { CStr::from_ptr(piece) }
            .to_str()
            .unwrap()
            .to_string(),
    );
}

#[test]
fn generation_streaming_and_chat() {
    let m = demo();
    let img = image("examples/circle_and_triangle.png");
    let mut out = null_mut();
    unsafe {
        assert_eq!(blip2_caption(m, img, null(), &mut out), Blip2Status::Ok);
        assert_eq!(take(out), CAPTION);
        let opts = c(r#"{"num_beams": 3, "max_new_tokens": 30}"#);
        assert_eq!(
            blip2_caption(m, img, opts.as_ptr(), &mut out),
            Blip2Status::Ok
        );
        assert_eq!(take(out), CAPTION);
        let q = c("what color is the triangle?");
        assert_eq!(
            blip2_ask(m, img, q.as_ptr(), null(), &mut out),
            Blip2Status::Ok
        );
        assert_eq!(take(out), "blue");
        let prompt = c("Question: what color is the circle? Answer:");
        assert_eq!(
            blip2_generate(m, img, prompt.as_ptr(), c("").as_ptr(), &mut out),
            Blip2Status::Ok
        );
        assert_eq!(take(out), "green");

        let mut pieces: Vec<String> = Vec::new();
        let user = &mut pieces as *mut Vec<String> as *mut c_void;
        let st = blip2_generate_stream(m, img, null(), null(), Some(collect), user, &mut out);
        assert_eq!(st, Blip2Status::Ok, "{}", last_error());
        assert!(pieces.len() > 1, "{pieces:?}");
        assert_eq!(pieces.concat(), CAPTION);
        assert_eq!(take(out), CAPTION);

        let mut chat = null_mut();
        assert_eq!(blip2_chat_new(m, img, &mut chat), Blip2Status::Ok);
        // The chat keeps the model alive.
        blip2_model_free(m);
        assert_eq!(
            blip2_chat_ask(chat, q.as_ptr(), null(), &mut out),
            Blip2Status::Ok
        );
        assert_eq!(take(out), "blue");
        pieces.clear();
        let user = &mut pieces as *mut Vec<String> as *mut c_void;
        let q2 = c("what shape is blue?");
        let st = blip2_chat_ask_stream(chat, q2.as_ptr(), null(), Some(collect), user, null_mut());
        assert_eq!(st, Blip2Status::Ok, "{}", last_error());
        assert!(!pieces.concat().is_empty());
        blip2_chat_free(chat);
        blip2_image_free(img);
    }
}

#[test]
fn errors_are_status_codes_with_messages() {
    let m = demo();
    let img = image("examples/circle_and_triangle.png");
    let mut out = null_mut();
    unsafe {
        let bad = c(r#"{"max_length": 5}"#);
        assert_eq!(
            blip2_caption(m, img, bad.as_ptr(), &mut out),
            Blip2Status::InvalidArgument
        );
        assert!(out.is_null());
        assert!(
            last_error().contains("unknown generation option 'max_length'"),
            "{}",
            last_error()
        );
        let bad = c(r#"{"top_p": 0}"#);
        assert_eq!(
            blip2_caption(m, img, bad.as_ptr(), &mut out),
            Blip2Status::InvalidArgument
        );
        assert!(last_error().contains("top_p"), "{}", last_error());
        assert_eq!(
            blip2_caption(m, null(), null(), &mut out),
            Blip2Status::InvalidArgument
        );
        assert_eq!(last_error(), "image is NULL");
        assert_eq!(
            blip2_caption(null(), img, null(), &mut out),
            Blip2Status::InvalidArgument
        );
        assert_eq!(last_error(), "model is NULL");
        assert_eq!(
            blip2_caption(m, img, null(), null_mut()),
            Blip2Status::InvalidArgument
        );
        assert_eq!(last_error(), "out_text is NULL");
        assert_eq!(
            blip2_ask(m, img, null(), null(), &mut out),
            Blip2Status::InvalidArgument
        );
        assert_eq!(
            blip2_generate_stream(m, img, null(), null(), None, null_mut(), null_mut()),
            Blip2Status::InvalidArgument
        );
        let not_utf8 = [0xffu8, 0xfe, 0];
        assert_eq!(
            blip2_ask(m, img, not_utf8.as_ptr().cast(), null(), &mut out),
            Blip2Status::InvalidArgument
        );
        assert!(
            last_error().contains("question is not UTF-8"),
            "{}",
            last_error()
        );

        let mut i2 = null_mut();
        assert_eq!(
            blip2_image_from_bytes(b"nope".as_ptr(), 4, &mut i2),
            Blip2Status::Image
        );
        assert!(i2.is_null());
        assert!(
            last_error().contains("not a supported image format"),
            "{}",
            last_error()
        );
        let px = [255u8; 2 * 3 * 3];
        assert_eq!(
            blip2_image_from_rgb(px.as_ptr(), 3, 2, &mut i2),
            Blip2Status::Ok
        );
        assert_eq!(blip2_caption(m, i2, null(), &mut out), Blip2Status::Ok);
        drop(take(out));
        blip2_image_free(i2);
        let bytes =
            std::fs::read(repo("examples/circle_and_triangle.png").to_str().unwrap()).unwrap();
        assert_eq!(
            blip2_image_from_bytes(bytes.as_ptr(), bytes.len(), &mut i2),
            Blip2Status::Ok
        );
        assert_eq!(blip2_caption(m, i2, null(), &mut out), Blip2Status::Ok);
        assert_eq!(take(out), CAPTION);
        blip2_image_free(i2);

        let mut m2 = null_mut();
        let st = blip2_model_load(null(), c("tpu").as_ptr(), null(), &mut m2);
        assert_eq!(st, Blip2Status::InvalidArgument);
        assert!(
            last_error().contains("unknown device 'tpu'"),
            "{}",
            last_error()
        );
        let st = blip2_model_load(null(), c("cpu").as_ptr(), c("f8").as_ptr(), &mut m2);
        assert_eq!(st, Blip2Status::InvalidArgument);
        assert!(
            last_error().contains("unknown dtype 'f8'"),
            "{}",
            last_error()
        );
        let itm_dir = repo("tests/fixtures/models/blip2-itm-tiny");
        let st = blip2_model_load(itm_dir.as_ptr(), c("cpu").as_ptr(), null(), &mut m2);
        assert_eq!(st, Blip2Status::Checkpoint);
        assert!(last_error().contains("retrieval"), "{}", last_error());
        let st = blip2_model_load(
            repo("no/such/dir").as_ptr(),
            c("cpu").as_ptr(),
            null(),
            &mut m2,
        );
        assert_eq!(st, Blip2Status::Checkpoint);
        assert!(last_error().contains("no/such/dir"), "{}", last_error());
        assert!(m2.is_null());

        // Free functions accept NULL.
        blip2_model_free(null_mut());
        blip2_image_free(null_mut());
        blip2_chat_free(null_mut());
        blip2_retrieval_free(null_mut());
        blip2_string_free(null_mut());
        blip2_image_free(img);
        blip2_model_free(m);
    }
    // The message is per thread.
    std::thread::spawn(|| assert_eq!(last_error(), ""))
        .join()
        .unwrap();
    assert_eq!(
        unsafe { CStr::from_ptr(blip2_version()) }.to_str().unwrap(),
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn retrieval_on_the_fixture() {
    let dir = repo("tests/fixtures/models/blip2-itm-tiny");
    let mut r = null_mut();
    unsafe {
        assert_eq!(
            blip2_retrieval_load(dir.as_ptr(), c("cpu").as_ptr(), c("f32").as_ptr(), &mut r),
            Blip2Status::Ok,
            "{}",
            last_error()
        );
        let (mut q, mut d) = (0usize, 0usize);
        assert_eq!(blip2_retrieval_dims(r, &mut q, &mut d), Blip2Status::Ok);
        assert_eq!((q, d), (8, 32));
        let img = image("tests/fixtures/images/scene_rgb.png");
        let texts = [
            c("a red circle and a blue square on a gradient background"),
            c("a dog sleeping on a wooden boat at night"),
        ];
        let ptrs: Vec<*const c_char> = texts.iter().map(|t| t.as_ptr()).collect();
        let (mut itm, mut itc) = ([0f32; 2], [0f32; 2]);
        let st =
            blip2_retrieval_match(r, img, ptrs.as_ptr(), 2, itm.as_mut_ptr(), itc.as_mut_ptr());
        assert_eq!(st, Blip2Status::Ok, "{}", last_error());
        assert!(
            itm.iter().all(|p| (0.0..=1.0).contains(p))
                && itc.iter().all(|s| (-1.0..=1.0).contains(s))
        );
        let mut idx = [9usize; 2];
        let (mut ritm, mut ritc) = ([0f32; 2], [0f32; 2]);
        let st = blip2_retrieval_rank(
            r,
            img,
            ptrs.as_ptr(),
            2,
            idx.as_mut_ptr(),
            ritm.as_mut_ptr(),
            ritc.as_mut_ptr(),
        );
        assert_eq!(st, Blip2Status::Ok, "{}", last_error());
        let mut sorted = idx;
        sorted.sort();
        assert_eq!(sorted, [0, 1]);
        assert!(ritm[0] >= ritm[1]);
        for k in 0..2 {
            assert!((ritm[k] - itm[idx[k]]).abs() < 1e-6 && (ritc[k] - itc[idx[k]]).abs() < 1e-6);
        }
        let mut img_emb = vec![0f32; q * d];
        let imgs = [img as *const Blip2Image];
        assert_eq!(
            blip2_retrieval_embed_images(r, imgs.as_ptr(), 1, img_emb.as_mut_ptr()),
            Blip2Status::Ok
        );
        let mut txt_emb = vec![0f32; 2 * d];
        assert_eq!(
            blip2_retrieval_embed_texts(r, ptrs.as_ptr(), 2, txt_emb.as_mut_ptr()),
            Blip2Status::Ok
        );
        // ITC = the largest cosine over the query rows.
        for t in 0..2 {
            let te = &txt_emb[t * d..(t + 1) * d];
            let best = img_emb
                .chunks_exact(d)
                .map(|row| row.iter().zip(te).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max);
            assert!((best - itc[t]).abs() < 1e-5, "{best} vs {}", itc[t]);
        }
        let long = c(&"circle ".repeat(100));
        let lp = [long.as_ptr()];
        let st = blip2_retrieval_match(r, img, lp.as_ptr(), 1, itm.as_mut_ptr(), null_mut());
        assert_eq!(st, Blip2Status::InvalidArgument);
        assert!(last_error().contains("64 positions"), "{}", last_error());
        assert_eq!(
            blip2_retrieval_match(r, img, ptrs.as_ptr(), 0, null_mut(), null_mut()),
            Blip2Status::InvalidArgument
        );
        blip2_image_free(img);
        blip2_retrieval_free(r);
    }
}
