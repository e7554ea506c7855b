"""Tests for mllm_study.metrics: golden values worked out by hand, reference implementations, bad inputs."""
import math
import random
import shutil

import pytest

from mllm_study import metrics
from mllm_study.metrics import (MetricResult, compute_metric, extract_choice, find_objects, get_metric, list_metrics,
                                normalize_answer, parse_yes_no, ptb_tokenize, register_metric, tokenize_captions,
                                vqa_process_answer)

HAVE_JAVA = shutil.which("java") is not None
ALL = ["accuracy", "chair", "cider", "mc_accuracy", "pope", "vqa_score"]


# ---- registry ----------------------------------------------------------------------------------------------------
def test_registry_lists_all_metrics_with_provenance():
    assert list_metrics() == ALL
    for name in ALL:
        m = get_metric(name)
        assert m.name == name and m.version and "http" in m.reference
    assert get_metric("chair").higher_is_better is False and get_metric("cider").higher_is_better is True


def test_unknown_metric_lists_names_and_suggests():
    with pytest.raises(ValueError, match=r"unknown metric 'vqa_scor'.*accuracy, chair.*did you mean 'vqa_score'"):
        get_metric("vqa_scor")
    with pytest.raises(ValueError, match="known metrics"):
        compute_metric("bleu", ["a"], [["a"]])


def test_register_metric_and_duplicate():
    @register_metric("test_len", True, "test only", "0")
    def length(predictions, references):
        return MetricResult(0.0, [float(len(p)) for p in predictions], {})
    try:
        assert length(["ab"], [["x"]]).per_item == [2.0]  # the decorator returns fn unchanged
        assert compute_metric("test_len", ["abc", None], [["x"], ["y"]]).per_item == [3.0, 0.0]  # None -> ""
        with pytest.raises(ValueError, match="already registered"):
            register_metric("test_len", True, "", "0")(length)
    finally:
        del metrics._REGISTRY["test_len"]


# ---- input validation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preds, refs, exc, msg", [
    (["a", "b"], [["a"]], ValueError, "2 predictions and 1 references"),
    ([], [], ValueError, "empty"),
    ("a", [["a"]], TypeError, "predictions must be a list"),
    (["a"], [[]], ValueError, r"references\[0\] is an empty list"),
    (["a"], ["a"], TypeError, r"references\[0\] must be a list of str"),
    (["a"], [["a", 3]], TypeError, r"references\[0\] must be a list of str .*got \[.a., 3\]"),
    (["a", 7], [["a"], ["b"]], TypeError, r"predictions\[1\] must be a str or None, got int"),
])
def test_bad_inputs_raise_clear_errors(preds, refs, exc, msg):
    with pytest.raises(exc, match=msg):
        compute_metric("accuracy", preds, refs)


def test_bad_metric_options():
    with pytest.raises(ValueError, match="needs the keyword argument choices="):
        compute_metric("mc_accuracy", ["A"], [["A"]])
    with pytest.raises(ValueError, match="choices must be a list with one entry per prediction: expected 2, got 1"):
        compute_metric("mc_accuracy", ["A", "B"], [["A"], ["B"]], choices=[["x", "y"]])
    with pytest.raises(ValueError, match="neither a letter A..B nor one of the choices"):
        compute_metric("mc_accuracy", ["A"], [["D"]], choices=[["x", "y"]])
    with pytest.raises(ValueError, match=r"must be \['yes'\] or \['no'\]"):
        compute_metric("pope", ["yes"], [["maybe"]])
    with pytest.raises(ValueError, match="tokenizer must be"):
        compute_metric("cider", ["a"], [["a"]], tokenizer="spacy")
    with pytest.raises(TypeError):
        compute_metric("accuracy", ["a"], [["a"]], choices=[["a"]])  # unknown option


def test_empty_or_none_prediction_scores_zero_everywhere():
    assert compute_metric("vqa_score", ["", None], [["yes"] * 10, [""] * 10]).per_item == [0.0, 0.0]
    assert compute_metric("accuracy", ["", None], [["yes"], [""]]).per_item == [0.0, 0.0]
    assert compute_metric("mc_accuracy", [""], [["A"]], choices=[["x", "y"]]).per_item == [0.0]
    assert compute_metric("cider", ["", "a cat"], [["a dog"], ["a cat"]], tokenizer="python").per_item[0] == 0.0
    # POPE: an empty answer is wrong whatever the label (it would be "yes" under POPE's own rule).
    assert compute_metric("pope", ["", None], [["yes"], ["no"]]).per_item == [0.0, 0.0]


# ---- vqa_score ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, processed", [
    ("yes.", "yes"),               # period not followed by a digit is deleted
    ("Yes\n", "yes"),              # newline -> space, strip, lowercase
    ("it's", "it's"),              # apostrophe is not in the punct list
    ("1,000", "1000"),             # digit-comma-digit: every punct char is deleted, not spaced
    ("2.5", "2.5"),                # period before a digit is kept
    ("two", "2"), ("Ten", "10"), ("none", "0"),
    ("a dog", "dog"), ("The Red Car", "red car"), ("an apple", "apple"),
    ("dont", "don't"), ("isnt", "isn't"), ("whats up", "what's up"),
    ("black/white", "black white"),  # punct touching no space -> space
    ("red !", "red"),              # punct next to a space -> deleted
    ("hot-dog", "hot dog"), ("(left)", "left"),
])
def test_vqa_answer_processing(raw, processed):
    assert vqa_process_answer(raw) == processed


@pytest.mark.parametrize("n_match, expected", [
    (0, 0.0),
    # 1 match: 9 subsets drop a non-match and keep 1 match -> 1/3; 1 subset drops it -> 0: 9/3/10 = 0.3
    (1, 0.3),
    # 2 matches: 8 subsets keep both -> 2/3; 2 subsets keep one -> 1/3: (8*2/3 + 2*1/3)/10 = 0.6
    (2, 0.6),
    # 3 matches: 7 subsets keep all three -> 1; 3 subsets keep two -> 2/3: (7 + 3*2/3)/10 = 0.9
    (3, 0.9),
    # 4 matches: every subset keeps >= 3 -> 1
    (4, 1.0),
])
def test_vqa_leave_one_out(n_match, expected):
    refs = ["dog"] * n_match + ["cat"] * (10 - n_match)
    assert compute_metric("vqa_score", ["A dog."], [refs]).value == pytest.approx(expected)


def test_vqa_reference_processing_is_official():
    # Different references get processPunctuation: "yes." -> "yes", so 2 + 2 "yes" -> 4 matches -> 1.0.
    assert compute_metric("vqa_score", ["yes"], [["yes."] * 2 + ["yes"] * 2 + ["no"] * 6]).value == 1.0
    # ... but no processDigitArticle: "a dog" stays, the prediction "a dog" becomes "dog": 5 matches ("dog") -> 1.0
    assert compute_metric("vqa_score", ["a dog"], [["a dog"] * 5 + ["dog"] * 5]).value == 1.0
    # and with 2 "dog" among 8 "a dog" it is the 2-of-10 case: 0.6
    assert compute_metric("vqa_score", ["a dog"], [["a dog"] * 8 + ["dog"] * 2]).value == pytest.approx(0.6)
    # Identical references are compared verbatim: "a dog"/"two"/"Yes" never match a processed prediction.
    assert compute_metric("vqa_score", ["a dog", "two", "Yes"], [["a dog"] * 10, ["two"] * 10, ["Yes"] * 10]).value == 0
    res = compute_metric("vqa_score", ["a dog", "two", "Yes"], [["a dog"] * 10, ["two"] * 10, ["Yes"] * 10],
                         normalize_references=True)
    assert res.per_item == [1.0, 1.0, 1.0]
    # digit references (as in the official annotations) match number words: "two" -> "2"; commas: "1,000" -> "1000"
    assert compute_metric("vqa_score", ["two", "1,000"], [["2"] * 10, ["1000"] * 10]).per_item == [1.0, 1.0]
    assert compute_metric("vqa_score", ["dont"], [["don't"] * 10]).value == 1.0


def test_vqa_other_reference_counts():
    # 3 references all matching: each subset has 2 matches -> 2/3
    assert compute_metric("vqa_score", ["red"], [["red"] * 3]).value == pytest.approx(2 / 3)
    # 5 references, 4 match: 4 subsets keep 3 -> 1, 1 subset keeps 4 -> 1: 1.0; 2 match: (3*2/3... ) worked out:
    # 2 of 5: 3 subsets drop a non-match -> 2/3, 2 subsets drop a match -> 1/3: (3*2/3 + 2/3)/5 = 8/15
    assert compute_metric("vqa_score", ["red"], [["red"] * 2 + ["blue"] * 3]).value == pytest.approx(8 / 15)
    # one reference: exact match after processing
    assert compute_metric("vqa_score", ["Red.", "blue"], [["red"], ["red"]]).per_item == [1.0, 0.0]
    # value = mean over items: (1 + 0.6 + 0) / 3
    res = compute_metric("vqa_score", ["x", "x", "y"], [["x"] * 10, ["x"] * 2 + ["z"] * 8, ["x"] * 10])
    assert res.value == pytest.approx(1.6 / 3) and res.extra == {}


# ---- accuracy ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, norm", [
    ("  Red. ", "red"), ("Two  Dogs.", "2 dogs"), ("ten", "10"), ("none", "none"), ("3.5", "3.5"), ("A.B.", "a.b"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_accuracy_golden():
    preds = ["Red.", "two", "blue", "The cat"]
    refs = [["red"], ["2"], ["green", "Blue"], ["cat"]]
    # red==red, "2"=="2", "blue" in {green, blue}, "the cat" != "cat" (articles are kept): 3/4
    res = compute_metric("accuracy", preds, refs)
    assert res.per_item == [1.0, 1.0, 1.0, 0.0] and res.value == 0.75


# ---- mc_accuracy -------------------------------------------------------------------------------------------------
OPTIONS = ["red", "blue", "dark blue"]


@pytest.mark.parametrize("text, expected", [
    ("B", 1), ("b", 1), ("B.", 1), ("(B)", 1), ("B)", 1), ("[C]", 2), ("B:", 1),
    ("The answer is B", 1), ("The answer is B.", 1), ("Answer: B.", 1), ("answer: (c)", 2), ("The answer is b.", 1),
    ("Option C is correct", 2), ("blue", 1), ("Blue.", 1), ("The answer is blue.", 1), ("B. blue", 1),
    ("C) dark blue", 2), ("(a) red", 0), ("It is dark blue", 2), ("I think (B)", 1), ("I think it's B.", 1),
    ("B. red", 1),                      # a leading letter wins over the option text
    ("A dog", None),                    # article, not a letter
    ("The answer is a dog", None),      # lower-case "a" followed by a word is not a letter
    ("red or blue", None), ("A or B", None), ("A is right", 0), ("D", None), ("purple", None), ("", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


def test_mc_accuracy_golden():
    preds = ["B", "The answer is (A).", "dark blue", "A or C", "blue"]
    refs = [["B"], ["(a)"], ["C"], ["A"], ["Blue"]]  # last gold given as option text
    res = compute_metric("mc_accuracy", preds, refs, choices=[OPTIONS] * 5)
    # right, right, right, ambiguous (wrong, unparsed), right: 4/5
    assert res.per_item == [1.0, 1.0, 1.0, 0.0, 1.0] and res.value == 0.8 and res.extra == {"unparsed": 1.0}


# ---- cider -------------------------------------------------------------------------------------------------------
def test_cider_golden_hand_computed():
    # N = 2 items, one reference each, so idf = ln 2 - ln(max(1, df)) = ln 2 for every n-gram seen (df 0 or 1).
    # Item 1 "red dog" vs "red dog": cosine 1 for 1- and 2-grams, 0 for 3-, 4-grams: (1 + 1 + 0 + 0)/4 * 10 = 5.
    # Item 2 "blue cat" vs "green cat": unigrams {blue, cat} . {green, cat} = ln2^2 / (sqrt2 ln2)^2 = 1/2,
    # bigrams disjoint: (0.5 + 0 + 0 + 0)/4 * 10 = 1.25. value = (5 + 1.25)/2 = 3.125.
    res = compute_metric("cider", ["red dog", "blue cat"], [["red dog"], ["green cat"]], tokenizer="python")
    assert res.per_item == pytest.approx([5.0, 1.25]) and res.value == pytest.approx(3.125)
    # Length penalty: "dog" (0 bigrams) vs "red dog" (1 bigram): delta 1 -> exp(-1/72); unigram cosine
    # ln2^2 / (ln2 * sqrt2 ln2) = 1/sqrt2: 10/4 * exp(-1/72)/sqrt2; "cat" vs "cat" = 10/4 = 2.5.
    res = compute_metric("cider", ["dog", "cat"], [["red dog"], ["cat"]], tokenizer="python")
    assert res.per_item == pytest.approx([2.5 * math.exp(-1 / 72) / math.sqrt(2), 2.5])
    # A single-item set has idf 0 everywhere -> 0 (as pycocoevalcap).
    assert compute_metric("cider", ["a dog"], [["a dog"]], tokenizer="python").value == 0.0


def _random_caption(rng, vocab):
    words = [rng.choice(vocab) for _ in range(rng.randint(1, 14))]
    for i in range(len(words)):
        if rng.random() < 0.1:
            words[i] += rng.choice([",", ".", "!", "'s", ";"])
    text = " ".join(words)
    return (text[0].upper() + text[1:] + rng.choice(["", ".", " ."])) if rng.random() < 0.5 else text


@pytest.mark.slow
def test_cider_equals_pycocoevalcap_on_random_sets():
    from pycocoevalcap.cider.cider import Cider
    rng = random.Random(1234)
    for trial in range(60):
        vocab = rng.sample("a an the man woman dog dogs cat red blue green sits sitting on top of table with near big "
                           "small two three riding wave surfboard street car bus tree grass field ball kid kids "
                           "playing holding pizza plate white black young old water beach".split(), rng.randint(6, 40))
        n = rng.randint(2, 8)
        preds = [_random_caption(rng, vocab) if rng.random() > 0.05 else "" for _ in range(n)]
        refs = [[_random_caption(rng, vocab) for _ in range(5)] for _ in range(n)]
        res = compute_metric("cider", preds, refs, tokenizer="python")
        gts = {i: [ptb_tokenize(r) for r in refs[i]] for i in range(n)}
        score, scores = Cider().compute_score(gts, {i: [ptb_tokenize(preds[i])] for i in range(n)})
        assert res.value == pytest.approx(score, abs=1e-6), trial
        assert res.per_item == pytest.approx(list(scores), abs=1e-6), trial
        assert res.extra == {"ptb_java": 0.0}


PTB_CASES = [
    "A man riding a wave on top of a surfboard.", "It's a dog's toy, isn't it? Don't, can't, won't, I'm, they're.",
    "The dogs' bowls are \"red\" and 'blue'.", "A black-and-white photo - of a cat -- sleeping...",
    "(A cat) [on a mat] {with a hat}", "It costs $5.50 or 1,000 yen, 50% off & more!", "a/b and c*d; 5:30 pm",
    "Mr. Smith lives in the U.S. He met Dr. Jones at 3 p.m.", "A girl is eating a hot-dog.Then she left",
    "Two cats:one white and one black", "hello!!! what?! okay?? A.. B", "cannot gonna wanna 'tis y'all",
    "the '90s and rock'n'roll and o'clock", "1.5m 12:00pm and an old-fashioned T-shirt.", "  Two  spaces\tand tab ",
    "St. Louis, etc. and no. 5", "it\u2019s \u201ccurly\u201d \u2013 dash \u2026", "A cat .A dog , a bird",
]


@pytest.fixture(scope="module")
def java_ptb():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    out = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(PTB_CASES)})
    return [out[i][0] for i in range(len(PTB_CASES))]


@pytest.mark.skipif(not HAVE_JAVA, reason="java is not on PATH")
def test_python_tokenizer_equals_ptbtokenizer(java_ptb):
    assert [ptb_tokenize(c) for c in PTB_CASES] == java_ptb
    assert tokenize_captions(PTB_CASES + ["", "  "], "ptb") == java_ptb + ["", ""]


@pytest.mark.skipif(not HAVE_JAVA, reason="java is not on PATH")
def test_cider_with_java_equals_pycocoevalcap_pipeline(java_ptb):
    from pycocoevalcap.cider.cider import Cider
    preds, refs = PTB_CASES[:6], [PTB_CASES[6:12]] * 3 + [PTB_CASES[12:18]] * 3
    tok_refs = [java_ptb[6:12]] * 3 + [java_ptb[12:18]] * 3  # same strings -> same tokens
    score, scores = Cider().compute_score(dict(enumerate(tok_refs)), {i: [java_ptb[i]] for i in range(6)})
    res = compute_metric("cider", preds, refs)  # auto -> java
    assert res.extra["ptb_java"] == 1.0
    assert res.value == pytest.approx(score, abs=1e-9) and res.per_item == pytest.approx(list(scores), abs=1e-9)


def test_cider_auto_without_java_uses_python(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    res = compute_metric("cider", ["A dog.", "a cat"], [["a dog", "the dog"], ["a cat", "cats"]])
    assert res.extra["ptb_java"] == 0.0
    assert res == compute_metric("cider", ["A dog.", "a cat"], [["a dog", "the dog"], ["a cat", "cats"]],
                                 tokenizer="python")
    with pytest.raises(RuntimeError, match="needs java"):
        tokenize_captions(["a"], "ptb")


# ---- pope --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("yes.", "yes"), ("Yes, there is a dog.", "yes"), ("No", "no"), ("NO!", "no"),
    ("No, there is not.", "no"), ("There is not a cat.", "no"), ("Yes. But there is no cat.", "yes"),
    ("Yes, but no cat", "no"),  # commas are dropped, not split on (as POPE): "no" in the first sentence wins
    ("There is a dog.", None), ("There isn't a dog", None), ("nothing", None), ("", None),
    # POPE's script: "not" anywhere in the first sentence is a no; what it calls yes otherwise is None here
    ("There is not a dog in the image.", "no"), ("I cannot tell", None), ("a yellow left", None),
])
def test_parse_yes_no(text, parsed):
    assert parse_yes_no(text) == parsed


def test_pope_golden_counts():
    # Parsed as the POPE script (first sentence, commas dropped, "no"/"not" first); where that script calls every
    # other answer a yes, here "There is a cat", "I cannot tell" and the caption fragment are unparsed.
    preds = ["Yes", "yes, there is", "No.", "no", "Yes", "There is a cat", "I cannot tell", "No", "a yellow left",
             "There is not a dog. Yes."]
    labels = ["yes", "yes", "yes", "no", "no", "yes", "no", "no", "yes", "no"]
    # parsed: yes yes no no yes - - no - no
    # TP = items 0, 1 = 2; FN = item 2 = 1; FP = item 4 = 1; TN = items 3, 7, 9 = 3; unparsed 5, 6, 8 (5, 8 positive)
    # precision 2/3, recall 2/5 (5 positive probes), F1 = 2 * (2/3) * (2/5) / (2/3 + 2/5) = 1/2;
    # accuracy (2 + 3)/10; yes ratio (2 + 1)/10 (an unparsed answer is not a yes); parse rate 7/10
    res = compute_metric("pope", preds, [[lab] for lab in labels])
    assert res.per_item == [1, 1, 0, 1, 0, 0, 0, 1, 0, 1]
    assert res.value == pytest.approx(0.5)
    assert res.extra == pytest.approx({"accuracy": 0.5, "precision": 2 / 3, "recall": 0.4, "f1": 0.5,
                                       "yes_ratio": 0.3, "parse_rate": 0.7, "tp": 2, "fp": 1, "tn": 3, "fn": 1,
                                       "unparsed": 3, "unparsed_positive": 2})
    # no positive predictions at all: precision/recall/F1 are 0, not an error
    assert compute_metric("pope", ["no", "no"], [["no"], ["no"]]).extra["f1"] == 0.0


def test_pope_unparsed_is_wrong_on_both_labels_and_never_a_yes():
    # The case: caption fragments to every probe. Under POPE's rule they would all be "yes" (yes ratio 1,
    # accuracy = share of positive probes); here every one is wrong and the yes ratio is 0.
    res = compute_metric("pope", ["a yellow left"] * 4, [["yes"], ["no"], ["yes"], ["no"]])
    assert res.per_item == [0.0] * 4
    assert (res.extra["accuracy"], res.extra["yes_ratio"], res.extra["parse_rate"], res.value) == (0, 0, 0, 0)
    assert res.extra["unparsed"] == 4 and res.extra["unparsed_positive"] == 2
    # an all-"yes" model: accuracy = share of positives, F1 of the yes class 2p/(1+p) with p = 1/2 -> 2/3
    res = compute_metric("pope", ["Yes"] * 4, [["yes"], ["no"], ["yes"], ["no"]])
    assert (res.extra["accuracy"], res.extra["yes_ratio"], res.extra["parse_rate"]) == (0.5, 1.0, 1.0)
    assert res.value == pytest.approx(2 / 3)
    assert get_metric("pope").version == "2"  # scores changed: unparsed answers no longer count as yes


# ---- chair -------------------------------------------------------------------------------------------------------
SYN = {"circle": ["ring"], "square": ["box"], "hot dog": ["hotdog"], "dog": ["puppy"], "bus": [], "person": ["people"]}


def test_find_objects_rules():
    assert find_objects("Two hot dogs, a Dog and puppies near the buses; a catalog of rings", SYN) == \
        ["hot dog", "dog", "dog", "bus", "circle"]
    assert find_objects("people and a person", SYN) == ["person", "person"]
    assert find_objects("boxing", SYN) == []  # word boundaries
    with pytest.raises(ValueError, match="listed for both"):
        find_objects("x", {"a": ["thing"], "b": ["thing"]})


def test_chair_golden_counts():
    captions = ["A red circle and a blue square.",        # mentions circle, square: both true
                "A circle, a dog and two dogs.",          # circle (true), dog, dog (not in image): 2 hallucinated
                "A puppy eating a hotdog near a ring.",   # dog true, hot dog hallucinated, circle true
                ""]                                       # no mentions
    objects = [["red circle", "blue square"], ["circle"], ["small dog", "green ring"], ["bus"]]
    res = compute_metric("chair", captions, [[""]] * 4, objects=objects, synonyms=SYN)
    # captions hallucinating: 2nd and 3rd -> chair_s = 2/4; mentions 2 + 3 + 3 = 8, hallucinated 2 + 1 = 3
    assert res.per_item == [0.0, 1.0, 1.0, 0.0] and res.value == 0.5
    # recall: ground truth {circle, square}, {circle}, {dog, circle}, {bus}: 2 + 1 + 2 + 0 mentioned of 6
    assert res.extra == pytest.approx({"chair_s": 0.5, "chair_i": 3 / 8, "mentions": 8, "hallucinated": 3,
                                       "recall": 5 / 6})
    with pytest.raises(ValueError, match="objects"):
        compute_metric("chair", captions, [[""]] * 4, synonyms=SYN)
    with pytest.raises(ValueError, match="synonyms"):
        compute_metric("chair", captions, [[""]] * 4, objects=objects)
