"""Tests of mllm_study.converters on tiny fixtures written in each dataset's public release format.

Usage: ``.venv/bin/python -m pytest tests/test_converters.py -q``

Every fixture is built in ``tmp_path`` by a ``make_<dataset>`` function below (a few JSON files and 4x4 images).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from mllm_study import converters
from mllm_study.converters import CONVERTERS, convert, get_converter, list_converters
from mllm_study.converters.flickr30k import CAPTION_PROMPTS

VQA = "Answer the question using a single word or phrase."
SQA = "Answer with the option's letter from the given choices directly."
DATASET_KEYS = ["name", "family", "metric", "group", "max_new_tokens", "image_folder", "splits", "source"]


# ------------------------------------------------------------------------------------------------ fixture writers
def image(path: Path, color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_scienceqa(root: Path) -> Path:
    """Official layout: data/scienceqa/{problems,pid_splits}.json, images data/{split}/{pid}/image.png."""
    def problem(question, choices, answer, hint, img, split):
        return {"question": question, "choices": choices, "answer": answer, "hint": hint, "image": img,
                "split": split, "task": "closed choice", "lecture": "", "solution": ""}
    problems = {
        "1": problem("Which animal is shown?", ["cat", "dog"], 1, "Look at the picture.", "image.png", "train"),
        "2": problem("Which word is a noun?", ["run", "table"], 1, "", None, "train"),  # text-only: dropped
        "3": problem("What color is the ball?", ["red", "green", "blue"], 0, "", "image.png", "test"),
        "4": problem("Is it day?", ["yes", "no"], 0, "", "image.png", "val"),
    }
    write_json(root / "data/scienceqa/problems.json", problems)
    write_json(root / "data/scienceqa/pid_splits.json", {"train": ["1", "2"], "val": ["4"], "test": ["3"]})
    for pid, split in (("1", "train"), ("3", "test"), ("4", "val")):
        image(root / f"data/{split}/{pid}/image.png")
    return root / "data"


def make_vizwiz(root: Path) -> Path:
    """Annotations/{train,val}.json + images train/ and val/."""
    def ann(name, question, answers):
        return {"image": name, "question": question, "answerable": int(answers[0] != "unanswerable"),
                "answer_type": "other", "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}
    train = [ann("VizWiz_train_00000000.jpg", "What is this?", ["soup"] * 4 + ["can"] * 4 + ["tomato soup"] * 2),
             ann("VizWiz_train_00000001.jpg", "What color?", ["unanswerable"] * 7 + ["blue"] * 3)]
    val = [ann("VizWiz_val_00000000.jpg", "Which coin?", ["dime"] * 2 + ["nickel"] * 6 + ["penny"] * 2)]
    write_json(root / "Annotations/train.json", train)
    write_json(root / "Annotations/val.json", val)
    for row, folder in [(r, "train") for r in train] + [(r, "val") for r in val]:
        image(root / folder / row["image"])
    return root


def make_iconqa(root: Path) -> Path:
    """iconqa_data/iconqa/{split}/{task}/{qid}/data.json + image.png."""
    base = root / "iconqa_data/iconqa"
    rows = {
        ("train", "choose_txt", "10"): {"question": "How many stars?", "choices": ["3", "4"], "answer": 1},
        ("train", "choose_txt", "9"): {"question": "Which is bigger?", "choices": ["sun", "ant", "cat"], "answer": 0},
        ("test", "choose_txt", "20"): {"question": "Is it a square?", "choices": ["yes", "no"], "answer": 0},
        ("val", "choose_txt", "30"): {"question": "Val only?", "choices": ["a", "b"], "answer": 0},
        ("train", "fill_in_blank", "40"): {"question": "There are (_) dots.", "choices": [], "answer": "6"},
        ("test", "fill_in_blank", "50"): {"question": "How many sides?", "answer": "4"},
    }
    for (split, task, qid), data in rows.items():
        write_json(base / split / task / qid / "data.json", {**data, "ques_type": task, "grade": "prek"})
        image(base / split / task / qid / "image.png")
    return root / "iconqa_data"


def make_flickr30k(root: Path) -> Path:
    """Karpathy dataset_flickr30k.json + flickr30k-images/."""
    def entry(n, split):
        return {"filename": f"{n}.jpg", "split": split, "imgid": n,
                "sentences": [{"raw": f"Caption {k} of image {n}.", "tokens": []} for k in range(5)]}
    write_json(root / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        entry(100, "train"), entry(101, "train"), entry(102, "val"), entry(103, "test")]})
    for n in (100, 101, 102, 103):
        image(root / f"flickr30k-images/{n}.jpg")
    return root


def make_vqa(root: Path, prefix: str, n_train: int = 3, n_test: int = 2) -> Path:
    """VQA format: {prefix}OpenEnded_mscoco_{sub}_questions.json + {prefix}mscoco_{sub}_annotations.json, COCO jpgs."""
    for sub, count in (("train2014", n_train), ("val2014", n_test)):
        questions, annotations = [], []
        for i in range(count):
            image_id = 1000 + i if sub == "train2014" else 2000 + i
            qid = image_id * 10
            answers = ["yes"] * 4 + ["no"] * 4 + ["maybe", "yes"] if i == 0 else ["two", "2"] * 5
            questions.append({"image_id": image_id, "question": f"Question {i} on {sub}?", "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "answer_type": "other",
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                            for k, a in enumerate(answers)]})
            image(root / sub / f"COCO_{sub}_{image_id:012d}.jpg")
        write_json(root / f"{prefix}OpenEnded_mscoco_{sub}_questions.json", {"questions": questions})
        write_json(root / f"{prefix}mscoco_{sub}_annotations.json", {"annotations": annotations})
    return root


def make_ocrvqa(root: Path) -> Path:
    """dataset.json {book_id: {imageURL, questions, answers, split, ...}} + images/{book_id}.{ext}."""
    books = {
        "111": {"imageURL": "http://x/a.jpg", "questions": ["Who wrote this book?", "Is this a cookbook?"],
                "answers": ["Ann Lee", "No"], "title": "T", "authorName": "Ann Lee", "genre": "Arts", "split": 1},
        "222": {"imageURL": "http://x/b.png", "questions": ["What is the title of this book?"],
                "answers": ["Gardens"], "title": "Gardens", "authorName": "B", "genre": "Home", "split": 3},
        "333": {"imageURL": "http://x/c.jpg", "questions": ["Val?"], "answers": ["v"], "title": "V",
                "authorName": "C", "genre": "G", "split": 2},
    }
    write_json(root / "dataset.json", books)
    image(root / "images/111.jpg")
    image(root / "images/222.png")
    image(root / "images/333.jpg")
    return root


def make_pope(root: Path) -> Path:
    """coco_pope_{random,popular,adversarial}.json (JSON lines) + val2014/ images."""
    root.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("random", "popular", "adversarial")):
        rows = [{"question_id": 1, "image": "COCO_val2014_000000000042.jpg",
                 "text": "Is there a dog in the image?", "label": "yes"},
                {"question_id": 2, "image": "COCO_val2014_000000000042.jpg",
                 "text": f"Is there a {['car', 'chair', 'leash'][s]} in the image?", "label": "no"}]
        (root / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    image(root / "val2014/COCO_val2014_000000000042.jpg")
    return root


MAKERS = {"scienceqa": make_scienceqa, "vizwiz": make_vizwiz, "iconqa_txt": make_iconqa,
          "iconqa_blank": make_iconqa, "flickr30k": make_flickr30k, "okvqa": lambda r: make_vqa(r, ""),
          "vqav2": lambda r: make_vqa(r, "v2_"), "ocrvqa": make_ocrvqa, "pope": make_pope}


# ------------------------------------------------------------------------------------------------ helpers
def load(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    meta = json.loads((out / "dataset.json").read_text())
    return meta, {split: json.loads((out / f"{split}.json").read_text()) for split in meta["splits"]}


def check_folder(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """The data_format.md contract, for any converted folder."""
    meta, splits = load(out)
    assert list(meta) == DATASET_KEYS
    root = Path(meta["image_folder"])
    assert root.is_absolute() and root.is_dir()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"
    for split, records in splits.items():
        assert meta["splits"][split] == len(records)
        assert len({r["id"] for r in records}) == len(records)
        for r in records:
            turns = r["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] and turns[0]["value"].startswith("<image>\n")
            assert (root / r["image"]).is_file()
    return meta, splits


def human(r: dict) -> str:
    return r["conversations"][0]["value"]


def gpt(r: dict) -> str:
    return r["conversations"][1]["value"]


# ------------------------------------------------------------------------------------------------ registry
def test_registry_lists_every_converter_and_suggests_close_names():
    assert list_converters() == sorted(MAKERS)
    assert CONVERTERS["okvqa"].group == "seen" and CONVERTERS["flickr30k"].metric == "cider"
    with pytest.raises(ValueError, match=r"known: flickr30k, .*Did you mean 'vqav2'"):
        get_converter("vqa2")
    with pytest.raises(ValueError, match="already registered"):
        converters.register_converter("pope")(lambda src, seed: {})


@pytest.mark.parametrize("name, family, metric, group", [
    ("scienceqa", "sqa", "mc_accuracy", "unseen"), ("vizwiz", "vizwiz", "vqa_score", "unseen"),
    ("iconqa_txt", "iconqa_txt", "accuracy", "unseen"), ("iconqa_blank", "iconqa_blank", "accuracy", "unseen"),
    ("flickr30k", "flickr30k", "cider", "unseen"), ("okvqa", "okvqa", "vqa_score", "seen"),
    ("ocrvqa", "ocrvqa", "accuracy", "seen"), ("vqav2", "vqav2", "vqa_score", "seen"),
    ("pope", "pope", "pope", "probe")])
def test_every_converter_writes_a_valid_dataset_folder(tmp_path, name, family, metric, group):
    src = MAKERS[name](tmp_path / "src")
    meta = convert(name, src, tmp_path / "out")
    assert meta == load(tmp_path / "out")[0]
    assert (meta["name"], meta["family"], meta["metric"], meta["group"]) == (name, family, metric, group)
    assert meta["max_new_tokens"] > 0 and str(src.resolve()) in meta["source"]
    check_folder(tmp_path / "out")


# ------------------------------------------------------------------------------------------------ exact records
def test_scienceqa_keeps_image_items_with_letter_answers(tmp_path):
    src = make_scienceqa(tmp_path)
    meta = convert("scienceqa", src, tmp_path / "out")
    _, splits = check_folder(tmp_path / "out")
    assert meta["image_folder"] == str(src.resolve()) and meta["splits"] == {"train": 1, "test": 1}
    assert splits["train"] == [{
        "id": "scienceqa-train-1", "image": "train/1/image.png",
        "conversations": [{"from": "human", "value": "<image>\nContext: Look at the picture.\nWhich animal is shown?"
                                                      f"\nA. cat\nB. dog\n{SQA}"},
                          {"from": "gpt", "value": "B"}],
        "references": ["B"], "choices": ["cat", "dog"]}]
    test = splits["test"][0]
    assert test["id"] == "scienceqa-test-3" and test["image"] == "test/3/image.png"
    assert human(test) == f"<image>\nWhat color is the ball?\nA. red\nB. green\nC. blue\n{SQA}"  # no empty context
    assert gpt(test) == "A" and test["choices"] == ["red", "green", "blue"]


def test_vizwiz_uses_val_as_test_and_the_most_common_answer(tmp_path):
    src = make_vizwiz(tmp_path)
    convert("vizwiz", src, tmp_path / "out")
    _, splits = check_folder(tmp_path / "out")
    first, second = splits["train"]
    assert first["id"] == "vizwiz-train-VizWiz_train_00000000" and first["image"] == "train/VizWiz_train_00000000.jpg"
    assert human(first) == ('<image>\nWhat is this?\nWhen the information is insufficient, respond with '
                            f'"Unanswerable". {VQA}')
    assert gpt(first) == "soup"  # 4 soup vs 4 can: the tie goes to the first annotated
    assert first["references"] == ["soup"] * 4 + ["can"] * 4 + ["tomato soup"] * 2
    assert gpt(second) == "unanswerable"
    (test,) = splits["test"]
    assert test["id"] == "vizwiz-test-VizWiz_val_00000000" and test["image"] == "val/VizWiz_val_00000000.jpg"
    assert gpt(test) == "nickel" and len(test["references"]) == 10


def test_iconqa_txt_and_blank_records(tmp_path):
    src = make_iconqa(tmp_path)
    convert("iconqa_txt", src, tmp_path / "txt")
    meta, splits = check_folder(tmp_path / "txt")
    assert meta["image_folder"] == str((src / "iconqa").resolve())
    assert [r["id"] for r in splits["train"]] == ["iconqa_txt-train-9", "iconqa_txt-train-10"]  # numeric qid order
    nine = splits["train"][0]
    assert nine["image"] == "train/choose_txt/9/image.png"
    assert human(nine) == ("<image>\nWhich is bigger?\nChoices: sun, ant, cat. "
                           "Choose an option from the choices to answer the question.")
    assert gpt(nine) == "sun" and nine["references"] == ["sun"] and nine["choices"] == ["sun", "ant", "cat"]
    assert [r["id"] for r in splits["test"]] == ["iconqa_txt-test-20"]

    convert("iconqa_blank", src, tmp_path / "blank")
    _, splits = check_folder(tmp_path / "blank")
    assert splits["train"] == [{
        "id": "iconqa_blank-train-40", "image": "train/fill_in_blank/40/image.png",
        "conversations": [{"from": "human", "value": "<image>\nThere are (_) dots.\n"
                                                      "Fill in the blanks in () or answer this question."},
                          {"from": "gpt", "value": "6"}],
        "references": ["6"]}]
    assert gpt(splits["test"][0]) == "4"


def test_flickr30k_one_record_per_image_with_seeded_prompt_and_caption(tmp_path):
    src = make_flickr30k(tmp_path / "src")
    meta = convert("flickr30k", src, tmp_path / "a", seed=3)
    _, splits = check_folder(tmp_path / "a")
    assert meta["image_folder"] == str((src / "flickr30k-images").resolve())
    assert meta["splits"] == {"train": 2, "test": 1}  # val unused
    assert [r["id"] for r in splits["train"]] == ["flickr30k-train-100", "flickr30k-train-101"]
    for r in splits["train"] + splits["test"]:
        n = r["id"].rsplit("-", 1)[1]
        assert r["image"] == f"{n}.jpg"
        assert r["references"] == [f"Caption {k} of image {n}." for k in range(5)]
        assert human(r)[len("<image>\n"):] in CAPTION_PROMPTS and gpt(r) in r["references"]
    convert("flickr30k", src, tmp_path / "b", seed=3)
    assert load(tmp_path / "a")[1] == load(tmp_path / "b")[1]  # same seed, same prompts and captions
    assert 9 <= len(CAPTION_PROMPTS) <= 12 and len(set(CAPTION_PROMPTS)) == len(CAPTION_PROMPTS)


@pytest.mark.parametrize("name, prefix", [("okvqa", ""), ("vqav2", "v2_")])
def test_vqa_format_records(tmp_path, name, prefix):
    src = make_vqa(tmp_path, prefix)
    convert(name, src, tmp_path / "out")
    meta, splits = check_folder(tmp_path / "out")
    assert meta["splits"] == {"train": 3, "test": 2}
    first = splits["train"][0]
    assert first == {
        "id": f"{name}-train-10000", "image": "train2014/COCO_train2014_000000001000.jpg",
        "conversations": [{"from": "human", "value": f"<image>\nQuestion 0 on train2014?\n{VQA}"},
                          {"from": "gpt", "value": "yes"}],  # 5 yes > 4 no
        "references": ["yes"] * 4 + ["no"] * 4 + ["maybe", "yes"]}
    assert gpt(splits["train"][1]) == "two"  # 5 "two" vs 5 "2": first annotated wins
    assert [r["image"] for r in splits["test"]] == [f"val2014/COCO_val2014_00000000{2000 + i}.jpg" for i in range(2)]
    assert splits["test"][0]["id"] == f"{name}-test-20000"


def test_vqa_images_can_sit_directly_in_the_image_folder(tmp_path):
    src = make_vqa(tmp_path / "src", "")
    flat = tmp_path / "flat"
    for jpg in src.glob("*2014/*.jpg"):
        image(flat / jpg.name)
    meta = convert("okvqa", src, tmp_path / "out", image_folder=flat)
    _, splits = check_folder(tmp_path / "out")
    assert meta["image_folder"] == str(flat.resolve())
    assert splits["test"][0]["image"] == "COCO_val2014_000000002000.jpg"


def test_ocrvqa_one_record_per_question(tmp_path):
    src = make_ocrvqa(tmp_path)
    convert("ocrvqa", src, tmp_path / "out")
    meta, splits = check_folder(tmp_path / "out")
    assert meta["splits"] == {"train": 2, "test": 1}  # split 2 (val) unused
    assert splits["train"] == [
        {"id": "ocrvqa-train-111-0", "image": "images/111.jpg",
         "conversations": [{"from": "human", "value": f"<image>\nWho wrote this book?\n{VQA}"},
                           {"from": "gpt", "value": "Ann Lee"}], "references": ["Ann Lee"]},
        {"id": "ocrvqa-train-111-1", "image": "images/111.jpg",
         "conversations": [{"from": "human", "value": f"<image>\nIs this a cookbook?\n{VQA}"},
                           {"from": "gpt", "value": "No"}], "references": ["No"]}]
    assert splits["test"][0]["image"] == "images/222.png"  # extension taken from imageURL


def test_pope_three_probe_splits(tmp_path):
    src = make_pope(tmp_path)
    meta = convert("pope", src, tmp_path / "out")
    _, splits = check_folder(tmp_path / "out")
    assert meta["splits"] == {"random": 2, "popular": 2, "adversarial": 2} and meta["group"] == "probe"
    assert not (tmp_path / "out/train.json").exists()
    yes, no = splits["adversarial"]
    assert yes == {"id": "pope-adversarial-1", "image": "val2014/COCO_val2014_000000000042.jpg",
                   "conversations": [{"from": "human", "value": f"<image>\nIs there a dog in the image?\n{VQA}"},
                                     {"from": "gpt", "value": "yes"}],
                   "references": ["yes"], "label": "yes"}
    assert human(no) == f"<image>\nIs there a leash in the image?\n{VQA}" and no["label"] == "no"
    convert("pope", src, tmp_path / "coco", image_folder=src / "val2014")  # the val2014 folder itself
    assert load(tmp_path / "coco")[1]["random"][0]["image"] == "COCO_val2014_000000000042.jpg"


# ------------------------------------------------------------------------------------------------ subsampling
def test_paper_default_sizes_only_for_ocrvqa_and_vqav2():
    assert get_converter("vqav2").default_sizes == {"train": 20000, "test": 5000}
    assert get_converter("ocrvqa").default_sizes == {"train": 20000, "test": 5000}
    assert all(not get_converter(n).default_sizes for n in list_converters() if n not in ("vqav2", "ocrvqa"))


def test_default_sizes_apply_when_the_source_is_larger(tmp_path, monkeypatch):
    # Shrink the 20k/5k default so that the tiny source is "larger" than it; overrides still win.
    monkeypatch.setitem(CONVERTERS, "vqav2", dataclasses.replace(CONVERTERS["vqav2"],
                                                                 default_sizes={"train": 4, "test": 2}))
    src = make_vqa(tmp_path / "src", "v2_", n_train=9, n_test=6)
    assert convert("vqav2", src, tmp_path / "a")["splits"] == {"train": 4, "test": 2}
    assert convert("vqav2", src, tmp_path / "b", train_size=6)["splits"] == {"train": 6, "test": 2}
    assert convert("vqav2", src, tmp_path / "c", test_size=100)["splits"] == {"train": 4, "test": 6}  # capped


def test_subsampling_is_seeded_deterministic_and_in_source_order(tmp_path):
    src = make_vqa(tmp_path / "src", "v2_", n_train=30, n_test=10)

    def ids(out, seed):
        convert("vqav2", src, tmp_path / out, train_size=8, test_size=3, seed=seed)
        return {split: [r["id"] for r in records] for split, records in check_folder(tmp_path / out)[1].items()}

    a, b, c = ids("a", 0), ids("b", 0), ids("c", 1)
    assert a == b and a != c
    assert len(a["train"]) == 8 and len(a["test"]) == 3
    order = [f"vqav2-train-{(1000 + i) * 10}" for i in range(30)]
    assert a["train"] == sorted(a["train"], key=order.index)


def test_ocrvqa_subsample_counts_questions(tmp_path):
    src = make_ocrvqa(tmp_path)
    meta = convert("ocrvqa", src, tmp_path / "out", train_size=1, seed=5)
    assert meta["splits"] == {"train": 1, "test": 1}


def test_missing_images_are_skipped_with_a_warning_and_sizes_kept(tmp_path):
    src = make_vqa(tmp_path / "src", "v2_", n_train=6, n_test=2)
    (src / "train2014/COCO_train2014_000000001002.jpg").unlink()
    with pytest.warns(UserWarning, match=r"skipped 1 record.*vqav2-train-10020 -> .*COCO_train2014_000000001002"):
        meta = convert("vqav2", src, tmp_path / "out")
    assert meta["splits"] == {"train": 5, "test": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert convert("vqav2", src, tmp_path / "sub", train_size=5, seed=2)["splits"]["train"] == 5


def test_no_image_found_is_an_error_and_leaves_a_previous_folder_intact(tmp_path):
    src = make_pope(tmp_path / "src")
    convert("pope", src, tmp_path / "out")
    before = load(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="none of the 2 images found under .*with --image-folder"):
        convert("pope", src, tmp_path / "out", image_folder=tmp_path, overwrite=True)
    assert load(tmp_path / "out") == before


@pytest.mark.parametrize("where", [".", "iconqa_data", "iconqa_data/iconqa"])
def test_iconqa_src_may_be_any_level_of_the_release(tmp_path, where):
    make_iconqa(tmp_path)
    meta = convert("iconqa_blank", tmp_path / where, tmp_path / "out")
    assert meta["image_folder"] == str((tmp_path / "iconqa_data/iconqa").resolve())
    assert meta["splits"] == {"train": 1, "test": 1}


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("name, expected", [
    ("scienceqa", r"expected problems\.json of the ScienceQA release"),
    ("vizwiz", r"expected train\.json of the VizWiz-VQA release"),
    ("iconqa_txt", r"expected choose_txt/ folders of the IconQA release"),
    ("iconqa_blank", r"expected fill_in_blank/ folders of the IconQA release"),
    ("flickr30k", r"expected dataset_flickr30k\.json of the Flickr30k Karpathy split"),
    ("okvqa", r"expected OpenEnded_mscoco_train2014_questions\.json of the OK-VQA release"),
    ("vqav2", r"expected v2_OpenEnded_mscoco_train2014_questions\.json of the VQAv2 release"),
    ("ocrvqa", r"expected dataset\.json of the OCR-VQA release"),
    ("pope", r"expected coco_pope_random\.json of the POPE question files"),
])
def test_missing_source_file_names_the_file_and_format(tmp_path, name, expected):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=expected):
        convert(name, tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out/dataset.json").exists()


def test_missing_second_file_and_missing_src(tmp_path):
    src = make_vqa(tmp_path / "src", "")
    (src / "mscoco_val2014_annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"mscoco_val2014_annotations\.json"):
        convert("okvqa", src, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert("okvqa", tmp_path / "nowhere", tmp_path / "out")


def _drop(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name, file, edit, key", [
    ("scienceqa", "data/scienceqa/problems.json", lambda d: d["1"].pop("choices"), "choices"),
    ("scienceqa", "data/scienceqa/pid_splits.json", lambda d: d.pop("test"), "test"),
    ("vizwiz", "Annotations/val.json", lambda d: d[0].pop("question"), "question"),
    ("iconqa_txt", "iconqa_data/iconqa/train/choose_txt/9/data.json", lambda d: d.pop("answer"), "answer"),
    ("iconqa_blank", "iconqa_data/iconqa/test/fill_in_blank/50/data.json", lambda d: d.pop("question"), "question"),
    ("flickr30k", "src/dataset_flickr30k.json", lambda d: d["images"][1].pop("filename"), "filename"),
    ("okvqa", "mscoco_train2014_annotations.json", lambda d: d["annotations"][0].pop("answers"), "answers"),
    ("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json", lambda d: d["questions"][1].pop("image_id"), "image_id"),
    ("ocrvqa", "dataset.json", lambda d: d["222"].pop("split"), "split"),
])
def test_malformed_source_names_the_file_and_key(tmp_path, name, file, edit, key):
    src = MAKERS[name](tmp_path / "src" if name == "flickr30k" else tmp_path)
    _drop(tmp_path / file, edit)
    with pytest.raises(ValueError, match=rf"{Path(file).name}: .*missing the key '{key}'"):
        convert(name, src, tmp_path / "out")


def test_other_malformed_sources(tmp_path):
    src = make_pope(tmp_path / "pope")
    with open(src / "coco_pope_popular.json", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"coco_pope_popular\.json: line 3 is not valid JSON"):
        convert("pope", src, tmp_path / "out")
    src = make_ocrvqa(tmp_path / "ocr")
    _drop(src / "dataset.json", lambda d: d["111"]["answers"].pop())
    with pytest.raises(ValueError, match=r"dataset\.json: book '111' has 2 'questions' but 1 'answers'"):
        convert("ocrvqa", src, tmp_path / "out")
    src = make_vqa(tmp_path / "vqa", "")
    _drop(src / "mscoco_val2014_annotations.json", lambda d: d["annotations"].pop())
    with pytest.raises(ValueError, match=r"mscoco_val2014_annotations\.json: no annotation .* question_id 20010"):
        convert("okvqa", src, tmp_path / "out")


def test_bad_sizes_are_rejected(tmp_path):
    src = make_pope(tmp_path)
    with pytest.raises(ValueError, match="pope has no train split"):
        convert("pope", src, tmp_path / "out", train_size=10)
    with pytest.raises(ValueError, match="test_size must be a positive integer"):
        convert("pope", src, tmp_path / "out", test_size=0)
    assert convert("pope", src, tmp_path / "out", test_size=1)["splits"] == {
        "random": 1, "popular": 1, "adversarial": 1}
