"""Tests of the blip2 Python package (no torch): the demo model built into the library
captions and answers the README's examples exactly as the CLI does, in every image form,
batched, streamed and from four threads at once; the retrieval fixture matches the
transformers reference numbers of tests/fixtures/reference/itm.safetensors within the
tolerances of tests/itm_parity.rs; bad inputs raise the right exception classes."""

import io
import json
import os
import pathlib
import struct
import threading

import numpy as np
import pytest

import blip2

REPO = pathlib.Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
FIXTURES = REPO / "tests" / "fixtures"
SCENES = sorted(p.stem for p in EXAMPLES.glob("*.png") if p.with_suffix(".json").exists())
CIRCLE = EXAMPLES / "circle_and_triangle.png"


def truth(name):
    return json.loads((EXAMPLES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def model():
    return blip2.Blip2.load(device="cpu")


def test_scenes_present():
    assert len(SCENES) == 4, SCENES


# --- captions and answers: what `blip2 caption` / `blip2 ask` print (README.md) ----------


@pytest.mark.parametrize("name", SCENES)
def test_caption_matches_the_cli(model, name):
    assert model.caption(str(EXAMPLES / f"{name}.png")) == truth(name)["caption"]


def test_readme_caption_in_f32():
    m = blip2.Blip2.load(device="cpu", dtype="f32")
    assert m.caption(CIRCLE) == "a large green circle and a small blue triangle on a gray background"


def test_ask_matches_the_scene(model):
    for qa in truth("circle_and_triangle")["qa"]:
        assert model.ask(CIRCLE, qa["question"]) == qa["answer"], qa


def test_batch_captions_and_answers(model):
    paths = [str(EXAMPLES / f"{n}.png") for n in SCENES]
    assert model.caption(paths) == [truth(n)["caption"] for n in SCENES]
    qs = [truth(n)["qa"][0] for n in SCENES]
    assert model.ask(paths, [q["question"] for q in qs]) == [q["answer"] for q in qs]
    # One prompt for every image of the batch.
    assert model.ask(paths, "how many shapes are there?") == [
        model.ask(p, "how many shapes are there?") for p in paths
    ]


@pytest.mark.parametrize("name", SCENES)
def test_streamed_caption_joins_to_the_caption(model, name):
    it = model.caption(EXAMPLES / f"{name}.png", stream=True)
    assert isinstance(it, blip2.TextIterator)
    pieces = list(it)
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == truth(name)["caption"]
    assert list(it) == []  # exhausted


def test_streamed_generate_with_options(model):
    whole = model.generate(CIRCLE, None, max_new_tokens=4)
    assert "".join(model.generate(CIRCLE, None, max_new_tokens=4, stream=True)) == whole
    assert len(whole.split()) < len(truth("circle_and_triangle")["caption"].split())


def test_image_forms_agree(model):
    want = truth("circle_and_triangle")["caption"]
    data = CIRCLE.read_bytes()
    assert model.caption(data) == want
    assert model.caption(bytearray(data)) == want
    assert model.caption(CIRCLE) == want  # pathlib.Path
    Image = pytest.importorskip("PIL.Image")
    pil = Image.open(io.BytesIO(data))
    assert model.caption(pil) == want
    arr = np.asarray(pil.convert("RGB"))
    assert arr.shape[2] == 3 and arr.dtype == np.uint8
    assert model.caption(arr) == want
    # A non-contiguous view of the same pixels.
    assert model.caption(np.asfortranarray(arr)) == want
    assert model.caption(pil.convert("RGBA")) == want


def test_hf_generation_keywords(model):
    want = truth("three_shapes")["caption"]
    img = EXAMPLES / "three_shapes.png"
    assert model.generate(img, num_beams=3, max_new_tokens=30, length_penalty=1.0,
                          early_stopping=True) == want
    assert model.generate(img, repetition_penalty=1.0, no_repeat_ngram_size=0, top_k=50) == want
    a = model.generate(img, do_sample=True, temperature=0.7, top_p=0.9, top_k=5, seed=3)
    b = model.generate(img, do_sample=True, temperature=0.7, top_p=0.9, top_k=5, seed=3)
    assert a == b and isinstance(a, str) and a
    assert model.generate(img, max_new_tokens=2) == " ".join(want.split()[:2])


def test_chat(model):
    chat = model.chat(CIRCLE)
    assert isinstance(chat, blip2.Chat)
    assert chat.ask("what color is the triangle?") == "blue"
    second = "".join(chat.ask("what color is the circle?", stream=True))
    assert isinstance(second, str) and second
    assert chat.turns == [("what color is the triangle?", "blue"), ("what color is the circle?", second)]
    chat.clear()
    assert chat.turns == []
    assert chat.ask("what color is the triangle?", max_new_tokens=5) == "blue"


def test_four_threads_share_one_model(model):
    jobs = [(str(EXAMPLES / f"{n}.png"), q["question"]) for n in SCENES for q in truth(n)["qa"][:3]]
    want = [(model.caption(p), model.ask(p, q)) for p, q in jobs]
    results = [None] * 4
    errors = []

    def work(i):
        try:
            results[i] = [(model.caption(p), model.ask(p, q)) for p, q in jobs]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(r == want for r in results)


def test_gil_is_released_while_computing(model):
    """A Python thread keeps running while this thread is inside a model call: it could
    not if the call held the GIL."""
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        paths = [str(EXAMPLES / f"{n}.png") for n in SCENES]
        before = counter[0]
        model.caption(paths, num_beams=3, max_new_tokens=30)
        during = counter[0] - before
    finally:
        stop.set()
        t.join()
    assert during > 1000, during


# --- errors -------------------------------------------------------------------------------


def test_exception_hierarchy():
    for cls in (blip2.InvalidInputError, blip2.CheckpointError, blip2.DeviceError):
        assert issubclass(cls, blip2.Blip2Error)
    assert issubclass(blip2.Blip2Error, Exception)


def test_bad_inputs(model):
    missing = str(EXAMPLES / "no_such_image.png")
    with pytest.raises(blip2.InvalidInputError, match="no_such_image.png"):
        model.caption(missing)
    with pytest.raises(blip2.InvalidInputError, match="not a supported image format"):
        model.caption(b"definitely not an image")
    with pytest.raises(blip2.InvalidInputError, match="HxWx3"):
        model.caption(np.zeros((8, 8, 5), dtype=np.uint8))
    with pytest.raises(blip2.InvalidInputError, match="uint8"):
        model.caption(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(blip2.InvalidInputError, match="empty"):
        model.caption(np.zeros((0, 8, 3), dtype=np.uint8))
    with pytest.raises(blip2.InvalidInputError, match="empty list"):
        model.caption([])
    with pytest.raises(TypeError, match="an image must be"):
        model.caption(42)
    with pytest.raises(blip2.InvalidInputError, match="top_p"):
        model.caption(CIRCLE, top_p=2.0)
    with pytest.raises(blip2.InvalidInputError, match="max_new_tokens"):
        model.caption(CIRCLE, max_new_tokens=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_length'"):
        model.caption(CIRCLE, max_length=5)
    with pytest.raises(TypeError, match="num_beams"):
        model.caption(CIRCLE, num_beams="three")
    with pytest.raises(blip2.InvalidInputError, match="2 images but 1 prompts"):
        model.generate([CIRCLE, CIRCLE], ["a"])
    with pytest.raises(blip2.InvalidInputError, match="stream=True takes one image"):
        model.caption([CIRCLE, CIRCLE], stream=True)
    # Errors of a streamed generation surface from the iterator or the call.
    with pytest.raises(blip2.InvalidInputError, match="no_such_image.png"):
        list(model.caption(missing, stream=True))


def test_bad_checkpoints_and_devices(tmp_path):
    with pytest.raises(blip2.CheckpointError, match="config.json"):
        blip2.Blip2.load(tmp_path, device="cpu")
    with pytest.raises(blip2.CheckpointError, match="retrieval"):
        blip2.Blip2.load(FIXTURES / "models" / "blip2-itm-tiny", device="cpu", dtype="f32")
    with pytest.raises(blip2.CheckpointError, match="no retrieval heads"):
        blip2.Retrieval.load(FIXTURES / "models" / "blip2-opt-tiny", device="cpu")
    with pytest.raises(blip2.InvalidInputError, match="unknown device 'tpu'"):
        blip2.Blip2.load(device="tpu")
    with pytest.raises(blip2.InvalidInputError, match="unknown dtype 'f8'"):
        blip2.Blip2.load(device="cpu", dtype="f8")


# --- retrieval against the transformers reference numbers --------------------------------

# tests/itm_parity.rs: scores (ITM probability, ITC similarity) within 1e-4 absolute;
# embeddings (unit vectors) within 1e-5 absolute, 5e-4 for photo.jpg, whose JPEG decoders
# (zune-jpeg vs libjpeg-turbo) differ by up to 2 grey levels.
SCORE_TOL = 1e-4
EMBED_TOL = 1e-5
JPEG_EMBED_TOL = 5e-4
IMAGES = {"rgb": "scene_rgb.png", "rgba": "scene_rgba.png", "jpeg": "photo.jpg", "gray": "small_gray.png"}
TEXTS = {
    "rgb": ("a red circle and a blue square on a gradient background", "a dog sleeping on a wooden boat at night"),
    "rgba": ("a green ring with a transparent hole", "two people eating soup in a kitchen"),
    "jpeg": ("orange stripes around a purple ellipse", "a white cat on a snowy mountain"),
    "gray": ("a small gray picture with a dark cross", "a yellow bus on a busy city street"),
}


def read_safetensors(path):
    """The float tensors of a safetensors file, with numpy only."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"])
    return out


@pytest.fixture(scope="module")
def retrieval():
    return blip2.Retrieval.load(FIXTURES / "models" / "blip2-itm-tiny", device="cpu", dtype="f32")


@pytest.fixture(scope="module")
def refs():
    return read_safetensors(FIXTURES / "reference" / "itm.safetensors")


def image_path(key):
    return FIXTURES / "images" / IMAGES[key]


@pytest.mark.parametrize("key", list(IMAGES))
def test_match_and_embeddings_match_transformers(retrieval, refs, key):
    texts = list(TEXTS[key])
    itm, itc = retrieval.match(image_path(key), texts)
    assert itm.dtype == np.float32 and itm.shape == (2,) and itc.shape == (2,)
    for i, kind in enumerate(("match", "nonmatch")):
        np.testing.assert_allclose(itm[i], refs[f"{key}.{kind}.itm_probability"][0], rtol=0, atol=SCORE_TOL)
        np.testing.assert_allclose(itc[i], refs[f"{key}.{kind}.itc_score"].ravel()[0], rtol=0, atol=SCORE_TOL)
    img = retrieval.embed_images(str(image_path(key)))
    assert img.shape == (1, retrieval.num_query_tokens, retrieval.embed_dim) == (1, 8, 32)
    tol = JPEG_EMBED_TOL if key == "jpeg" else EMBED_TOL
    np.testing.assert_allclose(img, refs[f"{key}.image_embeds"], rtol=0, atol=tol)
    txt = retrieval.embed_texts(texts)
    assert txt.shape == (2, 32)
    for i, kind in enumerate(("match", "nonmatch")):
        np.testing.assert_allclose(txt[i], refs[f"{key}.{kind}.text_embeds"][0], rtol=0, atol=EMBED_TOL)
    # ITC from the embeddings: the largest cosine over the query rows.
    np.testing.assert_allclose((img[0] @ txt.T).max(axis=0), itc, rtol=0, atol=1e-5)


def test_rank_and_batches(retrieval, refs):
    all_texts = [t for k in IMAGES for t in TEXTS[k]]
    itm, itc = retrieval.match(image_path("rgb"), all_texts)
    idx, ritm, ritc = retrieval.rank(image_path("rgb"), all_texts)
    assert idx.dtype == np.int64 and sorted(idx.tolist()) == list(range(8))
    assert np.all(np.diff(ritm) <= 0)
    np.testing.assert_allclose(ritm, itm[idx], atol=1e-6)
    np.testing.assert_allclose(ritc, itc[idx], atol=1e-6)
    assert idx[0] == 0  # the matching text wins
    embs = retrieval.embed_images([image_path(k) for k in IMAGES])
    assert embs.shape == (4, 8, 32)
    for i, k in enumerate(IMAGES):
        tol = JPEG_EMBED_TOL if k == "jpeg" else EMBED_TOL
        np.testing.assert_allclose(embs[i], refs[f"{k}.image_embeds"][0], rtol=0, atol=tol)
    # The padded two-text batch of the reference.
    txt = retrieval.embed_texts([TEXTS["rgb"][0], "a circle"])
    np.testing.assert_allclose(txt, refs["batch.text_embeds"], rtol=0, atol=EMBED_TOL)


def test_retrieval_bad_inputs(retrieval):
    with pytest.raises(blip2.InvalidInputError, match="64 positions"):
        retrieval.match(image_path("rgb"), "circle " * 100)
    with pytest.raises(blip2.InvalidInputError, match="empty list of texts"):
        retrieval.embed_texts([])
    with pytest.raises(TypeError):
        retrieval.embed_texts(7)
