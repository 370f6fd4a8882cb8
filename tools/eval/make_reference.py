#!/usr/bin/env python3
"""Reference fixtures for `blip2 eval` (tests/fixtures/eval/).

Generates, deterministically (seeded), a caption set (>= 200 images x 5 references and one
prediction each, exercising the PTB tokenizer) and a VQA set (>= 200 questions x 10 human
answers), then records what the reference implementations report:

- captions: pycocoevalcap 1.2 itself (its PTBTokenizer runs the bundled Stanford CoreNLP
  3.4.1 jar, so Java is needed), Bleu(4) and Cider(): corpus scores, per-image scores and the
  tokenized string of every caption; plus a list of tricky lines run through the tokenizer
  alone;
- VQA: the official vqaEval.py algorithm, transcribed below (it is not on PyPI) from
  GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py (Python 3 version,
  commit c4e6a0e): processPunctuation, processDigitArticle, leave-one-out accuracy,
  round(100 * x, 2).

Run from the repository root with the venv of tools/eval/requirements.txt:
    python3 -m venv target/evalvenv
    target/evalvenv/bin/pip install -r tools/eval/requirements.txt
    target/evalvenv/bin/python tools/eval/make_reference.py
"""

import json
import os
import random
import re
import sys

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

OUT = os.path.join("tests", "fixtures", "eval")
SEED = 20261206
N_IMAGES = 240
N_QUESTIONS = 240

# ----------------------------------------------------------------------------------------
# Caption-like sentences
# ----------------------------------------------------------------------------------------

SUBJECTS = [
    "a man", "a woman", "two dogs", "a black-and-white cat", "the 10-year-old boy", "a group of people",
    "three giraffes", "a red double-decker bus", "an elephant", "a little girl", "some sheep",
    "a skateboarder", "a surfer", "two men", "a plate of food", "a train", "a brown horse",
    "a large jet", "a teddy bear", "a pizza", "a couple", "a person", "a young child", "a zebra",
]
VERBS = [
    "is standing", "sitting", "riding a bike", "is eating", "walking", "playing frisbee",
    "is flying a kite", "looking at a phone", "holding an umbrella", "lying", "running",
    "parked", "waiting", "crossing the street", "jumping", "is cutting a cake",
]
PLACES = [
    "on the beach", "in a field", "next to a building", "at the zoo", "on a table",
    "in the snow", "near the water", "on a city street", "in a kitchen", "at the station",
    "under a tree", "in front of a store", "on top of a hill", "inside a room",
]
TAILS = [
    ".", "", " .", "!", "?", "...", " ,with a dog.", "; it's sunny.", ": a view.", " -- again.",
    " (in the background).", ", and a car.",
]
# Fragments that exercise the tokenizer rules.
TRICKY = [
    "A man's dog isn't running.",
    "They're sure it can't be, won't they?",
    "I'm sure we'll go, you'd say; she'd agree",
    "The dog's owners' car",
    "\"Quoted\" words and 'single quotes' here",
    "A sign that says “STOP” and ‘go’",
    "A 2.5 m tall giraffe, 1,000 people and 3:30 p.m. traffic",
    "A man/woman in black/white at the U.S. border",
    "Mr. Smith and Dr. Who e.g. St. Louis vs. Co. etc.",
    "a dog -- running - fast -dog dog- well-known",
    "50% of #1 fans @home pay $5 or £3 or €4 or ¥7",
    "a b c d e f g h",
    "Café naïve résumé in Zürich — em dash – en dash …",
    "A DOG IN CAPITALS WITH SHOUTING!!!",
    "dog dog dog dog dog dog",
    "cannot gonna wanna gotta lemme gimme",
    "an 'o'clock' rock'n'roll y'all ma'am",
    "kids in the '90s and the 1990s",
    "(parentheses) [brackets] {braces} <angle>",
    "1/2 of a 3 1/2 inch ½ pie ¼",
    "x+y=z and a*b",
    "an email a.b@example.com and www.example.com and http://example.com/a.jpg",
    "tab\there and  double  spaces",
    "Hello... World.... wait . . . more",
    "a 555-123-4567 phone and 12/25/2014 date",
    "Emoji 🐶 dog and 中文 text and Ελληνικά",
    "U.S. The end. I. He said",
    "no. 5 and ca. 1900 fig. 3",
    "it's a dog's life, isn't it?",
    "DON'T WON'T CAN'T",
    "o'clock O'Neil d'Artagnan l'amour",
    "well -known and co -op",
    "\u00a0leading nbsp and trailing\u00a0",
    "A soft\u00adhyphen word",
    "'tis 'twas the night",
    "Smiley :) and :-( and ;D here",
]


def caption(rng):
    if rng.random() < 0.25:
        return rng.choice(TRICKY)
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}{rng.choice(TAILS)}"
    r = rng.random()
    if r < 0.3:
        s = s[0].upper() + s[1:]
    elif r < 0.35:
        s = s.upper()
    return s


def make_caption_set(rng):
    images, annotations, results = [], [], []
    for i in range(N_IMAGES):
        image_id = 1000 + 7 * i
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg"})
        base = caption(rng)
        for _ in range(5):
            # References share words with each other and often with the prediction.
            annotations.append({"image_id": image_id, "id": len(annotations) + 1,
                                "caption": base if rng.random() < 0.2 else caption(rng)})
        r = rng.random()
        if i == 3:
            pred = ""  # empty prediction
        elif i == 5:
            pred = " ".join(caption(rng) for _ in range(12))  # very long prediction
        elif i == 8:
            pred = "a a a a a a a a a a"  # repeated words
        elif r < 0.3:
            pred = base
        elif r < 0.5:
            pred = rng.choice(TRICKY)
        else:
            pred = caption(rng)
        results.append({"image_id": image_id, "caption": pred})
    # Predictions in a shuffled order: the evaluation order is the references'.
    rng.shuffle(results)
    return {"images": images, "annotations": annotations}, results


def coco_order(refs, results):
    """gts / res exactly as COCOEvalCap.evaluate builds them."""
    img_ids = [img["id"] for img in refs["images"]]
    gts = {i: [] for i in img_ids}
    for a in refs["annotations"]:
        gts[a["image_id"]].append({"caption": a["caption"]})
    res = {i: [] for i in img_ids}
    for r in results:
        res[r["image_id"]].append({"caption": r["caption"]})
    return img_ids, gts, res


def caption_reference(refs, results):
    img_ids, gts, res = coco_order(refs, results)
    tok = PTBTokenizer()
    gts_t = tok.tokenize(gts)
    res_t = tok.tokenize(res)
    bleu, bleus = Bleu(4).compute_score(gts_t, res_t, verbose=0)
    cider, ciders = Cider().compute_score(gts_t, res_t)
    return {
        "tool": "pycocoevalcap 1.2 (PTBTokenizer: stanford-corenlp-3.4.1), Bleu(4), Cider()",
        "image_ids": [str(i) for i in img_ids],
        "corpus": {"Bleu_1": bleu[0], "Bleu_2": bleu[1], "Bleu_3": bleu[2], "Bleu_4": bleu[3],
                   "CIDEr": float(cider)},
        "per_image": [
            {"image_id": str(i),
             "Bleu": [bleus[k][n] for k in range(4)],
             "CIDEr": float(ciders[n])}
            for n, i in enumerate(img_ids)
        ],
        "tokenized_references": [gts_t[i] for i in img_ids],
        "tokenized_predictions": [res_t[i][0] for i in img_ids],
    }


def tokenizer_lines():
    """Every tricky fragment alone and in caption position, through pycocoevalcap's tokenizer."""
    lines = list(TRICKY)
    extra = [
        "", "   ", ".", "etc.", "Co.", "A dog etc.", "Inc. A dog", "a dog etc.\u2028Next",
        "carriage\rreturn", "tabs\t\tonly", "A.B.C. is an acronym", "the end.", "U.S.",
        "'s", "n't", "dogs'", "James' hat", "rock 'n' roll", "3-4 dogs", "-5 degrees",
        "+3 more", "a 1,000,000 dollar", "10:30", "2.5.3", "$3.50", "US$5", "#hashtag",
        "@user name", "a&b", "AT&T", "R&D", "S&P-500", "pro- and anti- war", "C.D.s",
        "x_y", "__init__", "***", "a **bold** word", "semi;colon", "colon:here", "!!!",
        "?!", "wait...", "¿qué?", "«French» quotes", "a 'word' here", "'quoted start",
        "end quote'", "He said \"hi\".", "\"hi\"", "\" spaced \"", "``latex''", "5'10\"",
        "co-op", "e-mail", "x-ray", "T-shirt", "mother-in-law's", "one-and-a-half",
        "a 7-eleven store", "photo.jpg", "file.txt here", "see fig. 2", "no. 1 fan",
        "Sept. 11", "Jan. The", "Calif. is", "Mass. Ave.", "Ph.D. student", "a.m. and p.m.",
        "i.e. this", "Mt. Fuji", "Ft. Worth", "Ave. Maria", "Ms. Doe", "St. Paul's",
    ]
    lines += extra
    tok = PTBTokenizer()
    data = {i: [{"caption": line}] for i, line in enumerate(lines)}
    out = tok.tokenize(data)
    return [{"input": line, "tokenized": out[i][0]} for i, line in enumerate(lines)]


# Pieces for random lines: words, clitics, quotes, dashes, brackets, numbers, abbreviations,
# URLs, entities, non-ASCII and non-BMP characters, and the line breaks the lexer knows.
FUZZ_ATOMS = ["a", "dog", "Dog", "DOG", "man", "s", "t", "n", "'", "'s", "n't", "\u2019", "\u2018", "\"",
    "\u201c", "\u201d", "-", "--", "---", "_", ".", "..", "...", ",", ";", ":", "!", "?", "(", ")", "[", "]",
    "{", "}", "<", ">", "/", "\\", "*", "&", "&amp;", "#", "@", "$", "%", "+", "=", "~", "^", "|", "1", "2",
    "10", "3.5", "1,000", "3:30", "\u00bd", "\u00e9", "\u00fc", "\u4e2d", "\U0001f436", "\u03a9", "\u00df",
    "\u0130", "\u00a0", "\u00ad", "\t", "co", "etc", "Mr", "U.S", "p.m", "e.g", "ca", "no", "vs", "www",
    "com", "http://x.org", "x@y.com", "I", "A", "The", "He", "It", "We", "cannot", "gonna", "y", "o", "d",
    "l", "ll", "re", "ve", "m", "90s", "'90s", "cont'd", "i.e", "Inc", "Calif", "Jan", "St", "Ph.D",
    "\u2013", "\u00ab", "\u00bb", "\u2026", "\u00a2", "\u00a3", "\u20ac", "\u200b", "\ufeff", ":)",
    ";-(", "^_^", "(-_-)", "C++", "c#", "x-ray", "1/2", "12/25/2014", "555-123-4567", "(555) 123-4567",
    "S&P-500", "AT&T", "&quot;", "&apos;", "<br>", "<a href=\"x\">", "&mdash;", "&nbsp;", "\x7f", "\x00"]
FUZZ_BREAKS = ["\r", "\u2028", "\u0085", "\x0b", "\x0c"]


def fuzz_lines(rng, n, breaks):
    atoms = FUZZ_ATOMS + (FUZZ_BREAKS if breaks else [])
    lines = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice(atoms))
            parts.append(rng.choice(["", " ", " ", " ", "  "]))
        lines.append("".join(parts))
    return lines


def tokenize_batch(lines):
    """pycocoevalcap's tokenizer over one batch of lines (one tokenizer run)."""
    out = PTBTokenizer().tokenize({i: [{"caption": line}] for i, line in enumerate(lines)})
    return [{"input": line, "tokenized": out[i][0]} for i, line in enumerate(lines)]


# ----------------------------------------------------------------------------------------
# VQA: the official algorithm, transcribed
# ----------------------------------------------------------------------------------------

contractions = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've",
    "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've"}
manualMap = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5',
             'six': '6', 'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
articles = ['a', 'an', 'the']
periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
commaStrip = re.compile(r"(\d)(\,)(\d)")
punct = [';', r"/", '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!']


def processPunctuation(inText):
    outText = inText
    for p in punct:
        if (p + ' ' in inText or ' ' + p in inText) or (re.search(commaStrip, inText) != None):
            outText = outText.replace(p, '')
        else:
            outText = outText.replace(p, ' ')
    outText = periodStrip.sub("", outText, re.UNICODE)
    return outText


def processDigitArticle(inText):
    outText = []
    tempText = inText.lower().split()
    for word in tempText:
        word = manualMap.setdefault(word, word)
        if word not in articles:
            outText.append(word)
    for wordId, word in enumerate(outText):
        if word in contractions:
            outText[wordId] = contractions[word]
    return ' '.join(outText)


def vqa_evaluate(annotations, results, n=2):
    """VQAEval.evaluate + setAccuracy; annotations and results as in the official files."""
    qa = {a["question_id"]: json.loads(json.dumps(a)) for a in annotations}
    res = {r["question_id"]: r for r in results}
    assert set(res) == set(qa)
    accQA, accQuesType, accAnsType, evalQA = [], {}, {}, {}
    for quesId in [a["question_id"] for a in annotations]:
        resAns = res[quesId]['answer']
        resAns = resAns.replace('\n', ' ')
        resAns = resAns.replace('\t', ' ')
        resAns = resAns.strip()
        resAns = processPunctuation(resAns)
        resAns = processDigitArticle(resAns)
        gtAcc = []
        gtAnswers = [ans['answer'] for ans in qa[quesId]['answers']]
        if len(set(gtAnswers)) > 1:
            for ansDic in qa[quesId]['answers']:
                ansDic['answer'] = processPunctuation(ansDic['answer'])
        for gtAnsDatum in qa[quesId]['answers']:
            otherGTAns = [item for item in qa[quesId]['answers'] if item != gtAnsDatum]
            matchingAns = [item for item in otherGTAns if item['answer'] == resAns]
            acc = min(1, float(len(matchingAns)) / 3)
            gtAcc.append(acc)
        quesType = qa[quesId]['question_type']
        ansType = qa[quesId]['answer_type']
        avgGTAcc = float(sum(gtAcc)) / len(gtAcc)
        accQA.append(avgGTAcc)
        accQuesType.setdefault(quesType, []).append(avgGTAcc)
        accAnsType.setdefault(ansType, []).append(avgGTAcc)
        evalQA[quesId] = round(100 * avgGTAcc, n)
    return {
        "overall": round(100 * float(sum(accQA)) / len(accQA), n),
        "overall_unrounded": 100 * float(sum(accQA)) / len(accQA),
        "perQuestionType": {t: round(100 * float(sum(v)) / len(v), n) for t, v in accQuesType.items()},
        "perAnswerType": {t: round(100 * float(sum(v)) / len(v), n) for t, v in accAnsType.items()},
        "per_question_unrounded": [a for a in accQA],
    }


# Answers with their spelling variants: each needs one of the normalisation rules.
VQA_ITEMS = [
    ("yes/no", "is the", ["yes", "Yes", "yes.", "YES!", "yes "]),
    ("yes/no", "is this", ["no", "No", "no.", "no!", "nope"]),
    ("number", "how many", ["2", "two", "Two", "2.", "2 "]),
    ("number", "how many", ["10", "ten", "Ten.", "10!", "10"]),
    ("number", "how many", ["0", "none", "zero", "None", "0."]),
    ("number", "what time", ["3:30", "3:30.", "330", "3 30", "three thirty"]),
    ("number", "how much", ["1,000", "1000", "1,000.", "one thousand", "1 000"]),
    ("number", "what number is", ["3.5", "3.5.", "35", "3 5", "three"]),
    ("other", "what color is the", ["red", "Red", "the red", "a red", "red."]),
    ("other", "what is the", ["dont know", "don't know", "Dont know", "dont know.", "do not know"]),
    ("other", "what is the man", ["surfing", "Surfing!", "the surfing", "surfing?", "surf"]),
    ("other", "what kind of", ["black and white", "black-and-white", "black/white", "black & white", "b&w"]),
    ("other", "what is", ["hot dog", "hot-dog", "hotdog", "hot dog;", "(hot dog)"]),
    ("other", "where is the", ["on the table", "on table", "on a table", "table", "on the table."]),
    ("other", "what is the", ["its sunny", "it's sunny", "its sunny!", "sunny", "its, sunny"]),
    ("other", "who is", ["man's", "mans", "man", "the man", "a man's"]),
    ("other", "what sport", ["tennis", "Tennis", "tennis.", "TENNIS", "tenis"]),
    ("other", "what is on the", ["pizza", "a pizza", "pizza!", "pizza's", "pizzas"]),
    ("other", "what is the", ["u.s.", "us", "u.s", "U.S.", "usa"]),
    ("other", "what is in the", ["cat @ home", "cat@home", "cat home", "cat_home", "cat [home]"]),
    ("other", "what does the sign say", ["stop", "STOP", "\"stop\"", "stop sign", "`stop`"]),
    ("other", "why", ["youre right", "you're right", "youre right.", "right", "you are right"]),
    ("other", "what is the", ["1/2", "half", "1 2", "1/2.", "one half"]),
]


def make_vqa_set(rng):
    annotations, results, questions = [], [], []
    for i in range(N_QUESTIONS):
        ans_type, q_type, variants = rng.choice(VQA_ITEMS)
        qid = 50000 + 3 * i
        answers = []
        mode = rng.random()
        for k in range(10):
            if mode < 0.15:
                a = variants[0]  # all ten the same: no punctuation processing
            else:
                a = rng.choice(variants[:3] if rng.random() < 0.7 else variants)
            answers.append({"answer": a, "answer_confidence": rng.choice(["yes", "maybe", "no"]),
                            "answer_id": k + 1})
        annotations.append({"question_id": qid, "image_id": 9000 + i, "question_type": q_type,
                            "answer_type": ans_type, "answers": answers,
                            "multiple_choice_answer": variants[0]})
        questions.append({"question_id": qid, "image_id": 9000 + i, "question": f"{q_type} ...?"})
        r = rng.random()
        if r < 0.6:
            pred = rng.choice(variants)
        elif r < 0.7:
            pred = "  " + rng.choice(variants).upper() + "\t"
        elif r < 0.8:
            pred = rng.choice(variants) + "\n" + "!"
        else:
            pred = rng.choice(rng.choice(VQA_ITEMS)[2])
        results.append({"question_id": qid, "answer": pred})
    rng.shuffle(results)
    return annotations, results, questions


def write(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")


def write_jsonl(name, rows):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(SEED)

    refs, results = make_caption_set(rng)
    write("captions_references.json", refs)
    write("captions_predictions.json", results)
    # The same predictions as `blip2 dataset caption` rows, plus two failed rows.
    rows = [{"id": str(r["image_id"]), "path": f"images/{r['image_id']:012d}.jpg",
             "text": r["caption"], "error": None} for r in results]
    rows.insert(7, {"id": "broken-1", "path": "images/broken-1.jpg", "text": None,
                    "error": "cannot decode image"})
    rows.append({"id": "broken-2", "path": "images/broken-2.png", "text": None,
                 "error": "file not found"})
    write_jsonl("captions_predictions.jsonl", rows)
    # The references as a results-style list (several captions per image).
    write("captions_references_list.json",
          [{"image_id": a["image_id"], "caption": a["caption"]} for a in refs["annotations"]])
    write("captions_expected.json", caption_reference(refs, results))
    write("ptb_expected.json", tokenizer_lines())
    # Random lines (own seed): one batch without line breaks, one with (where later lines
    # shift onto the following captions, as in pycocoevalcap).
    fuzz_rng = random.Random(SEED + 1)
    write("ptb_fuzz_expected.json", {
        "plain": tokenize_batch(fuzz_lines(fuzz_rng, 1500, False)),
        "with_breaks": tokenize_batch(fuzz_lines(fuzz_rng, 300, True)),
    })

    anns, vqa_results, questions = make_vqa_set(rng)
    write("vqa_annotations.json", {"annotations": anns})
    write("vqa_questions.json", {"questions": questions})
    write("vqa_predictions.json", vqa_results)
    write_jsonl("vqa_annotations.jsonl",
                [{"question_id": a["question_id"], "answer_type": a["answer_type"],
                  "question_type": a["question_type"],
                  "answers": [x["answer"] for x in a["answers"]]} for a in anns])
    write_jsonl("vqa_predictions.jsonl",
                [{"id": str(r["question_id"]), "path": "", "text": r["answer"], "error": None}
                 for r in vqa_results])
    expected = vqa_evaluate(anns, vqa_results)
    expected["tool"] = "official vqaEval.py algorithm (GT-Vision-Lab/VQA c4e6a0e), transcribed"
    expected["question_ids"] = [str(a["question_id"]) for a in anns]
    write("vqa_expected.json", expected)
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
