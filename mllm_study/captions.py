"""Caption tokenisation and CIDEr-D exactly as pycocoevalcap 1.2 (its PTBTokenizer preprocessing, then
``cider/cider_scorer.py``); the registered ``cider`` metric in :mod:`mllm_study.metrics` calls these.

Usage: ``cider_d(tokenize_captions(["a dog runs"]), [tokenize_captions(["a dog is running", "dog runs"])])``
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
from collections import Counter

from .errors import ConfigError

__all__ = ["ptb_tokenize", "tokenize_captions", "cider_d", "chair_synonyms"]


_PTB_REMOVED = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...",
                ";"}  # pycocoevalcap's PUNCTUATIONS; "-lrb-" etc. survive since the tokenizer lowercases them
_PTB_MAP = {'"': "''", "(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
            "cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "lemme": "lem me",
            "gimme": "gim me", "y'all": "y' all", "'tis": "'t is", "'twas": "'t was"}
_PTB_TOKEN = re.compile(r"""
    (?P<abbr>(?<![^\s"'`(\[{])(?:[a-z](?:\.[a-z])*\.|no\.(?=\s+\d)|(?:mr|mrs|ms|dr|st|mt|jr|sr|prof|ave|gen|capt|sgt
             |lt|col|jan|feb|corp|bros|ft|dept|rd|blvd|inc|co|ltd|vs|etc|est)\.)(?!\w))   # a.  u.s.  mr.  no. 5
  | (?P<url>\w+(?:[.-]\w+)*@\w+(?:[.-]\w+)+ | [a-z]+://[^\s"'()\[\]{}]*[^\s"'()\[\]{}.,;:!?] | [\#@]\w+)
  | (?P<word>\w+(?:(?:[-/.]|(?<=[^\W\d_])'(?=[^\W\d_])|(?<=\d)[,:](?=\d))\w+)*)
  | (?P<clitic>''|``|(?:'(?:n'|s|m|d|re|ve|ll|em|n|cause|tis|twas)|(?<!\w)'\d\d(?:s|(?=\s|$)))(?!\w))
  | (?P<ellipsis>\.\.\.+) | (?P<dash>--+) | (?P<other>[?!]+|\S)
""", re.VERBOSE)
_LINE_BREAKS = dict.fromkeys(map(ord, "\r\n\x0b\x0c\x85\u2028\u2029"), " ")
_PTB_CHARS = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": " -- ",
                            "\u2014": " -- ", "\u2026": "...", **_LINE_BREAKS})


def _ptb_word(tok: str) -> list[str]:
    if "-" in tok and re.search(r"\.(?!\d)", tok):  # hot-dog.then -> hot-dog . then
        return [t for part in re.split(r"(\.(?!\d))", tok) if part for t in _ptb_word(part)]
    if "'n'" in tok and not tok.startswith("'n'") and not tok.endswith("'n'"):  # rock'n'roll -> rock 'n' roll
        head, tail = tok.split("'n'", 1)
        return _ptb_word(head) + ["'n'"] + _ptb_word(tail)
    if m := re.fullmatch(r"(\d+(?:[.,:]\d+)+)([^\W\d_]\w*)", tok):  # 1.5m -> 1.5 m, 12:00pm -> 12:00 pm
        return [m[1], m[2]]
    if m := re.fullmatch(r"(.+?)(n't|'(?:s|m|d|re|ve|ll|n))", tok):  # don't -> do n't, it's -> it 's
        return [m[1], m[2]]
    return _PTB_MAP.get(tok, tok).split()


def ptb_tokenize(text: str) -> str:
    """Pure-Python stand-in for pycocoevalcap's ``PTBTokenizer`` (CoreNLP 3.4.1, ``-lowerCase -preserveLines``)
    followed by its removal of PUNCTUATIONS tokens; returns the tokens joined by single spaces.

    Lowercases; splits off . , ; : quotes $ % & * + = etc. and ?/! runs ("?!" stays a token); brackets become
    -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- (kept: pycocoevalcap's filter list is upper-case); clitics as PTB ("it's"
    -> it 's, "don't" -> do n't, "can't" -> ca n't, "dogs'" -> dogs), cannot/gonna/gotta/wanna/lemme/gimme/'tis;
    keeps hyphenated words, "a/b", 1,000 / 5.50 / 5:30, '90s, e-mails, #tags, acronyms ("u.s."), initials ("a.")
    and common abbreviations ("mr.", "st.", "etc."); "..." and dashes go. Equal to the jar on 15,000 random
    punctuated captions; emoticons and rarer lexer rules (e.g. "it's-a", "bird!a") are not reproduced.
    """
    out = []
    for m in _PTB_TOKEN.finditer(text.translate(_PTB_CHARS).lower()):
        kind, tok = m.lastgroup, m.group()
        toks = _ptb_word(tok) if kind == "word" else ["..."] if kind == "ellipsis" else ["--"] if kind == "dash" \
            else _PTB_MAP.get(tok, tok).split()
        out.extend(t for t in toks if t not in _PTB_REMOVED)
    return " ".join(out)


def tokenize_captions(captions: list[str], tokenizer: str = "auto") -> list[str]:
    """Tokenise captions for CIDEr.

    Args:
        captions: Raw strings.
        tokenizer: ``"ptb"``: pycocoevalcap's java PTBTokenizer (one call for all; any line break becomes a space,
            blank captions stay ""); ``"python"``: :func:`ptb_tokenize`; ``"auto"``: ``ptb`` if ``java`` is on
            PATH, else ``python``; ``"none"``: already tokenised, whitespace is only normalised.
    """
    if tokenizer == "auto":
        tokenizer = "ptb" if shutil.which("java") else "python"
    if tokenizer == "python":
        return [ptb_tokenize(c) for c in captions]
    if tokenizer == "none":
        return [" ".join(c.split()) for c in captions]
    if tokenizer != "ptb":
        raise ConfigError(f"tokenizer must be 'auto', 'ptb', 'python' or 'none', got {tokenizer!r}")
    if not shutil.which("java"):
        raise RuntimeError("tokenizer='ptb' needs java on PATH; use tokenizer='python' or 'auto'")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    todo = {i: [{"caption": c.translate(_LINE_BREAKS)}] for i, c in enumerate(captions) if c.strip()}
    with _quiet_stderr():  # the java tokenizer writes "PTBTokenizer tokenized ..." to the process's stderr
        done = PTBTokenizer().tokenize(todo) if todo else {}
    return [done[i][0] if i in done else "" for i in range(len(captions))]


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 (inherited by subprocesses) to /dev/null for the duration; Python's own stderr
    object is flushed first and keeps working afterwards."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (e.g. a closed stderr): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cider_d(candidates: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-caption CIDEr-D of tokenised captions as pycocoevalcap's ``CiderScorer`` (its score is their mean).

    Document frequencies come from this set's references: idf = log(#items) - log(max(1, df)). Per n-gram order,
    the clipped cosine sum(min(h, r) * r) / (|h| |r|) is multiplied by exp(-(len_h - len_r)^2 / (2 sigma^2)), then
    averaged over orders 1..n and over references and times 10. As in pycocoevalcap, "length" counts bigram
    occurrences (its ``n == 1`` is the 0-based order). A set of one item scores 0 (every idf is 0).
    """
    def ngrams(sentence: str) -> Counter:
        w = sentence.split()
        return Counter(tuple(w[i:i + k]) for k in range(1, n + 1) for i in range(len(w) - k + 1))

    crefs = [[ngrams(r) for r in refs] for refs in references]
    df = Counter(g for refs in crefs for g in {g for r in refs for g in r})
    log_items = math.log(float(len(crefs)))

    def vec(counts: Counter):
        v, norm, length = [{} for _ in range(n)], [0.0] * n, 0
        for g, tf in counts.items():
            v[len(g) - 1][g] = w = float(tf) * (log_items - math.log(max(1.0, df[g])))
            norm[len(g) - 1] += w * w
            length += tf if len(g) == 2 else 0
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for cand, refs in zip(candidates, crefs):
        vh, nh, lh = vec(ngrams(cand))
        total = 0.0
        for ref in refs:
            vr, nr, lr = vec(ref)
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                val /= nh[k] * nr[k] if nh[k] != 0 and nr[k] != 0 else 1.0
                total += val * math.e ** (-(float(lh - lr) ** 2) / (2 * sigma ** 2))
        scores.append(total / n / len(refs) * 10.0)
    return scores


def chair_synonyms(info: dict) -> dict[str, list[str]] | None:
    """Object synonyms for CHAIR: the dataset's own (``chair_synonyms`` in dataset.json) or the synthetic world's."""
    if info.get("chair_synonyms"):
        return info["chair_synonyms"]
    if str(info.get("source", "")).startswith("synthetic"):
        from .world import OBJECT_SYNONYMS

        return OBJECT_SYNONYMS
    return None
