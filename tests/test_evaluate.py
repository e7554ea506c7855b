"""Evaluation: every world family through one call, batched == one-at-a-time, likelihood scoring, file scoring."""

from __future__ import annotations

import json

import pytest

from mllm_study.data import load_split
from mllm_study.evaluate import (PredictionFileError, choose_by_likelihood, evaluate_world, generate_predictions,
                                 score_predictions)
from mllm_study.models import load_checkpoint
from mllm_study.world import FAMILIES


@pytest.fixture(scope="module")
def smoke_model(smoke_model_dir):
    return load_checkpoint(smoke_model_dir)


def test_every_family_is_scored_with_its_paper_metric(smoke_model, smoke_world):
    model, processor = smoke_model
    results = evaluate_world(model, processor, smoke_world, size=8, progress=False)
    assert set(results) == set(FAMILIES) | {"pope/random", "pope/popular", "pope/adversarial"}
    for family in FAMILIES:
        assert FAMILIES[family].metric in results[family]
        res = results[family][FAMILIES[family].metric]
        assert len(res.items) == 8 and res.value == res.value  # not NaN
    assert set(results["flickr30k"]) == {"cider", "chair"}  # captions are also checked for hallucinated objects
    pope = results["pope/random"]["pope"]
    assert {"accuracy", "precision", "recall", "f1", "yes_ratio"} <= set(pope.extra)


def test_batched_generation_equals_one_at_a_time(smoke_model, smoke_world):
    model, processor = smoke_model
    records = load_split(smoke_world / "vqav2", "test")[:12]
    batched = generate_predictions(model, processor, records, 6, batch_size=12, progress=False)
    single = [generate_predictions(model, processor, [r], 6, batch_size=1, progress=False)[0] for r in records]
    assert batched == single


def test_likelihood_scoring_picks_the_most_likely_option(smoke_model, smoke_world):
    """A known answer: the output layer is biased towards one option's token, so that option is the most likely one
    by a wide margin (about the bias, in nats) and must be the pick; the target is an option the unbiased model did
    not pick, so the pick has to move to it."""
    model, processor = smoke_model
    tok = processor.tokenizer

    def favouring(token: int):
        def bias(module, inputs, output):
            output = output.clone()
            output[..., token] += 30.0
            return output

        return model.get_output_embeddings().register_forward_hook(bias)

    for family, metric in (("iconqa_txt", "accuracy"), ("sqa", "mc_accuracy")):
        records = load_split(smoke_world / family, "test")[:6]
        picks = choose_by_likelihood(model, processor, records, metric, progress=False)
        for rec, pick in zip(records, picks):
            options = list(rec["choices"]) if metric == "accuracy" else list("ABCDE"[: len(rec["choices"])])
            assert pick in options
            ids = [tok.encode(o, add_special_tokens=False) for o in options]
            assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(ids)  # one distinct token each
            for target, (token,) in zip(options, ids):
                if target == pick:
                    continue
                handle = favouring(token)
                try:
                    moved = choose_by_likelihood(model, processor, [rec], metric, progress=False)
                finally:
                    handle.remove()
                assert moved == [target], (family, rec["id"], options, pick)


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_score_predictions_file(tmp_path, smoke_world):
    ds = smoke_world / "iconqa_blank"
    records = load_split(ds, "test")
    gold = [r["references"][0] for r in records]
    f = tmp_path / "preds.jsonl"
    rows = [{"id": r["id"], "prediction": g} for r, g in zip(records, gold)]
    rows[0]["prediction"] = None  # empty answers count as wrong, never crash
    rows[1]["prediction"] = ""
    _write(f, rows)
    res = score_predictions(f, ds)
    assert res.value == pytest.approx((len(records) - 2) / len(records))
    assert res.items[0]["score"] == 0.0 and res.items[1]["score"] == 0.0


@pytest.mark.parametrize("rows, message", [
    (["{not json"], r"preds.jsonl:1: not valid JSON"),
    ([{"id": "x"}], r"preds.jsonl:1: each line needs 'id' and 'prediction'"),
    ([{"id": "nope", "prediction": "1"}], r"id 'nope' is not in"),
    ([{"id": "FIRST", "prediction": 3}], r"prediction must be a string or null, got int"),
    ([{"id": "FIRST", "prediction": "1"}, {"id": "FIRST", "prediction": "2"}], r"duplicate prediction"),
    ([{"id": "FIRST", "prediction": "1"}], r"records have no prediction"),
])
def test_malformed_prediction_files_are_clear_errors(tmp_path, smoke_world, rows, message):
    ds = smoke_world / "iconqa_blank"
    first = load_split(ds, "test")[0]["id"]
    rows = [r if isinstance(r, str) else {k: (first if v == "FIRST" else v) for k, v in r.items()} for r in rows]
    f = tmp_path / "preds.jsonl"
    _write(f, rows)
    with pytest.raises(PredictionFileError, match=message):
        score_predictions(f, ds)
    with pytest.raises(PredictionFileError, match="predictions file not found"):
        score_predictions(tmp_path / "missing.jsonl", ds)
