"""The validity instrument: can this miniature show the study's factors? (docs/study.md, "What makes the
miniature valid")

Usage: ``v = validate("runs", world_dir, base_model_dir); print(v.text()); raise SystemExit(v.exit_code)``, or
``mllm-study validate --profile quick [--json OUT]``; ``v.data`` holds every figure (the JSON file).

From the world it derives per *column* (a family's evaluated split: ``sqa``, ``pope/random``) the answer format,
chance and two baselines; from the finished run directories made on that world, per run and column, the score,
parse rate, top share, POPE yes-ratio and caption degeneracy; then it checks criteria (a)-(g) (:data:`CRITERIA`,
thresholds in the module constants). Definitions:

- *format*: ``mc`` (mc_accuracy; valid if ``metrics.extract_choice`` finds an option), ``choice`` (accuracy with
  ``choices``: the normalised answer is an option), ``number`` (accuracy, all golds integers: an integer), ``yesno``
  (pope: ``metrics.parse_yes_no`` answers), ``open`` (other vqa_score/accuracy: non-empty after the metric's
  normalisation), ``caption`` (cider: non-empty). Parse-rate criteria apply to mc, choice, number and yesno.
- *chance*: the expected item score of a uniform guess among the offered options: mean 1/len(choices) (mc, choice),
  1/2 (yesno); for number and open columns of the synthetic world, the expected score, in the column's metric, of
  a uniform guess over the question type's answer space (``scene.query.space``). Real number/open columns and
  captions offer none; (a) then bounds question-only by *gold-majority* (always the most frequent training answer,
  scored with the column's metric) + the margin. (a) applies to the eight study columns; the POPE probe's figures
  are shown, not gated (its protocol ties labels to object frequency by design: positives are present objects).
- *question-only*: per question text (the human turns without ``<image>``) the most frequent training answer (SQA:
  the gold letter), else the most frequent overall; a column without a train split (POPE) is cross-fitted, two
  folds by a hash of the item id each predicted from the other. Captions have no answer to guess: n/a.
- *item scores* are predictions.jsonl's (POPE's re-scored with the current metric: unparsed = wrong); baselines,
  zero-shot and effect figures are item means (POPE: accuracy; its ``score`` is F1, as in metrics.json).
- *convergence* compares metrics.json's own score (the run's eval split, so calibration runs on ``val`` count).
- Runs not done, or made on another world (data digests) or base model, are skipped and counted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from .errors import RunError
from . import stats
from .metrics import compute_metric, extract_choice, find_objects, normalize_answer, parse_yes_no, vqa_process_answer
from .files import file_digest, read_json, write_json_atomic
from .world.tasks import TRAINING_SPLITS
from .method_info import LiveSequence, study_methods
from .records import is_done, run_damage

__all__ = ["CRITERIA", "Column", "Criterion", "Run", "Validation", "question_types", "read_runs", "report_section",
           "run_dirs", "validate",
           "world_columns", "column_kind", "parsed_answer", "exceeds"]

QUESTION_ONLY_MARGIN = 0.05  # (a) question-only <= chance (or gold-majority) + this
SEEN_MARGIN = 0.25  # (b) seen columns: zero-shot >= question-only + this
BLANK_RATIO = 0.5  # (b) blank-image score <= this x image score
MIN_PARSE_RATE = 0.9  # (b) zero-shot parse rate on mc, choice, number and yes/no columns
POPE_YES_RATIO = (0.35, 0.65)  # (b) zero-shot POPE yes-ratio range
POPE_MIN_ACCURACY = 0.70  # (b)
MIN_CAPTION_OBJECTS = 0.9  # (b) share of zero-shot captions naming at least one object
MAX_CONVERGENCE_DIFF = 0.02  # (c) |mean score change| when the budget doubles, per method (mean over columns)
MIN_EFFECT = 0.15  # (d) best trained setting - question-only, per unseen VQA/MC column
CONFIDENCE, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 0.95, 2000, 0  # (d) paired percentile bootstrap over items
TOP_SHARE_FLOOR, TOP_SHARE_MARGIN = 0.6, 0.1  # (e) top share <= max(floor, gold top share + margin)
REPEAT_WORDS, MAX_REPEAT_SHARE = 3, 0.10  # (f) share of captions repeating a word 3+ times in a row
PEFT_METHODS = LiveSequence(study_methods)  # (g): the study's methods (``study=True`` in methods/<name>.py)
MIN_SEEDS, MIN_SEED_COLUMNS, MIN_SEED_UNSEEN = 3, 4, 2  # (g)
PARSED_KINDS = ("mc", "choice", "number", "yesno")
MIN_TYPE_ITEMS = 20  # question types: fewer items of a type in a run's column are not called near chance
#: float slack of the bounds: scores are means over items (k / 200), and a difference of two of them that is exactly
#: the bound (0.665 - 0.645 = 0.020000000000000018) is not "more than" it
BOUND_SLACK = 1e-9


def exceeds(value: float, bound: float) -> bool:
    """``value > bound`` beyond float rounding (:data:`BOUND_SLACK`)."""
    return value > bound + BOUND_SLACK


CRITERIA = {
    "a": f"world: question-only <= chance + {QUESTION_ONLY_MARGIN} (gold-majority + {QUESTION_ONLY_MARGIN} without "
         "offered options)",
    "b": f"base model: seen >= question-only + {SEEN_MARGIN}, blank <= {BLANK_RATIO} x image, parse >= "
         f"{MIN_PARSE_RATE}, POPE yes-ratio in {list(POPE_YES_RATIO)} and accuracy >= {POPE_MIN_ACCURACY}, >= "
         f"{MIN_CAPTION_OBJECTS:.0%} of captions name an object",
    "c": f"convergence: doubling the budget moves no method's mean score (over the columns measured) by more than "
         f"{MAX_CONVERGENCE_DIFF}",
    "d": f"effects: per unseen VQA/MC column a trained setting beats question-only by >= {MIN_EFFECT}, "
         f"{CONFIDENCE:.0%} CI excluding 0",
    "e": f"collapse: no trained run's top share exceeds max({TOP_SHARE_FLOOR}, gold top share + {TOP_SHARE_MARGIN})",
    "f": f"captions: no caption run repeats a word {REPEAT_WORDS}+ times in a row in more than "
         f"{MAX_REPEAT_SHARE:.0%} of its outputs",
    "g": f"seeds: {', '.join(PEFT_METHODS)} each >= {MIN_SEEDS} seeds on >= {MIN_SEED_COLUMNS} columns, >= "
         f"{MIN_SEED_UNSEEN} of them unseen",
}
_INT = re.compile(r"-?\d+")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class Column:
    """One evaluated split of a world family, its records by id and its figures (chance, baselines, ...)."""

    key: str
    dataset: str
    split: str
    metric: str
    group: str
    kind: str
    records: dict[str, dict]
    synonyms: dict | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    question_only: dict[str, float] = field(default_factory=dict)  # item id -> question-only item score


def _gold(rec: dict) -> str:
    answers = [t["value"] for t in rec["conversations"] if t["from"] == "gpt"]
    return rec.get("label") or (answers[-1] if answers else (rec.get("references") or [""])[0])


def _question(rec: dict) -> str:
    text = " ".join(t["value"] for t in rec["conversations"] if t["from"] == "human")
    return " ".join(text.replace("<image>", " ").split())


def column_kind(metric: str, records: list[dict]) -> str:
    """A column's answer format from its metric and records: mc, yesno, caption, choice, number or open."""
    kinds = {"mc_accuracy": "mc", "pope": "yesno", "cider": "caption"}
    if metric != "accuracy":
        return kinds.get(metric, "open")
    if all(r.get("choices") for r in records):
        return "choice"
    return "number" if all(_INT.fullmatch(normalize_answer(_gold(r))) for r in records) else "open"


def parsed_answer(col: Column, text: str, rec: dict) -> str | None:
    """The answer ``text`` gives in the column's format, read by the parser that scores it; None: no valid answer."""
    if col.kind == "mc":
        i = extract_choice(text, list(rec["choices"]))
        return None if i is None else _LETTERS[i]
    if col.kind == "yesno":
        return parse_yes_no(text) if text.strip() else None
    if col.kind == "caption":
        return " ".join(text.lower().split()) or None
    norm = vqa_process_answer(text) if col.metric == "vqa_score" else normalize_answer(text)
    if col.kind == "choice":
        return norm if norm in {normalize_answer(c) for c in rec["choices"]} else None
    return norm if norm and (col.kind == "open" or _INT.fullmatch(norm)) else None


def _label(col: Column, text: str, rec: dict) -> str:
    """``text`` normalised for counting predictions: the parsed answer, else the lowercased text."""
    return parsed_answer(col, text, rec) or " ".join(text.lower().split())


def _score(col: Column, preds: list[str], recs: list[dict]) -> list[float]:
    refs = [list(r.get("references") or [_gold(r)]) for r in recs]
    kwargs = {"choices": [r["choices"] for r in recs]} if col.metric == "mc_accuracy" else {}
    return compute_metric(col.metric, preds, refs, **kwargs).per_item


def _uniform_guess(col: Column, recs: list[dict], spaces: list[list[str]]) -> float:
    """Expected score of a uniform guess over each item's answer space, scored with the column's own metric (a VQA
    score gives partial credit to a guess that some of the ten human answers share, so exact-match 1/|space|
    would understate chance)."""
    preds = [a for sp in spaces for a in sp]
    scores = _score(col, preds, [r for r, sp in zip(recs, spaces) for _ in sp])
    out, k = [], 0
    for sp in spaces:
        out.append(fmean(scores[k:k + len(sp)]))
        k += len(sp)
    return fmean(out)


def _fit(col: Column, train: list[dict]) -> tuple[str, dict[str, str]]:
    """(most frequent answer, most frequent answer per question text) of ``train``; ties: first seen."""
    by_question: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        by_question[_question(r)][_label(col, _gold(r), r)] += 1
    overall = Counter(_label(col, _gold(r), r) for r in train)
    top = overall.most_common(1)[0][0] if overall else ""
    return top, {q: c.most_common(1)[0][0] for q, c in by_question.items()}


def _chance(col: Column, recs: list[dict]) -> float | None:
    """Expected score of a uniform guess on ``recs``: over the offered options, yes/no, or the world's answer space
    (``scene.query.space``) in the column's metric; None where none of these is known."""
    spaces = [(r.get("scene") or {}).get("query", {}).get("space") for r in recs]
    return (fmean(1 / len(r["choices"]) for r in recs) if col.kind in ("mc", "choice")
            else 0.5 if col.kind == "yesno"
            else _uniform_guess(col, recs, spaces) if all(spaces) else None)


def query_type(rec: dict) -> str | None:
    """The world's question type of a record (``scene.query.type``: count, compare, ...); None for other data."""
    return ((rec.get("scene") or {}).get("query") or {}).get("type")


def _types(col: Column, recs: list[dict]) -> dict[str, dict] | None:
    """Per question type of ``recs``: item count and chance; None unless every record has a type and there are two
    or more (a column's score can then come from some types while others stay at chance)."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by[query_type(r)].append(r)
    if None in by or len(by) < 2 or col.kind == "caption":
        return None
    return {t: {"n": len(rs), "chance": _chance(col, rs),
                "gold_top_share": Counter(_label(col, _gold(r), r) for r in rs).most_common(1)[0][1] / len(rs)}
            for t, rs in sorted(by.items())}


def _baselines(col: Column, train: list[dict] | None) -> None:
    recs = list(col.records.values())
    golds = Counter(_label(col, _gold(r), r) for r in recs)
    chance = _chance(col, recs)
    col.figures.update(n_train=len(train or []), n_test=len(recs), chance=chance,
                       gold_top_share=golds.most_common(1)[0][1] / len(recs), gold_majority=None, question_only=None,
                       types=_types(col, recs))
    if col.kind == "caption":
        col.figures.update(bound=None, bound_kind="n/a (captions)")
        return
    fold = {r["id"]: int(hashlib.sha256(str(r["id"]).encode()).hexdigest(), 16) % 2 for r in recs}
    parts = [(recs, train)] if train else [([r for r in recs if fold[r["id"]] == k],
                                            [r for r in recs if fold[r["id"]] != k]) for k in (0, 1)]
    majority: dict[str, float] = {}
    for part, fit_on in (p for p in parts if p[0]):
        top, by_question = _fit(col, fit_on)
        majority.update(zip((r["id"] for r in part), _score(col, [top] * len(part), part)))
        col.question_only.update(zip((r["id"] for r in part),
                                     _score(col, [by_question.get(_question(r), top) for r in part], part)))
    f = col.figures
    f.update(gold_majority=fmean(majority.values()), question_only=fmean(col.question_only.values()),
             fitted_on="train" if train else "cross-fit (2 folds, no train split)")
    ref, name = (chance, "chance") if chance is not None else (f["gold_majority"], "gold-majority")
    f.update(bound=ref + QUESTION_ONLY_MARGIN, bound_kind=f"{name} + {QUESTION_ONLY_MARGIN}")


def world_columns(world_dir: str | Path) -> dict[str, Column]:
    """Every evaluated split of every family in ``world_dir`` (not ``pretrain`` ones), with chance and baselines."""
    from .data import load_dataset_info, load_split

    world_dir = Path(world_dir)
    if not world_dir.is_dir():
        raise FileNotFoundError(f"world folder {world_dir} does not exist")
    columns: dict[str, Column] = {}
    for folder in sorted(p for p in world_dir.iterdir() if (p / "dataset.json").exists()):
        info = load_dataset_info(folder)
        if info.get("group") == "pretrain":
            continue
        train = load_split(folder, "train", check_images=False) if (folder / "train.json").exists() else None
        for split in (s for s in info.get("splits", {"test": 0}) if s not in TRAINING_SPLITS):
            recs = load_split(folder, split, check_images=False)
            col = Column(info["name"] if split == "test" else f"{info['name']}/{split}", info["name"], split,
                         info["metric"], info.get("group", ""), column_kind(info["metric"], recs),
                         {r["id"]: r for r in recs})
            if col.kind == "caption":
                from .captions import chair_synonyms  # the synonyms CHAIR is scored with

                col.synonyms = chair_synonyms(info)
            _baselines(col, train)
            columns[col.key] = col
    if not columns:
        raise FileNotFoundError(f"{world_dir} holds no dataset folders (dataset.json)")
    return columns


@dataclass
class Run:
    """A finished run: its spec and, per evaluated world column, the last evaluation's score and items."""

    run_id: str
    spec: dict
    own_score: float | None = None  # metrics.json "value": the own dataset on the run's eval split (test or val)
    columns: dict[str, dict] = field(default_factory=dict)  # key -> {"n", "score", "extra", "items": {id: (p, s)}}
    method: str = field(init=False)
    trained_on: str = field(init=False)  # the training dataset's name
    own_column: str = field(init=False)  # trained_on, or trained_on/val for a calibration run

    def __post_init__(self):
        self.method, self.trained_on = self.spec["run"]["method"], Path(self.spec["run"]["dataset"]).name
        split = self.spec["run"].get("eval_split", "test")
        self.own_column = self.trained_on if split == "test" else f"{self.trained_on}/{split}"


def run_dirs(runs_dir: str | Path) -> list[Path]:
    """The run directories of ``runs_dir``; FileNotFoundError/ValueError when it is missing or holds none."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder {runs_dir} does not exist (run `mllm-study study` first)")
    dirs = sorted(d for d in runs_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise RunError(f"no runs in {runs_dir} (run `mllm-study study` first)")
    return dirs


@functools.lru_cache(maxsize=None)
def _digest(path: Path, mtime_ns: int) -> str:
    """runs.py's digest of a data file, computed once per file version (many runs share a dataset)."""
    return file_digest(path)


def _other_world(spec: dict, world_dir: Path, base_model: Path | None) -> str | None:
    folder = world_dir / Path(spec["run"]["dataset"]).name
    if not (folder / "dataset.json").exists():
        return "dataset not in this world"
    files = {folder / f"{split}.json": d for split, d in spec.get("data", {}).items()}
    if any(not p.exists() or _digest(p, p.stat().st_mtime_ns) != d for p, d in files.items()):
        return "made on another world"
    made_with = spec.get("base_model")  # the tiny model's folder name, or a local checkpoint's identity
    if isinstance(made_with, dict):
        made_with = made_with.get("local")
    if base_model is not None and made_with not in (None, base_model.name):
        return "made with another base model"
    return None


def _read_run(d: Path, spec: dict, columns: dict[str, Column]) -> Run:
    metrics, items = read_json(d / "metrics.json"), defaultdict(list)
    run = Run(d.name, spec, own_score=metrics.get("value"))
    for line in (d / "predictions.jsonl").read_text().splitlines() if (d / "predictions.jsonl").exists() else []:
        if line.strip():
            p = json.loads(line)
            items[(p["dataset"], p["split"], p["metric"], p.get("epoch"))].append(p)
    last: dict[str, dict] = {}
    for r in metrics.get("results", []):
        key = r["dataset"] if r["split"] == "test" else f"{r['dataset']}/{r['split']}"
        if key in columns and r["metric"] == columns[key].metric and (
                key not in last or (r["epoch"] or 0) >= (last[key]["epoch"] or 0)):  # the last evaluation
            last[key] = r
    for key, r in last.items():
        got = items[(r["dataset"], r["split"], r["metric"], r["epoch"])]
        preds, score = [p["prediction"] or "" for p in got], r["value"]
        per_item = [float(p["score"]) for p in got]
        extra = {}
        if r["metric"] == "pope" and got:  # re-scored: older runs counted an unparsed answer as a yes
            res = compute_metric("pope", preds, [p["references"] for p in got])
            score, per_item, extra = res.value, res.per_item, res.extra
        run.columns[key] = {"n": r.get("n", len(got)), "score": score, "extra": extra,
                            "items": {p["id"]: (pred, s) for p, pred, s in zip(got, preds, per_item)}}
    return run


def read_runs(runs_dir: str | Path, world_dir: str | Path, columns: dict[str, Column],
              base_model: Path | None = None) -> tuple[list[Run], dict[str, str]]:
    """The finished runs made on this world (and base model), and the skipped ones: run id -> reason."""
    runs, skipped = [], {}
    for d in run_dirs(runs_dir):
        if not is_done(d):
            try:
                status = read_json(d / "status.json").get("status") or "unknown status"
            except (OSError, ValueError):
                status = "half-written"
            # done but not intact: name what is wrong (records.run_damage) rather than read it
            skipped[d.name] = f"damaged ({run_damage(d)})" if status == "done" else status
            continue
        try:
            spec = read_json(d / "spec.json")
            if not (reason := _other_world(spec, Path(world_dir), base_model)):
                runs.append(_read_run(d, spec, columns))
        except (OSError, ValueError, KeyError) as exc:
            reason = f"unreadable record ({type(exc).__name__})"
        if reason:
            skipped[d.name] = reason
    return runs, skipped


# report flag: a caption that says the same 4-word phrase twice ("and a red cross ... and a red cross")
REPEAT_PHRASE = 4


def _repeats_phrase(text: str, n: int = REPEAT_PHRASE) -> bool:
    words = re.findall(r"[a-z0-9']+", text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def _repeats(text: str) -> bool:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return any(len(set(words[i:i + REPEAT_WORDS])) == 1 for i in range(len(words) - REPEAT_WORDS + 1))


def _run_figures(run: Run, columns: dict[str, Column]) -> dict[str, dict]:
    out = {}
    for key, rc in run.columns.items():
        col = columns[key]
        pairs = [(item_id, v) for item_id, v in rc["items"].items() if item_id in col.records]
        if not pairs:
            continue
        recs, preds = [col.records[i] for i, _ in pairs], [v[0] for _, v in pairs]
        top, count = Counter(_label(col, p, r) for p, r in zip(preds, recs)).most_common(1)[0]
        qo = [col.question_only[i] for i, _ in pairs if i in col.question_only]
        f = {"n": rc["n"], "score": rc["score"], "item_mean": fmean(v[1] for _, v in pairs),
             "question_only": fmean(qo) if qo else None,  # on the run's items (a test subsample may be smaller)
             "parse_rate": fmean(parsed_answer(col, p, r) is not None for p, r in zip(preds, recs)),
             "top_prediction": top, "top_share": count / len(preds), "gold_top_share": col.figures["gold_top_share"]}
        if col.figures.get("types"):
            by: dict[str, list[tuple[float, str]]] = defaultdict(list)
            for item_id, v in pairs:
                rec = col.records[item_id]
                by[query_type(rec)].append((v[1], _label(col, v[0], rec)))
            f["types"] = {}
            for t, got in sorted(by.items()):
                top_t, count_t = Counter(label for _, label in got).most_common(1)[0]
                f["types"][t] = {"n": len(got), "score": fmean(x for x, _ in got), "top": top_t,
                                 "top_share": count_t / len(got)}
        if col.kind == "yesno":
            f.update(yes_ratio=rc["extra"]["yes_ratio"], accuracy=rc["extra"]["accuracy"])
        if col.kind == "caption":
            f["repeat_share"] = fmean(_repeats(p) for p in preds)
            f["phrase_repeat_share"] = fmean(_repeats_phrase(p) for p in preds)
            refs = [x for r in recs for x in (r.get("references") or [])]
            f["reference_phrase_repeat_share"] = fmean(_repeats_phrase(x) for x in refs) if refs else 0.0
            f["object_share"] = fmean(bool(find_objects(p, col.synonyms)) for p in preds) if col.synonyms else None
        out[key] = f
    return out


@dataclass
class Criterion:
    """A named check: what failed (one line each) and how many things it checked (none checked = failed)."""

    name: str
    failures: list[str] = field(default_factory=list)
    checked: int = 0

    def check(self, ok: bool, failure: str) -> None:
        self.checked += 1
        if not ok:
            self.failures.append(failure)

    @property
    def passed(self) -> bool:
        return self.checked > 0 and not self.failures

    def lines(self) -> list[str]:
        head = f"{'PASS' if self.passed else 'FAIL'} ({self.name}) {CRITERIA[self.name]}  [{self.checked} checked]"
        return [head] + [f"    - {x}" for x in self.failures or ([] if self.checked else ["nothing measured"])]


def _setting(spec: dict, drop: tuple[str, ...] = ("seed",)) -> str:
    """A run's setting: its spec without ``drop`` (runs that differ only there are replicates)."""
    return json.dumps({**spec, "run": {k: v for k, v in spec["run"].items() if k not in drop}}, sort_keys=True)


def _world_criterion(columns: dict[str, Column]) -> Criterion:
    c = Criterion("a")
    for key, f in ((k, col.figures) for k, col in columns.items()
                   if col.figures["bound"] is not None and col.group in ("seen", "unseen")):
        c.check(not exceeds(f["question_only"], f["bound"]),
                f"{key}: question-only {f['question_only']:.3f} > {f['bound_kind']} = {f['bound']:.3f}")
    return c


def _base_criterion(columns, base: dict[str, dict], image_use: dict) -> tuple[Criterion, list[dict]]:
    c, rows = Criterion("b"), []
    for key, col in columns.items():
        b = base.get(key)
        rows.append({"column": key, "kind": col.kind, "question_only": col.figures["question_only"], **(b or {}),
                     **(image_use.get(col.dataset, {}) if col.split == "test" else {})})
        if b is None:
            if col.group == "seen" or col.kind in (*PARSED_KINDS, "caption"):
                c.check(False, f"{key}: not measured (no base-model run evaluates it)")
            continue
        if col.group == "seen":
            qo = b["question_only"]
            c.check(b["item_mean"] >= qo + SEEN_MARGIN,
                    f"{key}: zero-shot {b['item_mean']:.3f} < question-only {qo:.3f} + {SEEN_MARGIN}")
        if col.kind in PARSED_KINDS:
            c.check(b["parse_rate"] >= MIN_PARSE_RATE, f"{key}: zero-shot parse rate {b['parse_rate']:.3f} < "
                                                       f"{MIN_PARSE_RATE}")
        if col.kind == "yesno":
            c.check(POPE_YES_RATIO[0] <= b["yes_ratio"] <= POPE_YES_RATIO[1],
                    f"{key}: yes-ratio {b['yes_ratio']:.3f} outside {list(POPE_YES_RATIO)}")
            c.check(b["accuracy"] >= POPE_MIN_ACCURACY, f"{key}: POPE accuracy {b['accuracy']:.3f} < "
                                                         f"{POPE_MIN_ACCURACY}")
        if col.kind == "caption":
            share = b.get("object_share") or 0.0
            c.check(share >= MIN_CAPTION_OBJECTS, f"{key}: {share:.3f} of captions name an object < "
                                                  f"{MIN_CAPTION_OBJECTS}")
    seen = {col.dataset for col in columns.values() if col.group == "seen"}
    for fam in sorted(seen):  # unseen columns are at chance zero-shot, with or without the image
        r = image_use.get(fam)
        c.check(r is not None and r["blank"] <= BLANK_RATIO * r["image"], f"{fam}: blank-image score not measured "
                "(not in pretrain_record.json image_use_check)" if r is None else
                f"{fam}: blank-image {r['blank']:.3f} > {BLANK_RATIO} x image {r['image']:.3f}")
    return c, rows


def _checked_rates(runs_dir: str | Path) -> dict[str, float]:
    """Per method the rate of its calibration's convergence check (``doubled_at`` of every
    ``calibration-<profile>.json`` in ``runs_dir``; a method the files disagree on is left out)."""
    rates: dict[str, set[float]] = defaultdict(set)
    for path in sorted(Path(runs_dir).glob("calibration-*.json")):
        for method, lr in (read_json(path).get("doubled_at") or {}).items():
            rates[method].add(float(lr))
    return {m: next(iter(v)) for m, v in rates.items() if len(v) == 1}


def _convergence(trained: list[Run], rates: dict[str, float] | None = None) -> tuple[Criterion, list[dict]]:
    """Pairs of runs alike but for a doubled budget (``max_steps`` where the spec has it, else ``epochs``): the
    change of metrics.json's own score (the run's eval split: a calibration run's ``val`` counts too). ``rates``:
    per method the calibrated rate the study trains with; a calibration pair (``val``) at another rate of its grid
    does not count (the static grid also doubles the presets, which the study may not use)."""
    rates = rates or {}

    def counts(r: Run) -> bool:
        run = r.spec["run"]
        return run.get("eval_split") != "val" or r.method not in rates or run.get("lr") is None or \
            math.isclose(float(run["lr"]), rates[r.method])

    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in (r for r in trained if counts(r)):
        budget = "max_steps" if r.spec["run"].get("max_steps") is not None else "epochs"
        groups[(budget, _setting(r.spec, (budget,)))].append(r)
    by: dict[tuple, list] = defaultdict(list)
    for (k, _), rs in groups.items():
        for a, b in ((a, b) for a in rs for b in rs if a.spec["run"][k] and b.own_score is not None and
                     a.own_score is not None and math.isclose(b.spec["run"][k], 2 * a.spec["run"][k])):
            by[(a.method, a.own_column)].append((b.own_score - a.own_score, [a.run_id, b.run_id]))
    c, rows = Criterion("c"), []
    for (method, column), pairs in sorted(by.items()):
        rows.append({"method": method, "column": column, "pairs": len(pairs), "mean_diff": fmean(d for d, _ in pairs),
                     "runs": [p for _, p in pairs]})
    for method in sorted({m for m, _ in by}):  # the method's mean over its columns (docs/study.md: no mean score)
        diffs = [d for (m, _), pairs in by.items() if m == method for d, _ in pairs]
        diff = fmean(diffs)
        rows.append({"method": method, "column": "(mean)", "pairs": len(diffs), "mean_diff": diff, "runs": []})
        c.check(not exceeds(abs(diff), MAX_CONVERGENCE_DIFF), f"{method}: doubled - base = {diff:+.3f} in mean over "
                                                   f"{len(diffs)} pairs")
    for m in sorted({r.method for r in trained} - {m for m, _ in by}):
        c.check(False, f"{m}: not measured (no pair of runs with the budget doubled)")
    return c, rows


def _effects(columns, trained: list[Run]) -> tuple[Criterion, list[dict]]:
    """Per unseen VQA/MC column and trained setting: item scores averaged over seeds - question-only, with CI."""
    c, rows = Criterion("d"), []
    for key, col in ((k, col) for k, col in columns.items() if col.group == "unseen" and col.kind != "caption"):
        settings: dict[str, list[Run]] = defaultdict(list)
        for r in (r for r in trained if key in r.columns):
            settings[_setting(r.spec)].append(r)
        mine = []
        for rs in settings.values():
            ids = sorted(set.intersection(*(set(r.columns[key]["items"]) for r in rs)) & set(col.question_only))
            if len(ids) < 2:
                continue
            a, b = [fmean(r.columns[key]["items"][i][1] for r in rs) for i in ids], [col.question_only[i] for i in ids]
            iv = stats.paired_bootstrap_ci(a, b, CONFIDENCE, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
            mine.append({"column": key, "method": rs[0].method, "trained_on": rs[0].trained_on, "seeds": len(rs),
                         "runs": [r.run_id for r in rs], "n": len(ids), "score": fmean(a), "question_only": fmean(b),
                         "diff": iv.estimate, "ci_low": iv.low, "ci_high": iv.high})
        rows += mine
        best = max(mine, key=lambda e: e["diff"], default=None)
        c.check(any(e["diff"] >= MIN_EFFECT and e["ci_low"] > 0 for e in mine),
                f"{key}: not measured (no trained run evaluates it)" if best is None else
                f"{key}: best {best['method']} (trained on {best['trained_on']}) {best['diff']:+.3f} "
                f"[{best['ci_low']:+.3f}, {best['ci_high']:+.3f}] over question-only")
    return c, rows


def _seeds(columns, trained: list[Run]) -> tuple[Criterion, dict]:
    """Per PEFT method and training column, the most seeds of one setting."""
    seeds: dict[tuple, set] = defaultdict(set)
    for r in trained:
        seeds[(r.method, r.trained_on, _setting(r.spec))].add(r.spec["run"]["seed"])
    c, out = Criterion("g"), {}
    for m in study_methods():
        most: dict[str, int] = {}
        for (method, col, _), s in seeds.items():
            if method == m:
                most[col] = max(most.get(col, 0), len(s))
        ok = [col for col, n in most.items() if n >= MIN_SEEDS]
        unseen = [col for col in ok if col in columns and columns[col].group == "unseen"]
        out[m] = {"seeds_per_column": most, "columns": len(ok), "unseen": len(unseen)}
        c.check(len(ok) >= MIN_SEED_COLUMNS and len(unseen) >= MIN_SEED_UNSEEN,
                f"{m}: >= {MIN_SEEDS} seeds on {len(ok)} columns ({len(unseen)} unseen)")
    return c, out


def _carved_columns(world_dir: Path, columns: dict[str, Column]) -> dict[str, Column]:
    """The validation split carved from train (``data.CARVED_SPLITS``: what the calibration scores on) of every
    unseen family with a train split, as ``<family>/val`` columns with chance and baselines fitted on the rest of
    train. They feed the question-type table only: the criteria read the world's own splits."""
    from .data import load_dataset_info, load_split

    out: dict[str, Column] = {}
    for name in sorted({c.dataset for c in columns.values() if c.group == "unseen" and c.kind != "caption"}):
        folder = world_dir / name
        if not (folder / "train.json").exists():
            continue
        info, recs = load_dataset_info(folder), load_split(folder, "val", check_images=False)
        col = Column(f"{name}/val", name, "val", info["metric"], info.get("group", ""),
                     column_kind(info["metric"], recs), {r["id"]: r for r in recs})
        _baselines(col, load_split(folder, "train_minus_val", check_images=False))
        out[col.key] = col
    return out


def question_types(world: dict[str, dict], runs: list[dict], figs: dict[str, dict]) -> list[dict]:
    """Per unseen column with question types, method and type: the item mean of each method's runs trained on that
    column (zero-shot ``none``: every run evaluating it), mean with min and max over those runs, beside the type's
    chance; the runs' most common answer on the type (``top``) and its share (mean over runs: a type can collapse
    onto one answer while the column's top share stays low). ``near_chance``: at most chance +
    QUESTION_ONLY_MARGIN with at least MIN_TYPE_ITEMS items; ``collapsed``: the top share above criterion (e)'s
    bound for the type's own golds (trained runs). Not a criterion: a column's score can rise on one type while
    another is never learned, which the column's score alone does not show.

    Args:
        world: column key -> its figures (``group`` and ``types``: Validation.data["world"]).
        runs: dicts with ``run_id``, ``method`` and ``own_column``.
        figs: run id -> column key -> the run's figures there (with ``types``).
    """
    rows = []
    for key, w in ((k, w) for k, w in world.items() if w.get("group") == "unseen" and w.get("types")):
        methods: dict[str, list[str]] = defaultdict(list)
        for r in runs:
            if key in figs.get(r["run_id"], {}) and (r["method"] == "none" or r["own_column"] == key):
                methods[r["method"]].append(r["run_id"])
        for method in sorted(methods, key=lambda m: (m != "none", m)):
            for t, info in w["types"].items():
                got = [g for g in ((figs[i][key].get("types") or {}).get(t) for i in methods[method]) if g]
                if not got:
                    continue
                scores, n = [g["score"] for g in got], max(g["n"] for g in got)
                chance, mean, share = info["chance"], fmean(scores), fmean(g["top_share"] for g in got)
                rows.append({"column": key, "type": t, "n": n, "chance": chance, "method": method, "runs": len(got),
                             "score": mean, "min": min(scores), "max": max(scores),
                             "top": Counter(g["top"] for g in got).most_common(1)[0][0],  # the runs' commonest
                             "top_share": share,
                             "near_chance": chance is not None and n >= MIN_TYPE_ITEMS and
                             not exceeds(mean, chance + QUESTION_ONLY_MARGIN),
                             "collapsed": method != "none" and n >= MIN_TYPE_ITEMS and exceeds(
                                 share, max(TOP_SHARE_FLOOR, info["gold_top_share"] + TOP_SHARE_MARGIN))})
    return rows


def _outputs(runs: list[Run], figs: dict) -> tuple[Criterion, Criterion]:
    """(e) top share of trained runs' predictions, (f) repeated words in every run's captions."""
    top, repeats = Criterion("e"), Criterion("f")
    for r in runs:
        for key, f in figs[r.run_id].items():
            limit = max(TOP_SHARE_FLOOR, f["gold_top_share"] + TOP_SHARE_MARGIN)
            if r.method != "none":
                top.check(f["top_share"] <= limit, f"{r.run_id} on {key}: top share {f['top_share']:.3f} "
                                                   f"({f['top_prediction']!r}) > {limit:.3f}")
            if "repeat_share" in f:
                repeats.check(f["repeat_share"] <= MAX_REPEAT_SHARE,
                              f"{r.run_id} on {key}: {f['repeat_share']:.3f} of captions repeat a word")
    return top, repeats


_TYPE_COLUMNS = ["column", "type", "n", "chance", "method", "runs", "score", "min", "max", "near_chance", "top",
                 "top_share", "collapsed"]
_TABLES = [  # (title, data key, columns) of the text report
    ("(a) world: chance and baselines per column (fitted on train, scored on the split)", "world",
     ["column", "kind", "metric", "group", "n_train", "n_test", "chance", "gold_majority", "question_only", "bound",
      "bound_kind", "gold_top_share"]),
    ("per run and column (score as in metrics.json, POPE re-scored; shares of outputs)", "runs",
     ["run", "column", "n", "score", "parse_rate", "top_share", "gold_top_share", "top_prediction", "yes_ratio",
      "repeat_share", "object_share"]),
    ("(b) base model, zero-shot (item means; image/blank: pretrain_record.json)", "base_model",
     ["column", "kind", "item_mean", "question_only", "parse_rate", "yes_ratio", "accuracy", "object_share",
      "image", "blank"]),
    ("(c) convergence: doubled budget - base, the run's own score (metrics.json)", "convergence",
     ["method", "column", "pairs", "mean_diff"]),
    ("(d) effects over question-only (item-paired, seeds averaged, 95% bootstrap CI)", "effects",
     ["column", "method", "trained_on", "seeds", "n", "score", "question_only", "diff", "ci_low", "ci_high"]),
    ("question types of the unseen columns: item means of each method's runs trained there (none: zero-shot), "
     f"mean [min, max] over runs; near chance = <= chance + {QUESTION_ONLY_MARGIN} (not a criterion)", "question_types",
     _TYPE_COLUMNS),
    ("(g) seeds: most seeds of one setting per training column", "seeds",
     ["method", "columns", "unseen", "seeds_per_column"]),
]


@dataclass
class Validation:
    """All figures (``data``, JSON-ready) and the criteria; ``text()`` renders them as fixed-width tables."""

    data: dict
    criteria: list[Criterion]

    @property
    def exit_code(self) -> int:
        return 0 if all(c.passed for c in self.criteria) else 1

    def write_json(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.data)

    def _rows(self, key: str) -> list[dict]:
        d = self.data
        if key == "world":
            return [{"column": k, **v} for k, v in d["world"].items()]
        if key == "runs":
            return [{"run": r["run_id"], "column": k, **v} for r in d["runs"] for k, v in r["columns"].items()]
        if key == "seeds":
            return [{"method": m, **v, "seeds_per_column": json.dumps(v["seeds_per_column"], sort_keys=True)}
                    for m, v in d["seeds"].items()]
        return d["base_model"]["columns"] if key == "base_model" else d[key]

    def text(self) -> str:
        import pandas as pd

        d, skipped = self.data, self.data["skipped"]
        why = ", ".join(f"{n} {k}" for k, n in Counter(skipped.values()).items())
        out = [f"world {d['world_dir']}; runs {d['runs_dir']}: {len(d['runs'])} finished runs used, {len(skipped)} "
               f"skipped{f' ({why})' if why else ''}; base model {d['base_model_dir'] or 'not given'}"]
        digest = (d.get("base_model") or {}).get("weights_sha256")
        if digest:  # the base model is one draw per CPU: say which weights and which machine these figures are of
            out.append(f"base weights sha256 {digest}... (pre-training is bit-identical per recipe, machine and "
                       f"thread count, not across CPUs); validated on {d.get('machine')}")
        for title, key, cols in _TABLES:
            rows = self._rows(key)
            out.append(f"\n== {title}\n" + (pd.DataFrame(rows, columns=cols).to_string(
                index=False, na_rep="-", float_format=lambda x: f"{x:.3f}") if rows else "  (none)"))
        out += ["\n== criteria", *(line for c in self.criteria for line in c.lines())]
        out.append(f"{'PASS' if self.exit_code == 0 else 'FAIL'}: {sum(c.passed for c in self.criteria)} of "
                   f"{len(self.criteria)} criteria pass")
        return "\n".join(out)


def _weights_digest(base_dir: Path | None) -> str | None:
    """sha256 (16 hex digits) of the base model's weight files, or None without a base model folder."""
    files = sorted(base_dir.glob("*.safetensors")) if base_dir and base_dir.is_dir() else []
    if len(files) <= 1:  # one file: the first 16 digits `sha256sum model.safetensors` prints
        return file_digest(files[0]) if files else None
    return hashlib.sha256("".join(file_digest(f) for f in files).encode()).hexdigest()[:16]


def machine_line() -> str:
    """The CPU model, torch's vector instruction set and thread count: what decides the base model's rounding."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch thread(s), "
            f"torch {torch.__version__}")


def validate(runs_dir: str | Path, world_dir: str | Path, base_model_dir: str | Path | None = None) -> Validation:
    """Measure the runs of ``runs_dir`` made on ``world_dir`` (and the base model in ``base_model_dir``, whose
    ``pretrain_record.json`` gives the blank-image scores) and check criteria (a)-(g).

    Raises:
        FileNotFoundError: no runs folder or no world; ValueError: no runs, or none finished on this world.
    """
    run_dirs(runs_dir)
    base_dir = Path(base_model_dir) if base_model_dir else None
    columns = world_columns(world_dir)
    carved = _carved_columns(Path(world_dir), columns)  # read with the rest, kept out of the criteria
    runs, skipped = read_runs(runs_dir, world_dir, {**columns, **carved}, base_dir)
    if not runs:
        raise RunError(f"no finished runs of this world in {runs_dir} ({len(skipped)} skipped: "
                       f"{', '.join(sorted(set(skipped.values())))})")
    typed_figs = {r.run_id: _run_figures(r, {**columns, **carved}) for r in runs}
    figs = {i: {k: f for k, f in fs.items() if k in columns} for i, fs in typed_figs.items()}
    record = base_dir / "pretrain_record.json" if base_dir else None
    image_use = (read_json(record).get("image_use_check") if record and record.exists() else None) or {}
    base: dict[str, dict] = {}  # per column, the base-model run with the most items
    for r in (r for r in runs if r.method == "none"):
        for key, f in figs[r.run_id].items():
            if key not in base or f["n"] > base[key]["n"]:
                base[key] = {**f, "run_id": r.run_id}
    trained = [r for r in runs if r.method != "none"]
    crit_b, base_rows = _base_criterion(columns, base, image_use)
    crit_c, convergence = _convergence(trained, _checked_rates(runs_dir))
    crit_d, effects = _effects(columns, trained)
    crit_g, seeds = _seeds(columns, trained)
    criteria = [_world_criterion(columns), crit_b, crit_c, crit_d, *_outputs(runs, figs), crit_g]
    data = {
        "runs_dir": str(runs_dir), "world_dir": str(world_dir), "base_model_dir": str(base_dir) if base_dir else None,
        "skipped": skipped, "thresholds": {k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")
                                           and isinstance(v, (int, float, tuple))},
        "world": {k: {"kind": c.kind, "metric": c.metric, "group": c.group, **c.figures} for k, c in columns.items()},
        "runs": [{"run_id": r.run_id, "method": r.method, "seed": r.spec["run"].get("seed"),
                  "trained_on": r.trained_on, "own_column": r.own_column, "epochs": r.spec["run"].get("epochs"),
                  "columns": figs[r.run_id]}
                 for r in runs],
        "base_model": {"dir": str(base_dir) if base_dir else None, "image_use_check": image_use or None,
                       "columns": base_rows, "weights_sha256": _weights_digest(base_dir)},
        "machine": machine_line(),
        "convergence": convergence, "effects": effects, "seeds": seeds,
        "question_types": question_types(
            {k: {"group": c.group, **c.figures} for k, c in {**columns, **carved}.items()},
            [{"run_id": r.run_id, "method": r.method, "own_column": r.own_column} for r in runs], typed_figs),
        "criteria": [{"name": c.name, "title": CRITERIA[c.name], "passed": c.passed, "checked": c.checked,
                      "failures": c.failures} for c in criteria],
        "passed": all(c.passed for c in criteria)}
    return Validation(data, criteria)


def _state_key(runs_dir: Path, world_dir: Path, base_dir: Path | None) -> str:
    """A digest of everything :func:`validate` reads, by file size and modification time (the contents for the
    package's code): the run folders' records, the calibration files, the world's JSON files, the base model's
    record and weights."""
    h = hashlib.sha256(json.dumps([str(runs_dir.resolve()), str(world_dir.resolve()), str(base_dir)]).encode())
    package = Path(__file__).parent
    for f in sorted(package.rglob("*.py")):
        h.update(f.relative_to(package).as_posix().encode() + f.read_bytes())

    def stat(path: Path) -> None:
        try:
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}:-\n".encode())

    for d in run_dirs(runs_dir):
        for name in ("status.json", "spec.json", "metrics.json", "predictions.jsonl"):
            stat(d / name)
    for path in sorted([*runs_dir.glob("calibration-*.json"), *world_dir.glob("*.json"), *world_dir.glob("*/*.json")]):
        stat(path)
    if base_dir is not None:
        for name in ("pretrain_record.json", "model.safetensors"):
            stat(base_dir / name)
    return h.hexdigest()[:16]


def validation_data(runs_dir: str | Path, world_dir: str | Path, base_model_dir: str | Path | None = None) -> dict:
    """``validate(...).data`` as JSON gives it back, computed once per state of its inputs (:func:`_state_key`)
    and kept in ``<runs>/.validity/``: every report of a study shows a validity section from the same runs, and
    measuring them took about 5 s per report."""
    runs_dir, world_dir = Path(runs_dir), Path(world_dir)
    base_dir = Path(base_model_dir) if base_model_dir else None
    folder = runs_dir / ".validity"
    path = folder / f"{_state_key(runs_dir, world_dir, base_dir)}.json"
    if path.exists():
        try:
            return read_json(path)
        except (OSError, ValueError):
            pass  # half-written by an older process, or damaged: measure again
    data = json.loads(json.dumps(validate(runs_dir, world_dir, base_dir).data))
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.json"):  # one state kept: the runs only ever move forward
        old.unlink(missing_ok=True)
    write_json_atomic(path, data, sort_keys=False)  # the reports list runs' columns in the order measured
    return data


def _base_model_of(recipe_dir: Path, runs_dir: str | Path, run_ids: list[str] | None) -> Path:
    """The base model to validate a report's runs against: the one base model those runs name when it is in the
    cache (runs made by an earlier code version, whose recipe hashed differently), else the current recipe's."""
    named = set()
    for d in run_dirs(runs_dir):
        if (run_ids is None or d.name in run_ids) and (d / "spec.json").exists():
            try:
                named.add(read_json(d / "spec.json").get("base_model"))
            except (OSError, ValueError):
                continue
    present = [recipe_dir.parent / n for n in named if n and (recipe_dir.parent / n).is_dir()]
    return present[0] if len(present) == 1 else recipe_dir


def report_section(profile: str, cache: str | Path, runs_dir: str | Path, run_ids: list[str] | None = None,
                   overrides: Any = None):
    """What a report shows about its own evidence (embedded world only; None for real-model profiles).

    Returns ``(criteria, figures)``: one row per criterion (passed, failures that concern ``run_ids``, all failures
    for world- and base-model-level criteria), and per run of ``run_ids`` and evaluated column the score beside
    chance, the question-only baseline, the parse rate and the top share, with a ``flag`` naming what is degenerate:
    low parse rate, collapsed, repeated words, at or below chance (trained runs), not above question-only,
    captions naming an object in fewer than MIN_CAPTION_OBJECTS of outputs (CHAIR cannot be read), unconverged
    (criterion (c) for that method and column). :func:`mllm_study.findings.flags_from_figures` turns the flags into
    what the verdicts leave out.
    """
    import pandas as pd

    from .config import load_params, parse_overrides, project_path
    from .recipe import tiny_llava_dir
    from .world import ensure_world

    cache, runs_dir = project_path(cache), project_path(runs_dir)  # as the notebooks pass them: from the root
    params = load_params(profile=profile, overrides={**parse_overrides(overrides), "paths.cache": str(cache)})
    if params.run.model != "tiny-llava":
        return None
    world = ensure_world(params, progress=False)
    data = validation_data(runs_dir, world, _base_model_of(tiny_llava_dir(params, world), runs_dir, run_ids))
    ids = set(run_ids) if run_ids is not None else None
    rows = []
    for c in data["criteria"]:
        mine = [f for f in c["failures"] if ids is None or c["name"] in "ab" or any(i in f for i in ids)]
        rows.append({"criterion": f"({c['name']}) {c['title']}", "passed": c["passed"],
                     "failures here": "; ".join(mine) if mine else "-"})
    world_figs = data["world"]
    unconverged = {(c["method"], c["column"]): c["mean_diff"] for c in data["convergence"]
                   if c["column"] != "(mean)" and exceeds(abs(c["mean_diff"]), MAX_CONVERGENCE_DIFF)}
    figs = []
    for r in data["runs"]:
        if ids is not None and r["run_id"] not in ids:
            continue
        for col, f in r["columns"].items():
            flags = []
            if f.get("parse_rate") is not None and world_figs[col]["kind"] in PARSED_KINDS \
                    and f["parse_rate"] < MIN_PARSE_RATE:
                flags.append("low parse rate")
            if r["method"] != "none" and f["top_share"] > max(TOP_SHARE_FLOOR, f["gold_top_share"] + TOP_SHARE_MARGIN):
                flags.append(f"collapsed on {f['top_prediction']!r}")
            if f.get("repeat_share") is not None and f["repeat_share"] > MAX_REPEAT_SHARE:
                flags.append("repeated words")
            elif f.get("phrase_repeat_share") is not None and \
                    f["phrase_repeat_share"] > f["reference_phrase_repeat_share"] + MAX_REPEAT_SHARE:
                flags.append(f"repeated phrases ({f['phrase_repeat_share']:.0%} of captions vs "
                             f"{f['reference_phrase_repeat_share']:.0%} of references)")
            chance = world_figs[col].get("chance")
            if r["method"] != "none" and chance is not None and f["item_mean"] <= chance + 1e-12:
                flags.append(f"at or below chance ({chance:.3f})")
            elif f.get("question_only") is not None and f["item_mean"] <= f["question_only"]:
                flags.append("not above question-only")
            if f.get("object_share") is not None and f["object_share"] < MIN_CAPTION_OBJECTS:
                flags.append(f"only {f['object_share']:.0%} of captions name an object")
            if (r["method"], col) in unconverged:
                flags.append(f"unconverged (doubled budget moves the score {unconverged[(r['method'], col)]:+.3f})")
            figs.append({"run": r["run_id"], "column": col, "score": f["item_mean"],
                         "chance": world_figs[col].get("chance"), "question-only": f.get("question_only"),
                         "parse rate": f.get("parse_rate"), "top answer": f["top_prediction"],
                         "top share": f["top_share"], "flag": ", ".join(flags) or "-"})
    figures = pd.DataFrame(figs, columns=["run", "column", "score", "chance", "question-only", "parse rate",
                                          "top answer", "top share", "flag"])
    figures.attrs["world"] = {k: {n: w.get(n) for n in ("chance", "gold_majority", "question_only", "kind", "metric")}
                              for k, w in world_figs.items()}
    mine = [r for r in data["runs"] if ids is None or r["run_id"] in ids]
    figures.attrs["question_types"] = pd.DataFrame(
        question_types(world_figs, mine, {r["run_id"]: r["columns"] for r in mine}), columns=_TYPE_COLUMNS)
    return pd.DataFrame(rows), figures
