"""Named metric variants: each checked on cases whose expected scores come from running its reference code.

Usage: ``.venv/bin/python -m pytest tests/test_metric_variants.py -q``

How the expected values were obtained (once, outside this repository; no reference code is copied here):
- ``official-2016``: GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at commit 458a8b2
  (2016-10-08), ``VQAEval.evaluate`` on one question with these ten answers.
- ``official-2021``: the same file at commit a013f00 (2021-03-11, "Fixed processing answers bug").
- ``lmms-eval``: EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks/_task_utils/vqa_eval_metric.py``
  ``EvalAIAnswerProcessor.__call__`` on prediction and answers, scored as ``tasks/ok_vqa/utils.py`` (and
  ``vizwiz_vqa/utils.py``) do; ``lmms-eval-vqav2``: as ``tasks/vqav2/utils.py`` (punctuation + digit/article).
- POPE ``llava``: haotian-liu/LLaVA ``llava/eval/eval_pope.py`` (first sentence, commas dropped, split on " ",
  "No"/"not"/"no" -> no, else yes).
"""

from __future__ import annotations

import pytest

from mllm_study.metrics import compute_metric, get_metric, parse_yes_no_llava

VARIANTS = ("official-2016", "official-2021", "lmms-eval", "lmms-eval-vqav2")
TEN = 10

# (prediction, references, expected score under official-2016, official-2021, lmms-eval, lmms-eval-vqav2)
VQA_CASES = [
    # unanimous references are compared verbatim in 2021 (the prediction is not processed either)
    ("two", ["2"] * TEN, 1.0, 0.0, 1.0, 1.0),
    ("Yes", ["yes"] * TEN, 1.0, 0.0, 1.0, 1.0),
    ("yes.", ["yes"] * TEN, 1.0, 0.0, 1.0, 1.0),
    ("the dog", ["dog"] * TEN, 1.0, 0.0, 1.0, 1.0),
    ("1,000", ["1000"] * TEN, 1.0, 0.0, 1.0, 1.0),
    # 2016 processes the prediction but compares it with unanimous references as annotated
    ("t-shirt", ["t-shirt"] * TEN, 0.0, 1.0, 1.0, 1.0),
    ("Yes", ["Yes"] * TEN, 0.0, 1.0, 1.0, 1.0),
    ("what?", ["what?"] * TEN, 0.0, 1.0, 1.0, 1.0),
    # 2016 never applies digit/article processing to references
    ("two", ["two"] * 4 + ["three"] * 6, 0.0, 1.0, 1.0, 1.0),
    # lmms-eval's word_tokenize: "'s" -> " 's" on both sides, commas dropped before the digit-comma rule
    ("man 's", ["man's"] * TEN, 0.0, 0.0, 1.0, 0.0),
    ("1,,000", ["1000"] * 9 + ["100"], 0.0, 0.0, 1.0, 1.0),
    # cases all four agree on
    ("it's", ["its"] * 5 + ["it's"] * 5, 1.0, 1.0, 1.0, 1.0),
    ("Yes", ["yes"] * 9 + ["no"], 1.0, 1.0, 1.0, 1.0),
    ("black/white", ["black and white"] + ["black white"] * 3 + ["black/white"] * 4 + ["gray", "grey"],
     1.0, 1.0, 1.0, 1.0),
    ("man's", ["man's"] * 3 + ["mans"] * 3 + ["man"] * 4, 0.9, 0.9, 0.9, 0.9),
    ("dont know", ["don't know"] * 3 + ["unknown"] * 7, 0.9, 0.9, 0.9, 0.9),
    ("cat's toy", ["cats toy"] * 3 + ["cat's toy"] * 2 + ["toy"] * 5, 0.6, 0.6, 0.6, 0.6),
    ("red\n", ["red"] * TEN, 1.0, 1.0, 1.0, 1.0),
]


@pytest.mark.parametrize("pred, refs, expected", [(c[0], c[1], c[2:]) for c in VQA_CASES])
def test_vqa_score_variants_match_their_reference_code(pred, refs, expected):
    got = [compute_metric("vqa_score", [pred], [refs], variant=v).value for v in VARIANTS]
    assert got == pytest.approx(expected, abs=1e-4)


def test_the_default_vqa_variant_is_official_2016_and_is_recorded():
    preds, refs = [c[0] for c in VQA_CASES], [c[1] for c in VQA_CASES]
    default = compute_metric("vqa_score", preds, refs)
    assert default.variant == "official-2016" and get_metric("vqa_score").default_variant == "official-2016"
    assert default.per_item == compute_metric("vqa_score", preds, refs, variant="official-2016").per_item
    assert default.per_item == pytest.approx([c[2] for c in VQA_CASES], abs=1e-4)
    assert compute_metric("vqa_score", preds, refs, variant="official-2021").variant == "official-2021"
    assert set(get_metric("vqa_score").variants) == set(VARIANTS)


def test_unknown_variants_are_errors_that_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown variant 'official-2020' of metric 'vqa_score'; variants: "
                                         r"official-2016, official-2021, lmms-eval, lmms-eval-vqav2; did you mean"):
        compute_metric("vqa_score", ["a"], [["a"]], variant="official-2020")
    with pytest.raises(ValueError, match=r"variant 'strict' of metric 'accuracy'; variants: none"):
        compute_metric("accuracy", ["a"], [["a"]], variant="strict")
    assert compute_metric("accuracy", ["a"], [["a"]]).variant is None


# (model output, LLaVA eval_pope.py's reading, this project's strict reading; None = unparsed)
POPE_CASES = [
    ("Yes", "yes", "yes"), ("No", "no", "no"), ("yes", "yes", "yes"), ("no", "no", "no"),
    ("NO", "yes", "no"), ("No!", "yes", "no"), ("Not sure", "yes", "no"), ("not sure", "no", "no"),
    ("Yes, there is a dog.", "yes", "yes"), ("No, there is no dog.", "no", "no"),
    ("There is no dog in the image.", "no", "no"), ("I cannot tell", "yes", None), ("", "yes", None),
    ("Yes. No.", "yes", "yes"), ("Nope", "yes", None), ("The answer is no", "no", "no"),
    ("Yes, but not clearly", "no", "no"), ("isn't there", "yes", None),
]


@pytest.mark.parametrize("output, llava, strict", POPE_CASES)
def test_pope_llava_reading_matches_eval_pope(output, llava, strict):
    assert parse_yes_no_llava(output) == llava
    for label in ("yes", "no"):
        assert compute_metric("pope", [output], [[label]], variant="llava").per_item == [float(llava == label)]
        assert compute_metric("pope", [output], [[label]]).per_item == [float(strict == label)]


def test_pope_variants_change_the_counts_as_the_references_do():
    outputs = ["NO", "No!", "Not sure", "no", "yes", "I cannot tell"]
    labels = [["no"], ["no"], ["no"], ["no"], ["yes"], ["yes"]]
    strict = compute_metric("pope", outputs, labels)
    llava = compute_metric("pope", outputs, labels, variant="llava")
    assert strict.variant == "strict" and llava.variant == "llava"
    # strict: 4 true negatives, 1 true positive, 1 unparsed positive -> precision 1, recall 1/2, F1 2/3
    assert (strict.extra["tn"], strict.extra["tp"], strict.extra["unparsed"]) == (4, 1, 1)
    assert strict.value == pytest.approx(2 / 3)
    # llava: NO, No!, Not sure and "I cannot tell" are yes -> tp 2, fp 3, tn 1 -> P 2/5, R 1, F1 4/7
    assert (llava.extra["tp"], llava.extra["fp"], llava.extra["tn"], llava.extra["unparsed"]) == (2, 3, 1, 0)
    assert llava.value == pytest.approx(4 / 7) and llava.extra["yes_ratio"] == pytest.approx(5 / 6)


def _vqa_folder(tmp_path):
    import json

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds/dataset.json").write_text(json.dumps({"name": "toy", "metric": "vqa_score"}))
    turns = [{"from": "human", "value": "How many?"}, {"from": "gpt", "value": "2"}]
    records = [{"id": f"q{i}", "conversations": turns, "references": refs}
               for i, (_, refs, *_) in enumerate(VQA_CASES[:3])]
    (tmp_path / "ds/test.json").write_text(json.dumps(records))
    return tmp_path / "ds", [c[0] for c in VQA_CASES[:3]]


def test_evaluate_dataset_and_score_predictions_take_and_record_the_variant(tmp_path, monkeypatch):
    import json

    from mllm_study import evaluate

    folder, preds = _vqa_folder(tmp_path)
    monkeypatch.setattr(evaluate, "generate_predictions", lambda model, processor, records, *a, **k: preds)
    default = evaluate.evaluate_dataset(None, None, folder)["vqa_score"]
    v2021 = evaluate.evaluate_dataset(None, None, folder, metric_variants={"vqa_score": "official-2021"})["vqa_score"]
    assert (default.variant, default.value) == ("official-2016", 1.0)  # two/Yes/yes. vs ten 2/yes/yes: 1, 1, 1
    assert (v2021.variant, v2021.value) == ("official-2021", 0.0)  # compared verbatim: 0, 0, 0
    assert v2021.summary()["variant"] == "official-2021"
    with pytest.raises(ValueError, match="unknown variant 'llava' of metric 'vqa_score'"):
        evaluate.evaluate_dataset(None, None, folder, metric_variants={"vqa_score": "llava"})
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prediction": p}) + "\n" for i, p in enumerate(preds)))
    scored = evaluate.score_predictions(path, folder, variant="lmms-eval")
    assert (scored.variant, scored.value) == ("lmms-eval", 1.0)


def test_a_run_scores_with_its_metric_variant_and_records_it(smoke_params, smoke_model_dir, tmp_path):
    """run.metric_variants reaches the evaluation, enters metrics.json and the run id (defaults stay out of it)."""
    import dataclasses
    import json

    from mllm_study.runs import execute_run, resolve_spec, run_id

    base = dataclasses.replace(smoke_params, paths=dataclasses.replace(smoke_params.paths, runs=str(tmp_path)))
    run = dataclasses.replace(base.run, method="none", dataset="vqav2", eval_datasets=["pope"], test_size=8)
    default = dataclasses.replace(base, run=run)
    llava = dataclasses.replace(base, run=dataclasses.replace(run, metric_variants={"pope": "llava"}))
    assert "metric_variants" not in resolve_spec(default, progress=False)["run"]
    assert run_id(resolve_spec(default, progress=False)) != run_id(resolve_spec(llava, progress=False))
    metrics = json.loads((execute_run(llava, progress=False) / "metrics.json").read_text())
    assert metrics["metric_variants"]["pope"] == "llava"
    metrics = json.loads((execute_run(default, progress=False) / "metrics.json").read_text())
    assert metrics["metric_variants"]["pope"] == "strict"
