"""Evaluation metrics for multimodal LLM outputs behind one small registry.

Usage: ``compute_metric("vqa_score", ["Two."], [["2"] * 10]).value  # -> 1.0``

Every metric takes ``predictions`` (one string per item; ``None``/``""`` is scored as wrong) and ``references``
(one non-empty list of str per item) plus metric-specific keyword arguments, and returns a :class:`MetricResult`
whose ``per_item`` scores feed bootstrap CIs and paired tests. Registered: ``vqa_score``, ``accuracy``,
``mc_accuracy``, ``cider``, ``pope``, ``chair``; each :class:`Metric` states in ``reference`` what it reproduces.
"""
from __future__ import annotations

import difflib
import functools
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from statistics import fmean
from typing import Callable

from .errors import ConfigError, DataError
from .captions import cider_d, ptb_tokenize, tokenize_captions

__all__ = ["Metric", "MetricResult", "register_metric", "get_metric", "list_metrics", "compute_metric",
           "metric_higher_is_better",
           "vqa_process_answer", "normalize_answer", "extract_choice", "parse_yes_no", "parse_yes_no_llava",
           "resolve_variant", "ptb_tokenize",
           "tokenize_captions", "cider_d", "find_objects"]


@dataclass
class MetricResult:
    """Scores of one metric: ``value`` (mean of ``per_item``, except corpus metrics such as POPE's F1),
    ``per_item`` (one score per prediction, input order) and ``extra`` (named statistics)."""

    value: float
    per_item: list[float]
    extra: dict[str, float] = field(default_factory=dict)
    variant: str | None = None  # the named variant that produced the scores (None: the metric has no variants)


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``reference`` cites what it follows, ``version`` changes whenever scores may change,
    ``fn(predictions, references, variant=None, **kwargs) -> MetricResult`` validates its inputs.

    ``variants`` maps each named variant (another reference implementation's answer processing) to what it
    follows; ``default_variant`` is the one used when none is asked for (the study's numbers)."""

    name: str
    higher_is_better: bool
    reference: str
    version: str
    fn: Callable[..., MetricResult]
    variants: dict[str, str] = field(default_factory=dict)
    default_variant: str | None = None


_REGISTRY: dict[str, Metric] = {}


def _validate(predictions, references) -> tuple[list[str], list[list[str]]]:
    for arg, value in (("predictions", predictions), ("references", references)):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{arg} must be a list, got {type(value).__name__}")
    if len(predictions) != len(references):
        raise DataError(f"predictions and references must have the same length, got {len(predictions)} "
                        f"predictions and {len(references)} references")
    if not predictions:
        raise DataError("nothing to score: predictions and references are empty")
    for i, pred in enumerate(predictions):
        if pred is not None and not isinstance(pred, str):
            raise TypeError(f"predictions[{i}] must be a str or None, got {type(pred).__name__}")
    for i, refs in enumerate(references):
        if not isinstance(refs, (list, tuple)) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references[{i}] must be a list of str (e.g. ['red']), got {refs!r}")
        if not refs:
            raise DataError(f"references[{i}] is an empty list; every item needs at least one reference")
    return [p or "" for p in predictions], [list(refs) for refs in references]


def _per_item_kwarg(value, name: str, n: int) -> list:
    if value is None:
        raise DataError(f"this metric needs the keyword argument {name}= (one entry per prediction)")
    if not isinstance(value, (list, tuple)) or len(value) != n:
        got = f"{len(value)} entries" if isinstance(value, (list, tuple)) else type(value).__name__
        raise DataError(f"{name} must be a list with one entry per prediction: expected {n}, got {got}")
    return list(value)


def register_metric(name: str, higher_is_better: bool, reference: str, version: str,
                    variants: dict[str, str] | None = None, default_variant: str | None = None):
    """Decorator registering ``fn(predictions, references, **kwargs) -> MetricResult`` as ``name`` (ValueError if
    taken); the stored :attr:`Metric.fn` first validates the inputs like :func:`compute_metric`, None -> "".

    With ``variants`` ({name: what it follows}), ``fn`` also receives ``variant=`` (``default_variant`` when the
    caller passes none) and the result records it; an unknown variant is a ValueError listing the known ones."""
    variants = dict(variants or {})
    if variants and default_variant not in variants:
        raise ValueError(f"metric {name!r}: default_variant {default_variant!r} "  # internal
                         f"is not one of {sorted(variants)}")

    def decorator(fn):
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is already registered")  # internal

        @functools.wraps(fn)
        def checked(predictions, references, variant: str | None = None, **kwargs) -> MetricResult:
            chosen = resolve_variant(name, variant)
            args = _validate(predictions, references)
            result = fn(*args, variant=chosen, **kwargs) if variants else fn(*args, **kwargs)
            result.variant = chosen
            return result

        _REGISTRY[name] = Metric(name, higher_is_better, reference, version, checked, variants, default_variant)
        return fn
    return decorator


def resolve_variant(name: str, variant: str | None) -> str | None:
    """The variant metric ``name`` uses for ``variant`` (None -> its default); ValueError if it has no such one."""
    metric = get_metric(name)
    if variant is None:
        return metric.default_variant
    if variant not in metric.variants:
        known = ", ".join(metric.variants) if metric.variants else "none (it has a single definition)"
        close = difflib.get_close_matches(str(variant), list(metric.variants), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown variant {variant!r} of metric {name!r}; variants: {known}{hint}")
    return variant


def get_metric(name: str) -> Metric:
    """Return metric ``name``; unknown names raise ConfigError listing the known ones and the closest match."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown metric {name!r}; known metrics: {', '.join(list_metrics())}{hint}")
    return _REGISTRY[name]


def metric_higher_is_better(name: str) -> bool:
    """The registered direction of metric ``name``: True when a larger score is better (``chair``: False). Rankings
    (``report.friedman_ranks``, ``contrasts.winners``) read it. A named statistic ``<metric>.<stat>`` has no
    registered direction (``chair.recall`` is better high, ``chair`` low): ConfigError, as for an unknown metric."""
    if name not in _REGISTRY and "." in str(name) and str(name).split(".", 1)[0] in _REGISTRY:
        raise ConfigError(f"{name!r} is a statistic of metric {str(name).split('.', 1)[0]!r} with no registered "
                          f"direction; rank by a registered metric ({', '.join(list_metrics())}) or say which "
                          f"direction is better (higher_is_better=)")
    return get_metric(name).higher_is_better


def list_metrics() -> list[str]:
    """Return the registered metric names, sorted."""
    return sorted(_REGISTRY)


def compute_metric(name: str, predictions: list[str], references: list[list[str]], variant: str | None = None,
                   **kwargs) -> MetricResult:
    """Score ``predictions`` (str per item; None/"" is wrong) against ``references`` (non-empty list of str per
    item) with metric ``name``; ``variant`` picks a named variant (``vqa_score``: official-2016 (default),
    official-2021, lmms-eval, lmms-eval-vqav2; ``pope``: strict (default), llava); ``kwargs`` are the metric's
    options, e.g. ``choices=`` for ``mc_accuracy``. The result's ``variant`` says which variant scored it.

    Raises:
        ValueError: Unknown metric or variant, different lengths, no items, an empty reference list, bad options.
        TypeError: A prediction that is not str/None, a reference that is not a list of str.
    """
    metric = get_metric(name)
    if variant is None and not metric.variants:  # a metric without variants need not take the keyword
        return metric.fn(predictions, references, **kwargs)
    return metric.fn(predictions, references, variant=variant, **kwargs)


# ---- VQA score: GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py, re-implemented ----------------
_VQA_CONTRACTIONS = {k: v for pair in (
    "aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've|couldnt've "
    "couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've|hasnt "
    "hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's|Id've "
    "I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam "
    "ma'am|mightnt mightn't|mightnt've mightn't've|mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve "
    "must've|neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at|'ow'sat "
    "'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've|shouldnt shouldn't|"
    "shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd|somebodyd've somebody'd've|somebody'dve "
    "somebody'd've|somebodyll somebody'll|somebodys somebody's|someoned someone'd|someoned've someone'd've|"
    "someone'dve someone'd've|someonell someone'll|someones someone's|somethingd something'd|somethingd've "
    "something'd've|something'dve something'd've|somethingll something'll|thats that's|thered there'd|thered've "
    "there'd've|there'dve there'd've|therere there're|theres there's|theyd they'd|theyd've they'd've|they'dve "
    "they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas|wasnt wasn't|wed've we'd've|we'dve we'd've|weve "
    "we've|werent weren't|whatll what'll|whatre what're|whats what's|whatve what've|whens when's|whered where'd|wheres "
    "where's|whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's|whove who've|whyll "
    "why'll|whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't|wouldnt've wouldn't've|wouldn'tve "
    "wouldn't've|yall y'all|yall'll y'all'll|y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve "
    "y'all'd've|youd you'd|youd've you'd've|you'dve you'd've|youll you'll|youre you're|youve you've").split("|")
    for k, v in [pair.split(" ")]}
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: "(?!<=" is a lookahead, as in the official code
_VQA_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def _vqa_punctuation(text: str) -> str:
    out, digit_comma = text, _VQA_COMMA_STRIP.search(text) is not None
    for p in _VQA_PUNCT:  # deleted if it touches a space anywhere (or the text has "1,000"), else -> a space
        out = out.replace(p, "" if (p + " " in text or " " + p in text or digit_comma) else " ")
    return _VQA_PERIOD_STRIP.sub("", out, 32)  # the official code passes re.UNICODE (== 32) as `count`; kept


def _vqa_digit_article(text: str) -> str:
    """``processDigitArticle``: lowercase, number words -> digits, drop a/an/the, contractions map."""
    words = [_VQA_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in ("a", "an", "the"))


def _ws(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


_LMMS_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")  # lmms-eval's COMMA_STRIP ("1,,000" counts too)


def _lmms_punctuation(text: str) -> str:
    """lmms-eval ``EvalAIAnswerProcessor.process_punctuation``: the official rule with its own comma pattern."""
    out, digit_comma = text, _LMMS_COMMA_STRIP.search(text) is not None
    for p in _VQA_PUNCT:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or digit_comma) else " ")
    return _VQA_PERIOD_STRIP.sub("", out, 32)


def _lmms_process(text: str) -> str:
    """lmms-eval ``EvalAIAnswerProcessor.__call__``: ``word_tokenize`` (lowercase, drop "," and "?", "'s" ->
    " 's"), newlines/tabs -> spaces, strip, then punctuation and digit/article processing."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _vqa_digit_article(_lmms_punctuation(_ws(text)))


def vqa_process_answer(answer: str) -> str:
    """Official VQA processing of a predicted answer.

    Newlines/tabs -> spaces, strip; ``processPunctuation``: each char of the punct list is deleted if it touches a
    space anywhere in the text or the text has a digit-comma-digit ("1,000" -> "1000"), else replaced by a space
    ("black/white" -> "black white"); periods not followed by a digit are deleted ("yes." -> "yes", "2.5" kept);
    ``processDigitArticle``: lowercase, none/zero..ten -> digits, drop a/an/the, contractions map ("dont" ->
    "don't"; "it's" is kept).
    """
    return _vqa_digit_article(_vqa_punctuation(_ws(answer)))


def _vqa_pair(pred: str, refs: list[str], variant: str) -> tuple[str, list[str]]:
    """(processed prediction, processed references) of one item under a ``vqa_score`` variant."""
    if variant == "official-2016":  # the prediction always; references only punctuation, only if they differ
        return vqa_process_answer(pred), [_vqa_punctuation(r) for r in refs] if len(set(refs)) > 1 else refs
    if variant == "official-2021":  # whitespace everywhere; the full processing on both only if the refs differ
        pred, refs = _ws(pred), [_ws(r) for r in refs]
        if len(set(refs)) > 1:
            return _vqa_digit_article(_vqa_punctuation(pred)), [_vqa_digit_article(_vqa_punctuation(r)) for r in refs]
        return pred, refs
    if variant == "lmms-eval":  # the processor's __call__ on both (its ok_vqa and vizwiz_vqa tasks)
        return _lmms_process(pred), [_lmms_process(r) for r in refs]
    # lmms-eval-vqav2: punctuation + digit/article on both, always (its vqav2 task; no word_tokenize)
    return (_vqa_digit_article(_lmms_punctuation(_ws(pred))),
            [_vqa_digit_article(_lmms_punctuation(_ws(r))) for r in refs])


_VQA_VARIANTS = {
    "official-2016": "GT-Vision-Lab/VQA vqaEval.py as of 2016 (commit 458a8b2): the prediction gets the full "
                     "processing; references only processPunctuation, and only when they are not all identical",
    "official-2021": "GT-Vision-Lab/VQA vqaEval.py since 2021-03-11 (commit a013f00, 'Fixed processing answers "
                     "bug'): newlines/tabs stripped everywhere; when the references differ, prediction and "
                     "references get punctuation + digit/article processing, else both are compared as they are",
    "lmms-eval": "EvolvingLMMs-Lab/lmms-eval EvalAIAnswerProcessor.__call__ on prediction and references "
                 "(lmms_eval/tasks/ok_vqa and vizwiz_vqa utils.py; word_tokenize turns \"'s\" into \" 's\")",
    "lmms-eval-vqav2": "EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks/vqav2/utils.py: process_punctuation + "
                       "process_digit_article on prediction and references, always",
}


@register_metric("vqa_score", True, "Official VQA accuracy, GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/"
                 "vqaEval.py (https://github.com/GT-Vision-Lab/VQA); Antol et al., ICCV 2015", "1",
                 variants=_VQA_VARIANTS, default_variant="official-2016")
def vqa_score(predictions: list[str], references: list[list[str]], normalize_references: bool = False,
              variant: str = "official-2016"):
    """VQA accuracy as the official ``vqaEval.py`` (``variant="official-2016"``, the default; others below).

    The prediction goes through :func:`vqa_process_answer`. The references, as in the official code, only go
    through ``processPunctuation`` -- no digit/article processing, lowercasing or stripping -- and only if they are
    not all identical; identical references are compared verbatim. Official annotations are pre-normalised, so a
    reference "two" or "Red" never matches; ``normalize_references=True`` applies :func:`vqa_process_answer` to
    every reference instead (not official; for hand-written references).

    Per item, over the n references: leave each one out, take min(1, exact matches among the other n - 1 / 3) and
    average the n values (n = 10 in VQA). Any n >= 2 uses this formula (so for n < 4 even a unanimous match scores
    below 1, e.g. 2/3 for n = 3); a single reference scores 1.0 on an exact match (the formula would give 0).
    An empty prediction scores 0.

    Variants differ only in how prediction and references are processed before the exact match (their sources in
    ``get_metric("vqa_score").variants``). ``official-2021``: "two" vs ten "2" scores 0 (unanimous references are
    compared verbatim, unprocessed), "t-shirt" vs ten "t-shirt" scores 1 (2016: 0, the prediction becomes
    "t shirt"). ``lmms-eval``: "it's" becomes "it 's" on both sides. ``normalize_references`` applies
    :func:`vqa_process_answer` to the references before the variant's own processing.
    """
    per_item = []
    for pred, refs in zip(predictions, references):
        if normalize_references and variant == "official-2016":  # exactly as before variants existed
            answer, refs = vqa_process_answer(pred), [vqa_process_answer(r) for r in refs]
        else:
            answer, refs = _vqa_pair(pred, [vqa_process_answer(r) for r in refs] if normalize_references else refs,
                                     variant)
        matches = sum(r == answer for r in refs)
        if not answer or len(refs) == 1:
            per_item.append(float(bool(answer) and matches == 1))
        else:
            per_item.append(fmean([min(1.0, (matches - (r == answer)) / 3.0) for r in refs]))
    return MetricResult(fmean(per_item), per_item, {})


_NUMBER_WORDS = {k: v for k, v in _VQA_NUMBERS.items() if k != "none"}


def normalize_answer(text: str) -> str:
    """Normalisation for ``accuracy``: lowercase, strip, drop trailing periods, collapse whitespace, and map the
    words zero..ten to digits one word at a time (VQA's map without "none"): " Two Dogs. " -> "2 dogs"."""
    return " ".join(_NUMBER_WORDS.get(w, w) for w in text.lower().strip().rstrip(".").split())


@register_metric("accuracy", True, "Exact match after normalize_answer (this project); number words as "
                 "vqaEval.py of https://github.com/GT-Vision-Lab/VQA", "1")
def accuracy(predictions: list[str], references: list[list[str]]):
    """1.0 if the normalised prediction equals any normalised reference (:func:`normalize_answer`), else 0.0."""
    per_item = [float(bool(a := normalize_answer(p)) and a in {normalize_answer(r) for r in refs})
                for p, refs in zip(predictions, references)]
    return MetricResult(fmean(per_item), per_item, {})


# ---- multiple choice ---------------------------------------------------------------------------------------------
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_MC_BARE = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:]?")
_MC_PREFIX = re.compile(r"(?:([A-Z])[.):]|[(\[]([A-Za-z])[)\]])\s")
_MC_PHRASE = re.compile(r"\b(?i:answer|option|choice)(?:\s+(?i:is))?\s*[:\-]?\s*[(\[]?(?:([A-Z])|([a-z])(?=[)\]]|"
                        r"\s*[.,:;!]|\s*$))[)\]]?(?![A-Za-z0-9'])")
_MC_LETTER = re.compile(r"(?<![A-Za-z0-9'])([(\[])?([A-Z])[)\]]?(?![A-Za-z0-9'])(?=(.{0,5}))")


def _mc_norm(text: str) -> str:
    text = re.sub(r"^\s*(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is|:)\s*", "", text.lower())
    return " ".join(re.findall(r"[a-z0-9]+(?:['.][a-z0-9]+)*", text))


def extract_choice(prediction: str, choices: list[str]) -> int | None:
    """Return the 0-based option a free-form answer picks, or None (nothing found, or ambiguous).

    Stages, in order; the first that finds something decides, and finding two different options is ambiguous:
    1. the whole answer is a letter: "B", "b", "B.", "(B)", "B)", "[b]", "B:";
    2. it starts with "B. ", "B) ", "B: " or "(b) " -- "B. blue" is B (the letter wins over the text);
    3. "answer/option/choice [is] [:] B" anywhere: "The answer is B", "Answer: (B)."; a lower-case letter
       counts only before punctuation or the end ("the answer is a dog" is not A);
    4. the answer, lowercased, without a leading "the answer is" and punctuation, equals one option text;
    5. option texts found in it on word boundaries, dropping those inside a longer found one ("dark red" > "red");
    6. standalone capital letters ("I think (B)"); "A"/"I" followed by a lower-case word other than or/and/is
       are not letters ("A dog").
    Letters beyond the number of choices are ignored.
    """
    text, letters = " ".join(prediction.split()), _LETTERS[:len(choices)]

    def pick(found: set[int]) -> int | None | bool:  # False: this stage found nothing
        return found.pop() if len(found) == 1 else (None if found else False)

    def idx(found) -> set[int]:
        return {letters.index(c.upper()) for c in found if c and c.upper() in letters}

    if (m := _MC_BARE.fullmatch(text)) and (r := pick(idx([m[1]]))) is not False:
        return r
    if (m := _MC_PREFIX.match(text)) and (r := pick(idx([m[1] or m[2]]))) is not False:
        return r
    if (r := pick(idx([m[1] or m[2] for m in _MC_PHRASE.finditer(text)]))) is not False:
        return r
    norm, options = _mc_norm(text), [_mc_norm(c) for c in choices]
    if (r := pick({i for i, o in enumerate(options) if o and o == norm})) is not False:
        return r
    found = {i for i, o in enumerate(options) if o and re.search(rf"(?<![a-z0-9]){re.escape(o)}(?![a-z0-9])", norm)}
    found = {i for i in found if not any(options[i] != options[j] and options[i] in options[j] for j in found)}
    if (r := pick(found)) is not False:
        return r
    standalone = [m[2] for m in _MC_LETTER.finditer(text)  # skip "A dog", "I think"
                  if m[1] or m[2] not in "AI" or not re.match(r"\s+(?!or\b|and\b|is\b)[a-z]", m[3])]
    return None if (r := pick(idx(standalone))) is False else r


@register_metric("mc_accuracy", True, "Multiple-choice accuracy with documented answer extraction (this project; cf. "
                 "LLaVA llava/eval/eval_science_qa.py, https://github.com/haotian-liu/LLaVA)", "1")
def mc_accuracy(predictions: list[str], references: list[list[str]], choices: list[list[str]] | None = None):
    """Multiple-choice accuracy.

    Args:
        choices: Option texts per item, in order; option k has letter ``"ABC..."[k]``.

    A reference is the gold letter ("B", "(b)", "B.") or else the gold option text (case/punctuation-insensitive);
    anything else raises ValueError. The prediction is mapped with :func:`extract_choice`; no or an ambiguous
    extraction scores 0 and is counted in ``extra["unparsed"]``.
    """
    choices, per_item, unparsed = _per_item_kwarg(choices, "choices", len(predictions)), [], 0
    for i, (pred, refs, opts) in enumerate(zip(predictions, references, choices)):
        if not isinstance(opts, (list, tuple)) or not 0 < len(opts) <= 26 or not all(isinstance(c, str) for c in opts):
            raise DataError(f"choices[{i}] must be a list of 1 to 26 str, got {opts!r}")
        gold = set()
        for ref in refs:
            m = _MC_BARE.fullmatch(ref.strip())
            if m and m[1].upper() in _LETTERS[:len(opts)]:
                gold.add(_LETTERS.index(m[1].upper()))
                continue
            if not (hits := {j for j, c in enumerate(opts) if _mc_norm(c) == _mc_norm(ref)}):
                raise DataError(f"references[{i}]: gold {ref!r} is neither a letter A..{_LETTERS[len(opts) - 1]} "
                                f"nor one of the choices {list(opts)!r}")
            gold |= hits
        picked = extract_choice(pred, list(opts))
        unparsed += picked is None
        per_item.append(float(picked in gold))
    return MetricResult(fmean(per_item), per_item, {"unparsed": float(unparsed)})


# ---- CIDEr-D: tokenisation and scorer in captions.py (pycocoevalcap 1.2) -----------------------------------
@register_metric("cider", True, "CIDEr-D as pycocoevalcap 1.2 Cider/CiderScorer after its PTBTokenizer "
                 "(https://github.com/salaniz/pycocoevalcap); Vedantam et al., CVPR 2015", "1")
def cider(predictions: list[str], references: list[list[str]], tokenizer: str = "auto"):
    """CIDEr-D of the set (see :func:`cider_d`) after :func:`tokenize_captions` with ``tokenizer``.

    ``per_item`` are the per-caption scores, ``value`` their mean (= pycocoevalcap's corpus score); an empty
    caption scores 0. ``extra["ptb_java"]`` is 1.0 if the java tokenizer was used.
    """
    used = tokenizer if tokenizer != "auto" else ("ptb" if shutil.which("java") else "python")
    flat = tokenize_captions(predictions + [r for refs in references for r in refs], used)
    refs, pos = [], len(predictions)
    for r in references:
        refs.append(flat[pos:pos + len(r)])
        pos += len(r)
    per_item = cider_d(flat[:len(predictions)], refs)
    return MetricResult(fmean(per_item), per_item, {"ptb_java": float(used == "ptb")})


# ---- POPE --------------------------------------------------------------------------------------------------------
def parse_yes_no(text: str) -> str | None:
    """Parse a POPE answer into "yes", "no" or None (unparsed).

    As the POPE/LLaVA ``eval_pope.py`` scripts: keep the text before the first "." and drop commas; it is "no" if
    it has the word "no" or "not". Unlike them, words are ``[a-z]+`` runs of the lowercased text (so "No!" and
    "NOT" count), and the rest is "yes" only if it has the word "yes", else None. "isn't" is no negation (as POPE).
    """
    words = re.findall(r"[a-z]+", text.split(".", 1)[0].replace(",", "").lower())
    return "no" if ("no" in words or "not" in words) else "yes" if "yes" in words else None


def parse_yes_no_llava(text: str) -> str:
    """LLaVA ``llava/eval/eval_pope.py``'s reading: keep the text before the first ".", drop commas, split on
    single spaces; "no" if a word is exactly ``No``, ``no`` or ``not``, else "yes" (so "NO", "No!", "Not sure"
    and "" are yes)."""
    words = text.split(".", 1)[0].replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


_POPE_VARIANTS = {
    "strict": "this project: parse_yes_no (case-insensitive words; an answer that is neither yes nor no is "
              "unparsed and wrong on every probe)",
    "llava": "haotian-liu/LLaVA llava/eval/eval_pope.py (as RUCAIBox/POPE evaluate.py): every answer without the "
             "words 'No', 'no' or 'not' before its first period is a yes",
}


@register_metric("pope", True, "POPE (Li et al., EMNLP 2023), https://github.com/RUCAIBox/POPE evaluate.py, as "
                 "LLaVA llava/eval/eval_pope.py; an answer that is neither yes nor no is scored wrong (not as a yes)",
                 "2", variants=_POPE_VARIANTS, default_variant="strict")
def pope(predictions: list[str], references: list[list[str]], variant: str = "strict"):
    """POPE object probing; ``value`` is the F1 of the "yes" class.

    ``variant="strict"`` (default) reads answers as below; ``variant="llava"`` reads them as LLaVA's
    ``eval_pope.py`` (:func:`parse_yes_no_llava`: every answer is yes or no, nothing is unparsed).

    ``references[i][0]`` is the label, "yes" or "no". Answers are parsed with :func:`parse_yes_no`. Unlike the
    POPE and LLaVA scripts (every answer without "no"/"not" is a yes there), an answer that is neither yes nor no
    (empty included) is *unparsed*: wrong on every probe, positive or negative, and never counted as a yes.
    ``per_item`` is correctness 0/1. ``extra``: tp/fp/tn/fn (parsed answers only), unparsed (count),
    unparsed_positive (of them, on positive probes), parse_rate (share parsed); over all probes accuracy and
    yes_ratio (share answered yes); precision = tp / (tp + fp), recall = tp / positive probes (an unparsed answer
    to a positive is a miss), f1; precision/recall/F1 are 0 when their denominator is 0.
    """
    counts, per_item = Counter(), []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        label = refs[0].strip().lower()
        if label not in ("yes", "no"):
            raise DataError(f"references[{i}] must be ['yes'] or ['no'] for pope, got {refs!r}")
        if variant == "llava":
            answer = parse_yes_no_llava(pred)
        else:
            answer = parse_yes_no(pred) if pred.strip() else None
        if answer is None:
            counts["unparsed"] += 1
            counts["unparsed_positive"] += label == "yes"
        else:
            counts[("tp" if label == "yes" else "fp") if answer == "yes" else ("tn" if label == "no" else "fn")] += 1
        per_item.append(float(answer == label))
    tp, fp, tn, fn, n = counts["tp"], counts["fp"], counts["tn"], counts["fn"], len(per_item)
    positives = tp + fn + counts["unparsed_positive"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    extra = {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1, "yes_ratio": (tp + fp) / n,
             "parse_rate": 1 - counts["unparsed"] / n}
    extra.update({k: float(counts[k]) for k in ("tp", "fp", "tn", "fn", "unparsed", "unparsed_positive")})
    return MetricResult(f1, per_item, extra)


# ---- CHAIR -------------------------------------------------------------------------------------------------------
def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9]+", text.lower()))


def _lexicon(synonyms: dict[str, list[str]]) -> dict[tuple[str, ...], str]:
    if not isinstance(synonyms, dict) or not synonyms:
        raise ConfigError("synonyms must be a non-empty dict {canonical object: [words naming it], ...}")
    explicit: dict[tuple[str, ...], str] = {}
    for canon, phrases in synonyms.items():
        for phrase in [canon, *phrases]:
            if (key := _words(phrase)) and explicit.setdefault(key, canon) != canon:
                raise ConfigError(f"synonym {phrase!r} is listed for both {explicit[key]!r} and {canon!r}")
    lexicon = dict(explicit)
    for key, canon in explicit.items():  # plural (or singular) of the last word, unless it is listed itself
        last = key[-1]
        for form in (last + "s", last + "es", last[-1] == "y" and last[:-1] + "ies", last[-1] == "s" and last[:-1]):
            if form:
                lexicon.setdefault(key[:-1] + (form,), canon)
    return lexicon


def _mentions(text: str, lexicon: dict[tuple[str, ...], str]) -> list[str]:
    longest, words, found, i = max(map(len, lexicon)), _words(text), [], 0
    while i < len(words):
        size = next((s for s in range(min(longest, len(words) - i), 0, -1) if words[i:i + s] in lexicon), 0)
        if size:
            found.append(lexicon[words[i:i + size]])
        i += max(size, 1)
    return found


def find_objects(text: str, synonyms: dict[str, list[str]]) -> list[str]:
    """Return the canonical objects ``text`` mentions, in order, once per mention.

    Text and synonyms are lowercased and split into ``[a-z0-9]+`` words, so matches fall on word boundaries
    ("cat" is not found in "catalog"; "teddy-bear" matches "teddy bear"). At each position the longest phrase
    wins ("hot dog" before "dog") and matches do not overlap. Each canonical name is its own synonym. A phrase's
    last word also matches with "s"/"es" added (y -> "ies"), or without a final "s" ("glasses" -> "glasse" too);
    explicitly listed phrases take precedence; list irregular plurals ("people") explicitly.
    """
    return _mentions(text, _lexicon(synonyms))


@register_metric("chair", False, "CHAIR (Rohrbach et al., EMNLP 2018, Object Hallucination in Image Captioning, "
                 "https://github.com/LisaAnne/Hallucination) with user-supplied synonyms", "1")
def chair(predictions: list[str], references: list[list[str]], objects: list[list[str]] | None = None,
          synonyms: dict[str, list[str]] | None = None):
    """CHAIR object hallucination of captions; ``references`` are unused (pass ``[[""]] * n``).

    Args:
        objects: Ground-truth object names per image, mapped to canonical objects by :func:`find_objects`
            ("red circle" -> circle); names matching no synonym are ignored.
        synonyms: Canonical object -> words/phrases naming it (see :func:`find_objects`).

    A mention is hallucinated if its object is not among the image's ground-truth objects. ``per_item`` is 1.0 if
    the caption hallucinates; ``value`` = ``extra["chair_s"]`` = their mean; ``extra["chair_i"]`` = hallucinated
    mentions / all object mentions of the set (repeats count; 0 without mentions); also mentions, hallucinated
    (counts) and recall (share of ground-truth objects mentioned). An empty caption hallucinates nothing.
    """
    objects, lexicon = _per_item_kwarg(objects, "objects", len(predictions)), _lexicon(synonyms)
    per_item, said_total, bad_total, gt_total, gt_said = [], 0, 0, 0, 0
    for pred, names in zip(predictions, objects):
        truth = {canon for name in names for canon in _mentions(name, lexicon)}
        said = _mentions(pred, lexicon)
        bad = sum(canon not in truth for canon in said)
        said_total, bad_total, gt_total = said_total + len(said), bad_total + bad, gt_total + len(truth)
        gt_said += len(truth & set(said))
        per_item.append(float(bad > 0))
    chair_s = fmean(per_item)
    return MetricResult(chair_s, per_item, {
        "chair_s": chair_s, "chair_i": bad_total / said_total if said_total else 0.0, "mentions": float(said_total),
        "hallucinated": float(bad_total), "recall": gt_said / gt_total if gt_total else 0.0})
