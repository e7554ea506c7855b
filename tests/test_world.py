"""Tests of the synthetic world: determinism, layout, answers recomputed from the scene graph, rendering, POPE.

Usage: ``.venv/bin/python -m pytest tests/test_world.py -q``

The answer checks re-derive every gold answer from the stored scene graph by parsing the question text with their
own regular expressions, independently of the generator's code paths.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mllm_study.world import (
    COLOR_RGB, FAMILIES, FAMILY_ORDER, KNOWLEDGE_BASE, OBJECT_SYNONYMS, PROFILES, build_item, generate_world,
    object_statistics, split_sizes,
)

POS = r"(top left|top right|bottom left|bottom right)"
PLURAL_TO_SHAPE = {"circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross"}
NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "none": "0"}
OCCLUDER = (128, 128, 128)
TEXT_INK = (24, 24, 24)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world") / "w"
    return out, generate_world(out, profile="smoke", seed=0, progress=False)


def load(world_dir: Path, family: str, split: str) -> list[dict]:
    return json.loads((world_dir / family / f"{split}.json").read_text())


def all_records(world_dir: Path, family: str) -> list[dict]:
    meta = json.loads((world_dir / family / "dataset.json").read_text())
    return [r for split in meta["splits"] for r in load(world_dir, family, split)]


def question(rec: dict) -> str:
    human = rec["conversations"][0]["value"]
    assert human.startswith("<image>\n")
    return human[len("<image>\n"):]


def gpt(rec: dict) -> str:
    return rec["conversations"][-1]["value"]


def at(scene: dict, pos: str) -> dict | None:
    found = [o for o in scene["objects"] if o["position"] == pos]
    assert len(found) <= 1
    return found[0] if found else None


def the_one(scene: dict, **attrs) -> dict:
    found = [o for o in scene["objects"] if all(o[k] == v for k, v in attrs.items())]
    assert len(found) == 1, (attrs, scene["objects"])
    return found[0]


def referent(scene: dict, ref: str) -> dict:
    """'object at the top left' | 'red object' | 'circle' -> the object."""
    if m := re.fullmatch(f"object at the {POS}", ref):
        return at(scene, m[1])
    if m := re.fullmatch(r"(\w+) object", ref):
        return the_one(scene, color=m[1])
    return the_one(scene, shape=ref)


def count(scene: dict, **attrs) -> int:
    return sum(all(o[k] == v for k, v in attrs.items()) for o in scene["objects"])


def vqa_gold(scene: dict, q: str) -> str:
    """Answer a VQAv2/VizWiz-style question from the scene graph."""
    yn = {True: "yes", False: "no"}
    if m := re.fullmatch(f"What color is the object at the {POS}\\?", q):
        return at(scene, m[1])["color"]
    if m := re.fullmatch(r"What color is the (\w+)\?", q):
        return the_one(scene, shape=m[1])["color"]
    if m := re.fullmatch(f"What shape is at the {POS}\\?", q):
        return at(scene, m[1])["shape"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        return the_one(scene, color=m[1])["shape"]
    if q == "How many objects are there?":
        return str(len(scene["objects"]))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", q):
        return str(count(scene, color=m[1]))
    if m := re.fullmatch(r"How many (\w+) are there\?", q):
        return str(count(scene, shape=PLURAL_TO_SHAPE[m[1]]))
    if m := re.fullmatch(r"Where is the (\w+) (\w+)\?", q):
        return the_one(scene, color=m[1], shape=m[2])["position"]
    if m := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", q):
        return yn[count(scene, color=m[1], shape=m[2]) > 0]
    if m := re.fullmatch(f"Is there an? (\\w+) at the {POS}\\?", q):
        obj = at(scene, m[2])
        return yn[obj is not None] if m[1] == "object" else yn[obj is not None and obj["shape"] == m[1]]
    if m := re.fullmatch(f"Is the object at the {POS} (\\w+)\\?", q):
        return yn[at(scene, m[1])["color"] == m[2]]
    raise AssertionError(f"unparsed question {q!r}")


def unformat(rec: dict) -> tuple[str, str]:
    """(the plain question, its answer text) of a seen-family record, whatever answer format it is asked in."""
    lines, fmt = question(rec).split("\n"), rec.get("format")
    if fmt == "letters":
        assert lines[0].startswith("Context: ") and lines[1].startswith("Question: ")
        assert lines[2] == "Options: " + ", ".join(f"{'ABC'[i]}. {c}" for i, c in enumerate(rec["choices"]))
        assert rec["references"] == [gpt(rec)]
        return plain_wording(lines[1][len("Question: "):]), rec["choices"]["ABC".index(gpt(rec))]
    if fmt == "choices":
        assert lines[1] == f"Choices: {', '.join(rec['choices'])}. Choose an option from the choices to answer the " \
                           "question." and rec["choices"].count(gpt(rec)) == 1
    elif fmt == "blank":
        assert lines[1] == "Fill in the blanks in () or answer this question." and gpt(rec).isdigit()
        for statement, plain in ((r"The number of (.+) in the picture is \(\)\.", r"How many \1 are there?"),
                                 (r"The (.+) has \(\) corners\.", r"How many corners does the \1 have?"),
                                 (r"The number written in the image is \(\)\.", "What number is shown?"),
                                 # the formats split's further statements
                                 (r"There are \(\) (.+) in the image\.", r"How many \1 are there?"),
                                 (r"\(\) (.+) are in the picture\.", r"How many \1 are there?"),
                                 (r"Count the (.+)\. There are \(\) \1 in the image\.", r"How many \1 are there?"),
                                 (r"There are \(\) (.+)\.", r"How many \1 are there?"),
                                 (r"If zero more (.+) are added, there will be \(\) \1\.", r"How many \1 are there?"),
                                 (r"If one more [\w ]+ is added to the \(\) (.+), there will be more \1\.",
                                  r"How many \1 are there?"),
                                 (r"The image shows the number \(\)\.", "What number is shown?")):
            if re.fullmatch(statement, lines[0]):
                return plain_wording(re.sub(statement, plain, lines[0])), gpt(rec)
        raise AssertionError(f"blank statement without a rewrite rule: {lines[0]!r}")
    elif fmt == "vizwiz":
        assert lines[1].startswith('When the information is insufficient, respond with "Unanswerable".')
    else:
        assert fmt is None
    assert len(lines) == 2
    return plain_wording(lines[0]), gpt(rec)


def plain_wording(q: str) -> str:
    """A question of the formats split in the wording of the other splits (world.tasks._STAGE3_WORDINGS)."""
    if m := re.fullmatch(r"Are there (?:more than zero )?(\w+) (\w+) in the image\?", q):
        q = f"Is there {'an' if m[1][0] in 'aeiou' else 'a'} {m[1]} {PLURAL_TO_SHAPE[m[2]]} in the image?"
    return q.replace("Which color is", "What color is").replace("Which shape is", "What shape is") \
        .replace("feeling is linked", "feeling is often linked")


def check_vqa_references(rec: dict, gold: str) -> None:
    q, answer = unformat(rec)
    assert answer == gold
    if rec.get("format"):
        return  # format variants (pre-training split only) carry no ten human answers
    refs = rec["references"]
    assert len(refs) == 10
    assert gpt(rec) == gold
    top, n = Counter(refs).most_common(1)[0]
    assert top == gold and n >= 6, refs
    normalised = Counter(NUMBER_WORDS.get(a, a) for a in refs)
    assert normalised.most_common(1)[0][0] == gold


# ------------------------------------------------------------------------------------------------ determinism
@pytest.mark.slow
def test_same_seed_byte_identical_different_seed_differs(world, tmp_path):
    out, manifest = world  # built in one process (a smoke world is below PARALLEL_MIN_ITEMS)
    again = tmp_path / "again"
    manifest2 = generate_world(again, profile="smoke", seed=0, progress=False, workers=2)  # chunks in 2 processes
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == files2 and len(files) == manifest["n_files"] + 1  # + manifest.json
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert manifest2 == manifest
    other = generate_world(tmp_path / "seed1", profile="smoke", seed=1, families=["vqav2"], progress=False)
    assert other["fingerprint"] != manifest["fingerprint"]
    assert (tmp_path / "seed1/vqav2/test.json").read_bytes() != (out / "vqav2/test.json").read_bytes()
    assert (tmp_path / "seed1/vqav2/images/test/000000.png").read_bytes() != \
        (out / "vqav2/images/test/000000.png").read_bytes()


@pytest.mark.slow
def test_items_independent_of_generation_order(world):
    out, _ = world
    for family, split, index in [("vqav2", "test", 7), ("pope", "adversarial", 11), ("align", "pretrain", 200)]:
        record, image = build_item(family, 0, split, index)
        assert record == load(out, family, split)[index]
        on_disk = Image.open(out / family / "images" / record["image"])
        assert np.array_equal(np.asarray(on_disk), np.asarray(image))


@pytest.mark.slow
def test_idempotent_and_refuses_foreign_folder(world, tmp_path):
    out, manifest = world
    before = {p: p.stat().st_mtime_ns for p in [out / "manifest.json", out / "sqa" / "test.json"]}
    assert generate_world(out, profile="smoke", seed=0, progress=False) == manifest
    assert generate_world(out, profile="smoke", seed=0, families=["pope"], progress=False) == manifest
    assert {p: p.stat().st_mtime_ns for p in before} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing"):
        generate_world(foreign, profile="smoke", progress=False)
    with pytest.raises(KeyError, match="unknown profile"):
        generate_world(tmp_path / "x", profile="huge", progress=False)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temporary folder left behind


# ----------------------------------------------------------------------------------------------------- layout
def test_layout_follows_data_format(world):
    out, manifest = world
    assert manifest["profile"] == "smoke" and manifest["seed"] == 0 and manifest["generator"].startswith("synthetic")
    assert list(manifest["families"]) == list(FAMILY_ORDER)
    for family in FAMILY_ORDER:
        meta = json.loads((out / family / "dataset.json").read_text())
        assert {"name", "family", "metric", "group", "max_new_tokens", "image_folder", "splits", "source"} <= set(meta)
        assert meta["family"] == family and meta["splits"] == split_sizes(family, "smoke")
        if family in FAMILIES:
            info = FAMILIES[family]
            assert (meta["metric"], meta["group"]) == (info.metric, info.group)
            assert ("pretrain" in meta["splits"]) == (info.group == "seen")
        for split, n in meta["splits"].items():
            records = load(out, family, split)
            assert len(records) == n
            assert len({r["id"] for r in records}) == n
            for r in records:
                assert {"id", "image", "conversations"} <= set(r)
                turns = r["conversations"]
                assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
                assert turns[0]["value"].startswith("<image>\n") and turns[0]["value"].count("<image>") == 1
                assert (out / family / meta["image_folder"] / r["image"]).is_file()
        assert sorted(os.listdir(out / family / "images")) == sorted(meta["splits"])
    assert split_sizes("align", "smoke") == {"pretrain": PROFILES["smoke"]["align_pretrain"],
                                             "formats": PROFILES["smoke"]["formats"]}
    assert split_sizes("pope", "smoke") == {"random": 30, "popular": 30, "adversarial": 30}
    with Image.open(out / "vqav2/images/test/000000.png") as img:
        assert img.size == (32, 32) and img.mode == "RGB"


# ------------------------------------------------------------------------------- answers from the scene graph
def test_vqav2_answers(world):
    for rec in all_records(world[0], "vqav2"):
        assert rec.get("format") or question(rec).endswith("\nAnswer the question using a single word or phrase.")
        check_vqa_references(rec, vqa_gold(rec["scene"], unformat(rec)[0]))


def test_vizwiz_answers(world):
    n_unanswerable = 0
    for rec in all_records(world[0], "vizwiz"):
        q, suffix = question(rec).split("\n")
        assert suffix.startswith('When the information is insufficient, respond with "Unanswerable".')
        scene, deg = rec["scene"], rec["scene"]["degradation"]
        assert deg["type"] in {"blur", "noise", "occlusion"}
        hidden = deg.get("position")
        m = re.search(f"at the {POS}\\?$", q)
        if hidden and (m is None or m[1] == hidden):  # whole-image question or asked cell occluded
            gold = "unanswerable"
        else:
            gold = vqa_gold(scene, q)
        n_unanswerable += gold == "unanswerable"
        check_vqa_references(rec, gold)
    assert 0.1 < n_unanswerable / len(all_records(world[0], "vizwiz")) < 0.5


def test_okvqa_answers(world):
    assert KNOWLEDGE_BASE["fruit"]["red"][0] == "apple" and KNOWLEDGE_BASE["corners"]["triangle"][0] == "3"
    patterns = {
        "fruit": (r"Which fruit has the same color as the (.+)\?", "color"),
        "feeling": (r"Which feeling is often linked to the color of the (.+)\?", "color"),
        "looks_like": (r"Which everyday thing has the same shape as the (.+)\?", "shape"),
        "corners": (r"How many corners does the (.+) have\?", "shape"),
    }
    for rec in all_records(world[0], "okvqa"):
        q = unformat(rec)[0]
        [(relation, attr, m)] = [(k, a, re.fullmatch(pat, q)) for k, (pat, a) in patterns.items()
                                 if re.fullmatch(pat, q)]
        obj = referent(rec["scene"], m[1])
        facts = KNOWLEDGE_BASE[relation][obj[attr]]
        check_vqa_references(rec, facts[0])
        assert all(a in facts or any(a == f[0] for f in KNOWLEDGE_BASE[relation].values())
                   for a in rec["references"]) or rec.get("format") == "letters"


def test_ocrvqa_answers(world):
    for rec in all_records(world[0], "ocrvqa"):
        q, answer = unformat(rec)
        text = rec["scene"]["text"]
        assert answer == text and (rec.get("format") == "letters" or rec["references"] == [text])
        assert ("word" in q) == text.isalpha() and ("number" in q) == text.isdigit()
        assert len(rec["scene"]["objects"]) <= 2
        row = rec["scene"]["text_row"]
        assert all(not o["position"].startswith(row) for o in rec["scene"]["objects"])


def test_sqa_answers(world):
    for rec in all_records(world[0], "sqa"):
        scene = rec["scene"]
        ctx, q, opts = question(rec).split("\n")
        assert ctx.startswith("Context: ") and q.startswith("Question: ") and opts.startswith("Options: ")
        ctx, q = ctx[len("Context: "):], q[len("Question: "):]
        expected_opts = ", ".join(f"{'ABC'[i]}. {c}" for i, c in enumerate(rec["choices"]))
        assert opts == "Options: " + expected_opts
        if m := re.fullmatch(r"In this world, (\w+) things are (\w+) and all other things are (\w+)\.", ctx):
            color, pa, pb = m.groups()
            q_m = re.fullmatch(f"Is the (.+) {pa} or {pb}\\?", q)
            gold = pa if referent(scene, q_m[1])["color"] == color else pb
        elif m := re.fullmatch(r"In this world, (\w+) are (\w+) and all other shapes are (\w+)\.", ctx):
            assert q == f"What color is the {m[2]} object?"
            colors = {o["color"] for o in scene["objects"] if o["shape"] == PLURAL_TO_SHAPE[m[1]]}
            assert len(colors) == 1
            gold = colors.pop()
        elif m := re.fullmatch(r"In this world, a room is safe only if it has no (\w+) objects\.", ctx):
            gold = "no" if count(scene, color=m[1]) else "yes"
        elif m := re.fullmatch(r"In this world, a picture is crowded when it shows at least (\d) objects\.", ctx):
            gold = "yes" if len(scene["objects"]) >= int(m[1]) else "no"
        else:
            raise AssertionError(ctx)
        answer = gpt(rec)  # the option's text (the tiny model cannot bind letters), one of the lettered options
        assert answer == gold and rec["references"] == [gold] and rec["choices"].count(gold) == 1


def test_iconqa_txt_answers(world):
    for rec in all_records(world[0], "iconqa_txt"):
        scene = rec["scene"]
        q, choices_line = question(rec).split("\n")
        assert choices_line == (f"Choices: {', '.join(rec['choices'])}. "
                                "Choose an option from the choices to answer the question.")
        shapes = Counter(o["shape"] for o in scene["objects"])
        if m := re.fullmatch(r"How many (\w+) are there\?", q):
            gold = str(shapes[PLURAL_TO_SHAPE[m[1]]])
        elif q == "Which shape appears the most?":
            (gold, n), *rest = shapes.most_common()
            assert not rest or rest[0][1] < n
            assert set(shapes) <= set(rec["choices"])  # every shape in the picture is offered: counting decides
        elif m := re.fullmatch(r"Are there more (\w+) than (\w+)\?", q):
            a, b = shapes[PLURAL_TO_SHAPE[m[1]]], shapes[PLURAL_TO_SHAPE[m[2]]]
            gold = "yes" if a > b else "no"
        else:
            raise AssertionError(q)
        assert gpt(rec) == gold and rec["references"] == [gold] and rec["choices"].count(gold) == 1


def test_iconqa_blank_answers(world):
    for rec in all_records(world[0], "iconqa_blank"):
        scene = rec["scene"]
        q, suffix = question(rec).split("\n")
        assert suffix == "Fill in the blanks in () or answer this question." and "()" in q
        if m := re.fullmatch(r"Count the (\w+)\. There are \(\) (\w+)\.", q):
            gold = count(scene, shape=PLURAL_TO_SHAPE[m[1]])
        elif m := re.fullmatch(r"There are \(\) (\w+) objects in the picture\.", q):
            gold = count(scene, color=m[1])
        elif q == "There are () objects in the picture in total.":
            gold = len(scene["objects"])
        elif q == "() of the four cells are empty.":
            gold = 4 - len(scene["objects"])
        elif m := re.fullmatch(r"If one more (\w+) is added, there will be \(\) (\w+)\.", q):
            gold = count(scene, shape=m[1]) + 1
        else:
            raise AssertionError(q)
        assert gpt(rec) == str(gold) and rec["references"] == [str(gold)]


def test_flickr30k_captions_mention_exactly_present_objects(world):
    word_to_shape = {w: s for s, words in OBJECT_SYNONYMS.items() for w in words}
    colors = set(COLOR_RGB)
    styles = set()
    for rec in all_records(world[0], "flickr30k"):
        present = {(o["color"], o["shape"]) for o in rec["scene"]["objects"]}
        assert rec["objects"] == sorted(f"{c} {s}" for c, s in present)
        refs = rec["references"]
        assert len(refs) == 5 and len(set(refs)) >= 2 and gpt(rec) in refs
        for ref in refs:
            tokens = ref.split()
            mentioned = set()
            for i, tok in enumerate(tokens):
                if tok in word_to_shape:
                    assert tokens[i - 1] in colors, ref
                    mentioned.add((tokens[i - 1], word_to_shape[tok]))
            assert mentioned == present, (ref, present)
            styles.add(tokens[0])
    assert {"a", "an", "there"} <= styles  # several templates


def test_align_descriptions(world):
    number = ["zero", "one", "two", "three", "four"]
    for rec in all_records(world[0], "align"):
        scene, text = rec["scene"], gpt(rec)
        for o in scene["objects"]:
            assert f"{o['color']} {o['shape']} at the {o['position']}" in text
        assert f"{number[len(scene['objects'])]} object" in text
        if scene["text"]:
            assert f"the {scene['text_kind']} {scene['text']} is written at the {scene['text_row']}" in text


def test_pope_probes(world):
    out, _ = world
    freq, cooc = object_statistics(0)
    negatives = {}
    for split in ("random", "popular", "adversarial"):
        records = load(out, "pope", split)
        labels = Counter(r["label"] for r in records)
        assert labels["yes"] == labels["no"] == len(records) // 2
        negs = []
        for r in records:
            m = re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?\nAnswer the question using a single word "
                             r"or phrase\.", question(r))
            present = {(o["color"], o["shape"]) for o in r["scene"]["objects"]}
            assert r["objects"] == sorted(f"{c} {s}" for c, s in present)
            assert r["label"] == ("yes" if (m[1], m[2]) in present else "no") == gpt(r) == r["references"][0]
            if r["label"] == "no":
                negs.append(((m[1], m[2]), present))
        negatives[split] = negs
    dists = {s: Counter(t for t, _ in negs) for s, negs in negatives.items()}
    assert dists["random"] != dists["popular"] != dists["adversarial"] != dists["random"]

    def mean_freq(s):
        return np.mean([freq.get(t, 0) for t, _ in negatives[s]])

    def mean_cooc(s):
        return np.mean([sum(cooc.get((p, t), 0) for p in present) for t, present in negatives[s]])

    assert mean_freq("popular") > mean_freq("random")
    assert mean_cooc("adversarial") > mean_cooc("random")
    # the three strategies probe the same images
    for name in ("000000.png", "000007.png"):
        pngs = {(out / "pope/images" / s / name).read_bytes() for s in ("random", "popular", "adversarial")}
        assert len(pngs) == 1


# -------------------------------------------------------------------------------------------------- rendering
def test_rendering_matches_scene_graph(world):
    out, _ = world
    assert min(np.abs(np.subtract(a, b)).sum() for a in COLOR_RGB.values() for b in COLOR_RGB.values()
               if a != b) > 60  # colours clearly distinct
    checked = 0
    for family in FAMILY_ORDER:
        meta = json.loads((out / family / "dataset.json").read_text())
        split = list(meta["splits"])[-1]
        for rec in load(out, family, split)[:16]:
            scene, deg = rec["scene"], rec["scene"]["degradation"]
            if deg and deg["type"] in ("blur", "noise"):
                continue
            px = np.asarray(Image.open(out / family / "images" / rec["image"]))
            bg = tuple(scene["background"])
            hidden = deg["position"] if deg else None
            for o in scene["objects"]:
                if o["position"] != hidden:
                    cx, cy = o["center"]
                    assert tuple(px[cy, cx]) == COLOR_RGB[o["color"]], (rec["id"], o)
                    checked += 1
            for pos, (x, y) in {"top left": (0, 0), "top right": (16, 0), "bottom left": (0, 16),
                                "bottom right": (16, 16)}.items():
                cell = px[y:y + 16, x:x + 16].reshape(-1, 3)
                if pos == hidden:
                    assert (cell == OCCLUDER).all()
                elif at(scene, pos) is None and not (scene["text"] and pos.startswith(scene["text_row"])):
                    assert (cell == bg).all(), (rec["id"], pos)  # blank background
                elif at(scene, pos) is not None:
                    assert (cell == bg).any()  # the object does not fill its cell
            if scene["text"]:
                x0, y0, x1, y1 = scene["text_bbox"]
                assert (px[y0:y1, x0:x1].reshape(-1, 3) == TEXT_INK).all(axis=1).sum() >= 10
    assert checked > 100


# ---------------------------------------------------------------------------------------- validity of the world
@pytest.mark.slow
def test_no_question_only_shortcut():
    """A model that reads only the question scores at most chance + 0.05 in every family (docs/study.md)."""
    from mllm_study.world.audit import SHORTCUT_MARGIN, audit_world

    audit = audit_world(seed=0, n_train=600, n_test=400)
    assert set(audit) == set(FAMILIES) - {"flickr30k"}
    for family, row in audit.items():
        assert row["question_only"] <= row["chance"] + SHORTCUT_MARGIN, (family, row)
        assert 0.0 < row["chance"] < 0.5, (family, row)


@pytest.mark.slow
def test_answers_balanced_per_question_template():
    """Within each question type, gold answers spread evenly over the answer space (no dominant answer)."""
    for family in ("vqav2", "iconqa_blank", "iconqa_txt", "sqa", "vizwiz"):
        by_type: dict = {}
        for i in range(600):
            rec, _ = build_item(family, 0, "train", i)
            q = rec["scene"]["query"]
            by_type.setdefault((q["type"], q.get("sub")), []).append((gpt(rec), len(q["space"])))
        for key, rows in by_type.items():
            top = Counter(a for a, _ in rows).most_common(1)[0][1] / len(rows)
            expected = np.mean([1 / k for _, k in rows])
            assert top <= expected + 0.15, (family, key, top, expected)


def test_seen_pretrain_split_teaches_the_unseen_formats(world):
    formats = Counter(r.get("format") for fam in ("vqav2", "okvqa", "ocrvqa")
                      for r in load(world[0], fam, "pretrain"))
    assert {None, "letters", "choices", "blank", "vizwiz"} <= set(formats)
    assert formats[None] < sum(formats.values()) * 0.7
    for fam in ("vqav2", "okvqa", "ocrvqa"):  # the columns the study scores stay plain
        assert not any(r.get("format") for split in ("train", "test") for r in load(world[0], fam, split))


@pytest.mark.slow
def test_every_profile_speaks_the_committed_vocabulary():
    """Items of every family and split, sampled across the full profile's index range (the quick and smoke worlds
    are its prefixes), use only words of mllm_study/world/vocabulary.json, which the tiny model's tokenizer is built
    from: a generator that adds a word must add it there (and so re-pretrains the base model)."""
    from mllm_study.models import VOCABULARY_FILE, world_tokenizer

    tok = world_tokenizer()
    vocab, backend = tok.get_vocab(), tok.backend_tokenizer
    unknown: dict[str, str] = {}
    for family in FAMILY_ORDER:
        for split, n in split_sizes(family, "full").items():
            for i in range(0, n, max(1, n // 40)):
                record, _ = build_item(family, 0, split, i)
                texts = [t["value"] for t in record["conversations"]] + list(record.get("references") or []) + \
                    list(record.get("choices") or [])
                for text in texts:
                    for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
                        if word not in vocab:
                            unknown.setdefault(word, f"{family}/{split}/{i}")
    assert not unknown, f"words outside {VOCABULARY_FILE.name}: {dict(list(unknown.items())[:10])}"


def test_parallel_world_falls_back_to_one_process_when_workers_cannot_start(world, tmp_path):
    """A script without an ``if __name__ == "__main__":`` guard cannot host spawned workers (each would re-run it):
    the world is then built in the script's own process, with the same bytes."""
    import subprocess
    import sys

    out, manifest = world
    script = tmp_path / "no_guard.py"
    script.write_text("import sys\nsys.path.insert(0, %r)\nfrom mllm_study.world import generate_world\n"
                      "m = generate_world(%r, profile='smoke', seed=0, progress=False, workers=2)\n"
                      "print(m['fingerprint'])\n" % (str(Path(__file__).resolve().parents[1]), str(tmp_path / "w")))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == manifest["fingerprint"]


def test_formats_split_asks_seen_questions_in_the_unseen_formats_and_is_never_scored(world):
    from mllm_study.world.language import ALIGN_PROMPTS, DESCRIPTION_PROMPTS
    from mllm_study.world.tasks import FORMATS_SPLIT, TRAINING_SPLITS

    seen = ("vqav2", "okvqa", "ocrvqa")
    formats = Counter(r.get("format") for fam in seen for r in load(world[0], fam, FORMATS_SPLIT))
    assert {None, "letters", "choices", "blank", "vizwiz"} <= set(formats)
    assert formats[None] < sum(formats.values()) * 0.25  # mostly formatted (the pretrain split: about 0.5 plain)
    prompts = [r["conversations"][0]["value"].split("\n", 1)[1] for r in load(world[0], "align", FORMATS_SPLIT)]
    assert set(prompts) <= set(DESCRIPTION_PROMPTS) and len(set(prompts)) > len(ALIGN_PROMPTS)
    questions = " ".join(r["conversations"][0]["value"] for fam in seen for r in load(world[0], fam, FORMATS_SPLIT))
    assert ("Which color is" in questions or "Which shape is" in questions) and "often" not in questions
    assert re.search(r"Are there \w+ \w+ in the image\?", questions)
    # IconQA-blank's "one more" wording, but the blank is the count in the image: its +1 skill stays unseen
    more = re.findall(r"If one more ([\w ]+) is added([^\n]*)", questions)
    assert more and all(rest.startswith(" to the () ") for _, rest in more)
    assert {noun.split()[-1] for noun, _ in more} <= {"square", "circle", "triangle", "cross", "object"}
    for fam in ("sqa", "vizwiz", "iconqa_txt", "iconqa_blank", "flickr30k"):  # unseen families: no formats split
        assert not (world[0] / fam / f"{FORMATS_SPLIT}.json").exists()
    assert FORMATS_SPLIT in TRAINING_SPLITS  # runs.eval_targets and validity.world_columns skip it


def test_hard_existence_negatives_hold_the_asked_color_or_shape_elsewhere():
    """The formats split's "no" existence questions (tasks.STAGE3_HARD_NEGATIVES) are asked about an object whose
    color or shape the image holds on another object, so that "is the color there?" no longer answers them."""
    from mllm_study.world.tasks import STAGE3_HARD_NEGATIVES, _vqav2

    assert 0 < STAGE3_HARD_NEGATIVES <= 1
    near, plain_no = Counter(), 0
    for i in range(300):
        item = _vqav2(np.random.default_rng(i), {"yesno": 1.0}, hard_negatives=1.0)
        query, objects = item["scene"]["query"], item["scene"]["objects"]
        if query["sub"] != "exists":
            assert "hard" not in query
            continue
        color, shape = re.match(r"Is there an? (\w+) (\w+) in the image\?", item["prompt"]).groups()
        present = any(o["color"] == color and o["shape"] == shape for o in objects)
        assert present == (item["answer"] == "yes")
        if item["answer"] == "no":
            kind = query["hard"]
            assert any(o[kind] == {"color": color, "shape": shape}[kind] for o in objects), item
            near[kind] += 1
        else:
            assert "hard" not in query
        plain = _vqav2(np.random.default_rng(i), {"yesno": 1.0})
        assert "hard" not in plain["scene"]["query"]
        plain_no += plain["scene"]["query"]["sub"] == "exists" and plain["answer"] == "no"
    assert near["color"] > 20 and near["shape"] > 20 and plain_no > 20


def test_formats_existence_questions_lean_no_and_the_other_yes_no_questions_stay_balanced():
    """``exists_yes`` (tasks.STAGE3_EXISTS_YES_SHARE in the formats split) sets the share of "yes" among existence
    questions only; the pretrain and train splits keep 50/50. Checked against the binomial: 2000 draws, 4 SE."""
    from mllm_study.world.tasks import STAGE3_EXISTS_YES_SHARE, _vqav2

    assert 0 < STAGE3_EXISTS_YES_SHARE < 0.5
    for share in (STAGE3_EXISTS_YES_SHARE, 0.5):
        yes = Counter()
        for i in range(2000):
            item = _vqav2(np.random.default_rng(i), {"yesno": 1.0}, exists_yes=share)
            yes[(item["scene"]["query"]["sub"] == "exists", item["answer"])] += 1
        n_exists, n_other = yes[True, "yes"] + yes[True, "no"], yes[False, "yes"] + yes[False, "no"]
        assert abs(yes[True, "yes"] / n_exists - share) < 4 * (share * (1 - share) / n_exists) ** 0.5
        assert abs(yes[False, "yes"] / n_other - 0.5) < 4 * (0.25 / n_other) ** 0.5
