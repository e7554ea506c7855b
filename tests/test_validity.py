"""Tests for mllm_study.validity on hand-built worlds and run folders (no training), written the way runs.py writes
them: one folder set passes every criterion, and each criterion is made to fail by one change to it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from mllm_study import validity
from mllm_study.cli import main
from mllm_study.config import load_params
from mllm_study.evaluate import EvalResult
from mllm_study.metrics import compute_metric
from mllm_study.runs import file_digest, result_rows, write_json_atomic
from mllm_study.world import OBJECT_SYNONYMS

N = 40  # records per split
COLORS = ["red", "blue", "green", "yellow"]
BASE_MODEL = "tiny-llava-test"
RUN = dataclasses.asdict(load_params(profile="smoke").run)  # the keys resolve_spec writes for a frozen-vision run
for _key in ("method_presets", "vision", "vision_lr", "eval_split"):  # as resolve_spec drops them (frozen, test)
    RUN.pop(_key, None)


def _rec(family: str, split: str, i: int, question: str, answer: str, **keys) -> dict:
    return {"id": f"{family}-{split}-{i:06d}", "image": f"{split}/{i:06d}.png",
            "conversations": [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}],
            **keys}


def _two(i: int, a: str, b: str) -> tuple[list[str], str]:
    """Options in an order alternating every two items, gold alternating every item: balanced per question text."""
    return ([a, b] if (i // 2) % 2 == 0 else [b, a]), (a if i % 2 == 0 else b)


def _sqa(split, i):
    choices, gold = _two(i, "hot", "cold")
    letter = "AB"[choices.index(gold)]
    q = f"Context: red things are hot.\nQuestion: Is the circle hot or cold?\nOptions: A. {choices[0]}, B. {choices[1]}"
    return _rec("sqa", split, i, q, letter, references=[letter], choices=choices)


def _iconqa_txt(split, i):
    choices, gold = _two(i, "circle", "square")
    return _rec("iconqa_txt", split, i, f"Which shape appears the most?\nChoices: {', '.join(choices)}.", gold,
                references=[gold], choices=choices)


def _iconqa_blank(split, i):
    shape = ["circles", "squares"][(i // 4) % 2]
    return _rec("iconqa_blank", split, i, f"There are () {shape}.", str(1 + i % 4), references=[str(1 + i % 4)])


def _vqa(family, question):
    return lambda split, i: _rec(family, split, i, question, COLORS[i % 4], references=[COLORS[i % 4]] * 10)


def _ocrvqa(split, i):
    word = ["cat", "dog", "sun", "box"][i % 4]
    return _rec("ocrvqa", split, i, "What word is written in the image?", word, references=[word])


def _flickr30k(split, i):
    a, b = COLORS[i % 4], COLORS[(i // 4) % 4]
    refs = [f"a {a} circle and a {b} square", f"{a} circle beside {b} square", f"a {a} disc and a {b} box",
            f"a {b} square and a {a} circle", f"two shapes: {a} circle, {b} square"]
    return _rec("flickr30k", split, i, "Describe the image briefly.", refs[0], references=refs,
                objects=[f"{a} circle", f"{b} square"])


def _pope(split, i):
    label = "yes" if i % 2 == 0 else "no"
    return _rec("pope", split, i, f"Is there a {COLORS[(i // 2) % 4]} circle in the image?\nAnswer the question using "
                                  "a single word or phrase.", label, references=[label], objects=["red circle"],
                label=label)


FAMILIES = {  # name: (metric, group, record builder)
    "sqa": ("mc_accuracy", "unseen", _sqa), "iconqa_txt": ("accuracy", "unseen", _iconqa_txt),
    "iconqa_blank": ("accuracy", "unseen", _iconqa_blank), "flickr30k": ("cider", "unseen", _flickr30k),
    "okvqa": ("vqa_score", "seen", _vqa("okvqa", "Which fruit has the same color as the circle?")),
    "vqav2": ("vqa_score", "seen", _vqa("vqav2", "What color is the square?")),
    "ocrvqa": ("accuracy", "seen", _ocrvqa), "pope": ("pope", "probe", _pope),
}
TRAINED_ON = ["sqa", "iconqa_txt", "iconqa_blank", "okvqa"]


def write_world(root: Path, leaky: bool = False, records: dict | None = None) -> Path:
    """A world folder as writer.py lays it out; ``leaky``: every question names its answer; ``records``:
    {family: {split: [record, ...]}} replacing the built ones."""
    for fam, (metric, group, make) in FAMILIES.items():
        splits = (records or {}).get(fam) or {s: [make(s, i) for i in range(N)]
                                              for s in (("random",) if fam == "pope" else ("train", "test"))}
        (root / fam).mkdir(parents=True, exist_ok=True)
        for split, recs in splits.items():
            if leaky:
                for r in recs:
                    r["conversations"][0]["value"] += f" Hint: {r['conversations'][1]['value']}."
            (root / fam / f"{split}.json").write_text(json.dumps(recs))
        (root / fam / "dataset.json").write_text(json.dumps({
            "name": fam, "family": fam, "metric": metric, "group": group, "max_new_tokens": 8, "image_folder": "images",
            "splits": {s: len(r) for s, r in splits.items()}, "source": "synthetic-world test"}))
    return root


def _records(world: Path, key: str) -> tuple[dict, str, list[dict]]:
    fam, split = key.split("/") if "/" in key else (key, "test")
    return json.loads((world / fam / "dataset.json").read_text()), split, json.loads((world / fam / f"{split}.json")
                                                                                     .read_text())


def _gold(r: dict) -> str:
    return r["conversations"][-1]["value"]


def _wrong(family: str, r: dict) -> str:
    gold = _gold(r)
    if family == "sqa":
        return "B" if gold == "A" else "A"
    if family == "iconqa_txt":
        return next(c for c in r["choices"] if c != gold)
    if family == "iconqa_blank":
        return str(int(gold) % 4 + 1)
    if family == "pope":
        return "no" if gold == "yes" else "yes"
    return "purple"


def answers(world: Path, key: str, wrong_every: int = 5) -> list[str]:
    """A model that is right except on every ``wrong_every``-th item (on none with 0, on all with 1); captions are
    always a reference, POPE answers capitalised."""
    family, out = key.split("/")[0], []
    for i, r in enumerate(_records(world, key)[2]):
        right = family == "flickr30k" or not wrong_every or (wrong_every > 1 and i % wrong_every)
        out.append(_gold(r) if right else _wrong(family, r))
    return [p.capitalize() for p in out] if family == "pope" else out


def write_run(runs: Path, world: Path, rid: str, method: str, dataset: str, seed: int, preds: dict[str, list[str]],
              epochs: float = 3, status: str = "done", scores: dict | None = None) -> Path:
    """A run directory as runs.execute_run writes it: spec, status, metrics (tidy rows) and predictions.jsonl;
    ``scores`` {column: per-item scores} overrides the stored item scores (a run scored by older code)."""
    d = runs / rid
    d.mkdir(parents=True)
    data = {s: file_digest(world / dataset / f"{s}.json") for s in ("train", "test")
            if (world / dataset / f"{s}.json").exists()}
    write_json_atomic(d / "spec.json", {"run": {**RUN, "method": method, "dataset": dataset, "seed": seed,
                                                "epochs": epochs}, "code_version": "0.1.0", "data": data,
                                        "base_model": BASE_MODEL})
    rows, lines = [], []
    for key, pred in preds.items():
        info, split, recs = _records(world, key)
        refs = [r["references"] for r in recs]
        kwargs = {"choices": [r["choices"] for r in recs]} if info["metric"] == "mc_accuracy" else {}
        kwargs = {"tokenizer": "python"} if info["metric"] == "cider" else kwargs
        res = compute_metric(info["metric"], pred, refs, **kwargs)
        per_item = (scores or {}).get(key, res.per_item)
        items = [{"id": r["id"], "prompt": r["conversations"][0]["value"], "prediction": p, "references": ref,
                  "score": float(s)} for r, p, ref, s in zip(recs, pred, refs, per_item)]
        results = {info["metric"]: EvalResult(info["metric"], res.value, res.extra, items)}
        if info["metric"] == "cider":  # evaluate_dataset also scores captions with CHAIR
            chair = compute_metric("chair", pred, [[""]] * len(pred), objects=[r["objects"] for r in recs],
                                   synonyms=OBJECT_SYNONYMS)
            results["chair"] = EvalResult("chair", chair.value, chair.extra,
                                          [{**it, "score": s} for it, s in zip(items, chair.per_item)])
        rows += result_rows(results, info, split, None)
        lines += [json.dumps({"dataset": info["name"], "split": split, "epoch": None, "metric": name, **it})
                  for name, res_ in results.items() for it in res_.items]
    (d / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    own = next((r for r in rows if r["dataset"] == dataset and r["split"] == "test" and "." not in r["metric"]),
               {"metric": FAMILIES[dataset][0], "value": 0.0, "n": 0})
    write_json_atomic(d / "metrics.json", {"dataset": dataset, "metric": own["metric"], "value": own["value"], "n":
                                           own["n"], "results": rows, "train": {"trainable_params": 1, "steps": 1}})
    write_json_atomic(d / "status.json", {"status": status})
    return d


ALL_COLUMNS = [*(f for f in FAMILIES if f != "pope"), "pope/random"]


def build(root: Path, leaky: bool = False, seeds=(1, 2, 3), base_answers: dict | None = None,
          image_use: dict | None = None) -> tuple[Path, Path, Path]:
    """World, runs and base model folders where every criterion passes (unless changed by the arguments)."""
    world, runs, base = write_world(root / "world", leaky), root / "runs", root / "models" / BASE_MODEL
    base.mkdir(parents=True)
    uses = image_use if image_use is not None else {f: {"metric": "vqa_score", "image": 0.8, "blank": 0.1}
                                                    for f in ("okvqa", "ocrvqa", "vqav2")}
    (base / "pretrain_record.json").write_text(json.dumps({"image_use_check": uses}))
    write_run(runs, world, "none-base", "none", "iconqa_txt", 42,
              {k: (base_answers or {}).get(k) or answers(world, k) for k in ALL_COLUMNS})
    for method in validity.PEFT_METHODS:
        for dataset in TRAINED_ON:
            for seed in seeds:
                write_run(runs, world, f"{method}-{dataset}-s{seed}", method, dataset, seed,
                          {dataset: answers(world, dataset)})
        write_run(runs, world, f"{method}-sqa-s1-long", method, "sqa", 1, {"sqa": answers(world, "sqa")}, epochs=6)
    write_run(runs, world, "lora-flickr30k-s1", "lora", "flickr30k", 1,
              {"flickr30k": answers(world, "flickr30k"), "pope/random": answers(world, "pope/random")})
    return world, runs, base


def check(world: Path, runs: Path, base: Path) -> validity.Validation:
    return validity.validate(runs, world, base)


def failed(v: validity.Validation) -> dict[str, list[str]]:
    return {c.name: c.failures or ["nothing measured"] for c in v.criteria if not c.passed}


@pytest.fixture(scope="module")
def passing(tmp_path_factory):
    return build(tmp_path_factory.mktemp("valid"))


def test_a_valid_folder_set_passes_every_criterion(passing, tmp_path, capsys):
    world, runs, base = passing
    v = check(world, runs, base)
    assert failed(v) == {} and v.exit_code == 0
    assert len(v.data["runs"]) == 1 + 4 * (4 * 3 + 1) + 1 and v.data["skipped"] == {}
    effects = {(e["column"], e["method"]) for e in v.data["effects"] if e["diff"] >= validity.MIN_EFFECT}
    assert {c for c, _ in effects} == {"sqa", "iconqa_txt", "iconqa_blank"}  # unseen VQA/MC columns, not captions
    # the command: tables, one PASS line per criterion, exit 0, every figure in the JSON file
    out = tmp_path / "v.json"
    assert main(["validate", "--runs", str(runs), "--world", str(world), "--base-model", str(base),
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert all(f"PASS ({c})" in text for c in "abcdefg") and "FAIL" not in text
    data = json.loads(out.read_text())
    assert data["passed"] and [c["name"] for c in data["criteria"]] == list("abcdefg")
    assert data["thresholds"]["MIN_EFFECT"] == 0.15 and data["world"]["sqa"]["chance"] == 0.5
    base_run = next(r for r in data["runs"] if r["run_id"] == "none-base")
    assert base_run["columns"]["sqa"]["parse_rate"] == 1.0 and base_run["columns"]["sqa"]["score"] == 0.8


def test_baselines_match_hand_computed_values(tmp_path):
    q1, q2, q3 = "There are () circles.", "There are () squares.", "() cells are empty."
    blank = {"train": [_rec("iconqa_blank", "train", i, q, a) for i, (q, a) in
                       enumerate([(q1, "1"), (q1, "1"), (q1, "2"), (q2, "3")])],
             "test": [_rec("iconqa_blank", "test", i, q, a) for i, (q, a) in
                      enumerate([(q1, "1"), (q1, "2"), (q2, "3"), (q3, "1")])]}
    t1, t2 = "Is it hot?\nOptions: A. hot, B. cold", "Which?\nOptions: A. cold, B. hot, C. wet"
    t3 = "Wet?\nOptions: A. x, B. y"
    o1, o2, o3 = ["hot", "cold"], ["cold", "hot", "wet"], ["x", "y"]
    sqa = {"train": [_rec("sqa", "train", i, q, a, choices=c) for i, (q, a, c) in
                     enumerate([(t1, "A", o1), (t1, "A", o1), (t1, "B", o1), (t2, "C", o2)])],
           "test": [_rec("sqa", "test", i, q, a, choices=c) for i, (q, a, c) in
                    enumerate([(t1, "A", o1), (t1, "B", o1), (t2, "C", o2), (t3, "B", o3)])]}
    cols = validity.world_columns(write_world(tmp_path, records={"iconqa_blank": blank, "sqa": sqa}))
    f = cols["iconqa_blank"].figures
    # train majority "1" (2 of 4); question-only: q1 -> "1", q2 -> "3", unseen q3 -> "1": right on 1, 3, 4
    assert (f["gold_majority"], f["question_only"], f["chance"]) == (0.5, 0.75, None)
    assert cols["iconqa_blank"].kind == "number" and f["bound"] == pytest.approx(0.55) and f["gold_top_share"] == 0.5
    assert cols["iconqa_blank"].question_only == {"iconqa_blank-test-000000": 1, "iconqa_blank-test-000001": 0,
                                                  "iconqa_blank-test-000002": 1, "iconqa_blank-test-000003": 1}
    f = cols["sqa"].figures  # letters: majority A; t1 -> A, t2 -> C, unseen t3 -> A
    assert (f["gold_majority"], f["question_only"]) == (0.25, 0.5)
    assert f["chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3 + 1 / 2) / 4) and cols["sqa"].kind == "mc"
    assert [cols[k].kind for k in ("iconqa_txt", "okvqa", "ocrvqa", "flickr30k", "pope/random")] == \
        ["choice", "open", "open", "caption", "yesno"]
    # POPE has no train split: cross-fitted, and never better than chance when answers are balanced per question
    assert cols["pope/random"].figures["fitted_on"].startswith("cross-fit")
    assert cols["pope/random"].figures["question_only"] <= 0.5
    v = validity._world_criterion(cols)
    assert v.failures == ["iconqa_blank: question-only 0.750 > gold-majority + 0.05 = 0.550"]


def test_leaky_world_fails_a(tmp_path):
    v = check(*build(tmp_path, leaky=True))
    fails = failed(v)
    assert "a" in fails and v.exit_code == 1
    assert {line.split(":")[0] for line in fails["a"]} == {"sqa", "iconqa_txt", "iconqa_blank", "okvqa", "vqav2",
                                                            "ocrvqa"}  # not captions; POPE is shown, not gated
    assert v.data["world"]["sqa"]["question_only"] == 1.0


def test_collapsed_run_fails_e(tmp_path):
    world, runs, base = build(tmp_path)
    write_run(runs, world, "lora-sqa-s9", "lora", "sqa", 9, {"sqa": ["a"] * N})
    v = check(world, runs, base)
    assert failed(v) == {"e": ["lora-sqa-s9 on sqa: top share 1.000 ('A') > 0.600"]}
    run = next(r for r in v.data["runs"] if r["run_id"] == "lora-sqa-s9")["columns"]["sqa"]
    assert (run["top_prediction"], run["parse_rate"], run["score"]) == ("A", 1.0, 0.5)  # "a" is parsed as A


def test_unparsed_pope_outputs_are_wrong_and_lower_the_parse_rate(tmp_path):
    world = write_world(tmp_path / "w")
    pope = answers(world, "pope/random", wrong_every=0)
    pope[:10] = ["a yellow left"] * 10  # caption fragments, five on positive probes: POPE's script says "yes"
    world, runs, base = build(tmp_path, base_answers={"pope/random": pope})
    v = check(world, runs, base)
    assert failed(v) == {"b": ["pope/random: zero-shot parse rate 0.750 < 0.9"]}
    b = next(r for r in v.data["base_model"]["columns"] if r["column"] == "pope/random")
    assert b["accuracy"] == b["item_mean"] == 0.75 and b["yes_ratio"] == pytest.approx(15 / 40)
    # a run scored by the old metric (unparsed = yes: right on the five positives) is re-scored
    shutil.rmtree(runs / "none-base")
    old = [1.0] * 40
    for i in range(1, 10, 2):
        old[i] = 0.0
    write_run(runs, world, "none-base", "none", "iconqa_txt", 42, {k: answers(world, k) for k in ALL_COLUMNS[:-1]}
              | {"pope/random": pope}, scores={"pope/random": old})
    v = check(world, runs, base)
    b = next(r for r in v.data["base_model"]["columns"] if r["column"] == "pope/random")
    assert b["item_mean"] == 0.75


def test_repeated_word_captions_fail_f(tmp_path):
    world, runs, base = build(tmp_path)
    caps = answers(world, "flickr30k")
    caps[:5] = ["a a a a circle"] * 4 + ["green green green"]  # 5 of 40 = 0.125 > 0.10
    write_run(runs, world, "adapter-flickr30k-s1", "adapter", "flickr30k", 1, {"flickr30k": caps})
    v = check(world, runs, base)
    assert failed(v) == {"f": ["adapter-flickr30k-s1 on flickr30k: 0.125 of captions repeat a word"]}
    fig = next(r for r in v.data["runs"] if r["run_id"] == "adapter-flickr30k-s1")["columns"]["flickr30k"]
    assert fig["object_share"] == pytest.approx(39 / 40)  # "green green green" names no object
    assert not validity._repeats("a red circle, a red square") and validity._repeats("Red red RED circle")


def test_convergence_fails_c_when_doubling_moves_a_method_or_no_pair_exists(tmp_path):
    world, runs, base = build(tmp_path)
    shutil.rmtree(runs / "ia3-sqa-s1-long")
    write_run(runs, world, "ia3-sqa-s1-long", "ia3", "sqa", 1, {"sqa": answers(world, "sqa", wrong_every=0)},
              epochs=6)  # 1.0 instead of 0.8
    shutil.rmtree(runs / "prefix-sqa-s1-long")
    # a calibration pair, scored on the validation split carved from train: metrics.json's own value counts
    for rid, epochs, value in (("adapter-cal", 3, 0.5), ("adapter-cal-long", 6, 0.6)):
        d = write_run(runs, world, rid, "adapter", "iconqa_txt", 5, {}, epochs=epochs)
        spec, metrics = json.loads((d / "spec.json").read_text()), json.loads((d / "metrics.json").read_text())
        spec["run"]["eval_split"] = "val"
        write_json_atomic(d / "spec.json", spec)
        write_json_atomic(d / "metrics.json", {**metrics, "value": value})
    assert failed(check(world, runs, base)) == {"c": [
        "adapter: doubled - base = +0.050 in mean over 2 pairs",  # sqa +0.000, iconqa_txt/val +0.100
        "ia3: doubled - base = +0.200 in mean over 1 pairs",
        "prefix: not measured (no pair of runs with the budget doubled)"]}
    # the calibration chose another rate than this pair's and checked convergence there: the pair does not count
    for rid in ("adapter-cal", "adapter-cal-long"):
        spec = json.loads((runs / rid / "spec.json").read_text())
        write_json_atomic(runs / rid / "spec.json", {**spec, "run": {**spec["run"], "lr": 3e-3}})
    write_json_atomic(runs / "calibration-quick.json", {"doubled_at": {"adapter": 1e-2}})
    v = check(world, runs, base)
    assert not any(f.startswith("adapter") for f in failed(v)["c"])
    assert [(r["column"], r["pairs"]) for r in v.data["convergence"] if r["method"] == "adapter"] == [
        ("sqa", 1), ("(mean)", 1)]
    write_json_atomic(runs / "calibration-quick.json", {"doubled_at": {"adapter": 3e-3}})
    assert failed(check(world, runs, base))["c"][0] == "adapter: doubled - base = +0.050 in mean over 2 pairs"


def test_no_effect_over_question_only_fails_d(tmp_path):
    world, runs, base = build(tmp_path)
    for d in runs.glob("*-iconqa_blank-*"):
        shutil.rmtree(d)
    v = check(world, runs, base)
    fails = failed(v)
    assert fails["d"] == ["iconqa_blank: not measured (no trained run evaluates it)"]
    for method in validity.PEFT_METHODS:  # now each is right on a quarter, like question-only, without collapse
        for seed in (1, 2, 3):
            write_run(runs, world, f"{method}-iconqa_blank-s{seed}", method, "iconqa_blank", seed,
                      {"iconqa_blank": [str(1 + (i // 4) % 4) for i in range(N)]})
    fails = failed(check(world, runs, base))
    assert list(fails) == ["d"] and fails["d"][0].startswith("iconqa_blank: best ")


def test_too_few_seeds_fail_g(tmp_path):
    v = check(*build(tmp_path, seeds=(1, 2)))
    assert failed(v) == {"g": [f"{m}: >= 3 seeds on 0 columns (0 unseen)" for m in validity.PEFT_METHODS]}
    assert v.data["seeds"]["lora"]["seeds_per_column"] == {**{c: 2 for c in TRAINED_ON}, "flickr30k": 1}


@pytest.mark.slow
def test_base_model_criteria_fail_b(tmp_path):
    world = write_world(tmp_path / "w")
    bad = {"okvqa": answers(world, "okvqa", wrong_every=2),  # 0.5 = question-only 0.25 + 0.25: passes
           "vqav2": answers(world, "vqav2", wrong_every=1),  # always wrong
           "sqa": ["I think so"] * N, "flickr30k": ["a picture"] * N}
    uses = {"okvqa": {"metric": "vqa_score", "image": 0.8, "blank": 0.6},
            "vqav2": {"metric": "vqa_score", "image": 0.8, "blank": 0.1}}  # ocrvqa not measured
    assert failed(check(*build(tmp_path, base_answers=bad, image_use=uses))) == {"b": [
        "flickr30k: 0.000 of captions name an object < 0.9", "sqa: zero-shot parse rate 0.000 < 0.9",
        "vqav2: zero-shot 0.000 < question-only 0.250 + 0.25",
        "ocrvqa: blank-image score not measured (not in pretrain_record.json image_use_check)",
        "okvqa: blank-image 0.600 > 0.5 x image 0.800"]}
    world, runs, base = build(tmp_path / "no-base")
    shutil.rmtree(runs / "none-base")
    fails = failed(check(world, runs, base))["b"]
    assert len(fails) == 8 and fails[0] == "flickr30k: not measured (no base-model run evaluates it)"


def test_runs_not_done_or_from_another_world_are_skipped_and_errors_exit_2(passing, tmp_path, capsys):
    world, runs, base = passing
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    write_run(copy, world, "lora-sqa-s7", "lora", "sqa", 7, {"sqa": ["a"] * N}, status="running")
    other = write_run(copy, world, "lora-sqa-s8", "lora", "sqa", 8, {"sqa": ["a"] * N})
    spec = json.loads((other / "spec.json").read_text())
    spec["data"]["test"] = "0" * 16
    write_json_atomic(other / "spec.json", spec)
    (write_run(copy, world, "lora-sqa-s9", "lora", "sqa", 9, {"sqa": ["a"] * N}) / "metrics.json").write_text("{")
    v = check(world, copy, base)
    assert v.data["skipped"] == {"lora-sqa-s7": "running", "lora-sqa-s8": "made on another world",
                                 "lora-sqa-s9": "damaged (metrics.json: not valid JSON (Expecting property name "
                                                "enclosed in double quotes: line 1 column 2 (char 1)))"}
    assert v.exit_code == 0 and "3 skipped (1 running, 1 made on another world, 1 damaged (metrics.json" in v.text()
    assert main(["validate", "--runs", str(tmp_path / "missing"), "--world", str(world)]) == 2
    assert "runs folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["validate", "--runs", str(tmp_path / "empty"), "--world", str(world)]) == 2
    err = capsys.readouterr().err
    assert "no runs in" in err and len(err.strip().splitlines()) == 1


def test_chance_of_open_columns_is_a_uniform_guess_in_the_columns_metric(smoke_world):
    """Synthetic open/number columns: chance = expected metric score of a uniform guess over the answer space."""
    from statistics import fmean

    from mllm_study.metrics import compute_metric

    cols = validity.world_columns(smoke_world)
    blank = cols["iconqa_blank"]  # accuracy: no partial credit, the gold is one answer of the space
    assert blank.figures["chance"] == pytest.approx(fmean(1 / len(r["scene"]["query"]["space"])
                                                          for r in blank.records.values()))
    vqa = cols["vqav2"]  # VQA score: a guess some human answers share gets min(1, matches / 3) credit
    by_hand = fmean(fmean(compute_metric("vqa_score", [a], [r["references"]]).value
                          for a in r["scene"]["query"]["space"]) for r in vqa.records.values())
    exact = fmean(1 / len(r["scene"]["query"]["space"]) for r in vqa.records.values())
    assert vqa.figures["chance"] == pytest.approx(by_hand) and by_hand > exact


def test_runs_of_a_local_checkpoint_count_for_that_base_model(tmp_path):
    """A run of ``run.model=<folder>`` records the folder's identity (a dict); validating with that folder as
    ``--base-model`` reads the run, another folder skips it."""
    from mllm_study.validity import _other_world

    world = tmp_path / "world"
    (world / "vqav2").mkdir(parents=True)
    (world / "vqav2" / "dataset.json").write_text("{}")
    spec = {"run": {"dataset": "vqav2"}, "data": {},
            "base_model": {"local": "my-model", "fingerprint": "0" * 16, "weight_files": 1}}
    assert _other_world(spec, world, tmp_path / "my-model") is None
    assert _other_world(spec, world, tmp_path / "other") == "made with another base model"
    assert _other_world({**spec, "base_model": "tiny-llava-abc"}, world, tmp_path / "tiny-llava-abc") is None


def test_figures_name_the_base_weights_and_the_machine(tmp_path):
    """The base model is one draw per CPU: validate names its weights (sha256) and the machine it ran on."""
    from mllm_study.files import file_digest

    world, runs, base = build(tmp_path)
    v = check(world, runs, base)
    assert v.data["base_model"]["weights_sha256"] is None and "base weights sha256" not in v.text()
    (base / "model.safetensors").write_bytes(b"not really weights")
    v = check(world, runs, base)
    digest = file_digest(base / "model.safetensors")
    assert v.data["base_model"]["weights_sha256"] == digest and len(digest) == 16
    assert f"base weights sha256 {digest}..." in v.text() and "torch thread(s)" in v.data["machine"]


def test_question_types_show_a_type_left_at_chance_beside_one_learned(tmp_path):
    """IconQA-txt records of two world question types (``scene.query.type``): the trained runs answer "most"
    right and "compare" by a coin that is right half the time, the base model right on neither. The column's score
    (0.75) hides that one type is at chance; the table names it, per method with min/max over its runs, and the
    validation split carved from train (a calibration run's own column) gets the same table."""
    def rec(split, i):
        choices, gold = _two(i, "circle", "square")
        kind = "most" if (i // 4) % 2 == 0 else "compare"
        r = _rec("iconqa_txt", split, i, f"Which shape ({kind})?\nChoices: {', '.join(choices)}.", gold,
                 references=[gold], choices=choices)
        return {**r, "scene": {"query": {"type": kind, "space": choices}}}

    world = write_world(tmp_path / "world", records={"iconqa_txt": {s: [rec(s, i) for i in range(N)]
                                                                    for s in ("train", "test")}})
    runs, base = tmp_path / "runs", tmp_path / "models" / BASE_MODEL
    base.mkdir(parents=True)
    test = _records(world, "iconqa_txt")[2]
    half = [_gold(r) if r["scene"]["query"]["type"] == "most" or (i // 2) % 2 else _wrong("iconqa_txt", r)
            for i, r in enumerate(test)]
    write_run(runs, world, "none-base", "none", "iconqa_txt", 42, {"iconqa_txt": [_wrong("iconqa_txt", r)
                                                                                  for r in test]})
    for seed in (1, 2):
        write_run(runs, world, f"lora-s{seed}", "lora", "iconqa_txt", seed, {"iconqa_txt": half})
    rows = {(r["method"], r["type"]): r for r in check(world, runs, base).data["question_types"]}
    assert set(rows) == {(m, t) for m in ("none", "lora") for t in ("compare", "most")}
    most, compare = rows[("lora", "most")], rows[("lora", "compare")]
    assert (most["n"], most["runs"], most["score"], most["chance"], most["near_chance"]) == (20, 2, 1.0, 0.5, False)
    assert (compare["score"], compare["min"], compare["max"], compare["near_chance"]) == (0.5, 0.5, 0.5, True)
    assert rows[("none", "most")]["score"] == 0.0
    assert (most["top_share"], compare["top_share"]) == (0.5, 0.5)  # options alternate: no type collapsed
    assert not most["collapsed"] and not compare["collapsed"]
    # a run answering "circle" to every item: the top answer per type and its share
    write_run(runs, world, "lora-s3", "lora", "iconqa_txt", 3, {"iconqa_txt": ["circle"] * len(test)})
    rows = {(r["method"], r["type"]): r for r in check(world, runs, base).data["question_types"]}
    assert rows[("lora", "most")]["top"] == "circle" and rows[("lora", "most")]["top_share"] == pytest.approx(2 / 3)
    assert rows[("lora", "most")]["collapsed"]  # 2/3 > max(0.6, the type's gold top share 0.5 + 0.1)

    # what a report shows of it (evidence.type_failures): the trained rows near chance or collapsed, beside zero-shot
    import pandas as pd

    from mllm_study.evidence import type_failures

    figures = pd.DataFrame()
    figures.attrs["question_types"] = pd.DataFrame(list(rows.values()))
    shown = type_failures(figures)
    assert set(zip(shown["method"], shown["type"])) == {("lora", "compare"), ("lora", "most")}
    by_type = shown.set_index("type")
    assert by_type.loc["most", "what"] == "collapsed on 'circle'" and by_type.loc["most", "zero-shot"] == 0.0
    assert by_type.loc["compare", "what"].startswith("near chance")
    assert type_failures(None).empty and type_failures(pd.DataFrame()).empty  # real data: no question types

    # a calibration run scored on train's carved validation split: its own column, typed the same way
    val = tmp_path / "val-runs"
    shutil.copytree(runs, val)
    d = val / "lora-s1"
    spec = json.loads((d / "spec.json").read_text())
    spec["run"]["eval_split"] = "val"
    from mllm_study.data import load_split

    carved = load_split(world / "iconqa_txt", "val", check_images=False)
    lines = [json.dumps({"dataset": "iconqa_txt", "split": "val", "epoch": None, "metric": "accuracy", "id": r["id"],
                         "prompt": "", "prediction": _gold(r), "references": [_gold(r)], "score": 1.0}) for r in carved]
    (d / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    write_json_atomic(d / "spec.json", spec)
    write_json_atomic(d / "metrics.json", {"dataset": "iconqa_txt", "metric": "accuracy", "value": 1.0,
                                           "n": len(carved), "results": [{"dataset": "iconqa_txt", "split": "val",
                                           "epoch": None, "metric": "accuracy", "value": 1.0, "n": len(carved)}],
                                           "train": {"steps": 1}})
    typed = [r for r in check(world, val, base).data["question_types"] if r["column"] == "iconqa_txt/val"]
    assert typed and all(r["method"] == "lora" and r["score"] == 1.0 and not r["near_chance"] for r in typed)
    assert sum(r["n"] for r in typed) == len(carved)


def test_validation_data_is_measured_once_per_state_of_the_runs(tmp_path):
    """The reports' validity figures (validation_data): the same as validate's, read back from <runs>/.validity
    while nothing changed, measured again when a run is added (here a collapsed one, which fails (e))."""
    world, runs, base = build(tmp_path)
    first = validity.validation_data(runs, world, base)
    fresh = json.dumps(check(world, runs, base).data)  # in its order too: the reports' tables follow it
    assert json.dumps(first) == fresh
    (cached,) = (runs / ".validity").glob("*.json")
    assert json.dumps(validity.validation_data(runs, world, base)) == fresh
    cached.write_text(json.dumps({**first, "passed": "from the cache"}))  # a cache hit returns the file as it is
    assert validity.validation_data(runs, world, base)["passed"] == "from the cache"
    write_run(runs, world, "lora-sqa-s9", "lora", "sqa", 9, {"sqa": ["a"] * N})
    again = validity.validation_data(runs, world, base)
    assert not again["passed"] and any(r["run_id"] == "lora-sqa-s9" for r in again["runs"])
    assert [p.name for p in (runs / ".validity").glob("*.json")] != [cached.name]  # one state kept, the new one
    assert len(list((runs / ".validity").glob("*.json"))) == 1
