"""Tests of `data convert` on the layouts users bring: official folder trees, Kaggle copies, reused outputs,
Hugging Face parquet releases (fixtures built in tmp_path: tiny PNGs, JSON and parquet files).

Usage: ``.venv/bin/python -m pytest tests/test_data_layouts.py -q``
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mllm_study.cli import main
from mllm_study.converters import convert
from mllm_study.data import load_split
from test_converters import check_folder, load, make_flickr30k, make_pope, make_scienceqa, make_vqa, \
    write_json

VQA = "Answer the question using a single word or phrase."


def run_cli(*args: str) -> int:
    return main(["data", "convert", *args])


# ------------------------------------------------------------------------------------------------ --image-folder
def test_cli_image_folder_is_passed_and_named_in_the_error(tmp_path, capsys):
    src = make_pope(tmp_path / "POPE/output/coco")
    coco = tmp_path / "elsewhere/coco/val2014"
    coco.parent.mkdir(parents=True)
    shutil.move(str(src / "val2014"), coco)
    assert run_cli("pope", "--src", str(src), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "none of the 2 images found" in err and "--image-folder" in err
    assert not (tmp_path / "out").exists()
    assert run_cli("pope", "--src", str(src), "--out", str(tmp_path / "out"), "--image-folder", str(coco)) == 0
    meta, splits = check_folder(tmp_path / "out")
    assert meta["image_folder"] == str(coco.resolve())
    assert splits["random"][0]["image"] == "COCO_val2014_000000000042.jpg"


# ------------------------------------------------------------------------------------------------ layouts
def test_official_vqa_layout_questions_annotations_images_mscoco(tmp_path):
    flat = make_vqa(tmp_path / "flat", "v2_")
    root = tmp_path / "VQA"
    for f in flat.glob("*questions.json"):
        (root / "Questions").mkdir(parents=True, exist_ok=True)
        shutil.move(str(f), root / "Questions" / f.name)
    for f in flat.glob("*annotations.json"):
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        shutil.move(str(f), root / "Annotations" / f.name)
    (root / "Images").mkdir()
    shutil.move(str(flat), root / "Images/mscoco")  # Images/mscoco/{train,val}2014/COCO_*.jpg
    meta = convert("vqav2", root, tmp_path / "out")
    _, splits = check_folder(tmp_path / "out")
    assert meta["image_folder"] == str((root / "Images/mscoco").resolve())
    assert splits["train"][0]["image"] == "train2014/COCO_train2014_000000001000.jpg"


@pytest.mark.parametrize("images_at", ["POPE/val2014", "val2014", "POPE/output/coco/val2014"])
def test_pope_output_coco_finds_val2014_up_the_tree(tmp_path, images_at):
    src = make_pope(tmp_path / "POPE/output/coco")
    if images_at != "POPE/output/coco/val2014":
        (tmp_path / images_at).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src / "val2014"), tmp_path / images_at)
    meta = convert("pope", src, tmp_path / "out")
    assert meta["image_folder"] == str((tmp_path / images_at).parent.resolve())
    assert check_folder(tmp_path / "out")[0]["splits"] == {"random": 2, "popular": 2, "adversarial": 2}
    # the POPE repository root as --src (files in output/coco) works too
    assert convert("pope", tmp_path / "POPE", tmp_path / "out2")["splits"]["random"] == 2


@pytest.mark.parametrize("src_rel", ["ScienceQA", "ScienceQA/data", "ScienceQA/data/scienceqa"])
def test_scienceqa_repository_layout_with_images_in_data_scienceqa_images(tmp_path, src_rel):
    make_scienceqa(tmp_path / "ScienceQA")  # data/scienceqa/{problems,pid_splits}.json, images data/{split}/{pid}
    data = tmp_path / "ScienceQA/data"
    (data / "scienceqa/images").mkdir()
    for split in ("train", "test", "val"):
        shutil.move(str(data / split), data / "scienceqa/images" / split)
    meta = convert("scienceqa", tmp_path / src_rel, tmp_path / "out")
    _, splits = check_folder(tmp_path / "out")
    assert meta["image_folder"] == str((data / "scienceqa/images").resolve())
    assert splits["train"][0]["image"] == "train/1/image.png"


def test_flickr30k_named_dataset_json_in_kaggle_nested_folders(tmp_path):
    src = make_flickr30k(tmp_path / "kaggle")
    (src / "dataset_flickr30k.json").rename(src / "dataset.json")
    (src / "flickr30k_images").mkdir()
    shutil.move(str(src / "flickr30k-images"), src / "flickr30k_images/flickr30k_images")
    meta = convert("flickr30k", src, tmp_path / "out")
    _, splits = check_folder(tmp_path / "out")
    assert meta["image_folder"] == str((src / "flickr30k_images/flickr30k_images").resolve())
    assert meta["splits"] == {"train": 2, "test": 1} and splits["test"][0]["image"] == "103.jpg"


def test_flickr30k_dataset_json_of_another_karpathy_split_is_rejected(tmp_path):
    src = make_flickr30k(tmp_path)
    data = json.loads((src / "dataset_flickr30k.json").read_text())
    (src / "dataset_flickr30k.json").unlink()
    write_json(src / "dataset.json", {**data, "dataset": "coco"})
    with pytest.raises(ValueError, match=r"dataset\.json: this is Karpathy's 'coco' split .*not flickr30k"):
        convert("flickr30k", src, tmp_path / "out")


# ------------------------------------------------------------------------------------------ wrong or empty sources
def test_vqa_v1_files_are_rejected_as_okvqa(tmp_path):
    src = make_vqa(tmp_path, "")  # OK-VQA's file names are VQA v1's file names
    path = src / "mscoco_train2014_annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][0].update(answer_type="yes/no", multiple_choice_answer="yes")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"mscoco_train2014_annotations\.json: these are VQA v1 annotations "
                                         r"\(question_id 10000 has 'multiple_choice_answer'\), not OK-VQA"):
        convert("okvqa", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    data["annotations"][0].pop("multiple_choice_answer")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"answer_type 'yes/no'\), not OK-VQA"):
        convert("okvqa", src, tmp_path / "out")
    assert convert("vqav2", make_vqa(tmp_path / "v2", "v2_"), tmp_path / "v2out")["splits"]["train"] == 3


def test_an_empty_split_is_an_error_and_writes_nothing(tmp_path, capsys):
    src = make_scienceqa(tmp_path)
    splits_path = src / "scienceqa/pid_splits.json"
    splits_path.write_text(json.dumps({"train": ["1", "2"], "val": ["4"], "test": []}))
    with pytest.raises(ValueError, match=r"scienceqa test: the split has no records in .*nothing was written"):
        convert("scienceqa", src, tmp_path / "out")
    assert run_cli("scienceqa", "--src", str(src), "--out", str(tmp_path / "out")) == 2
    assert "scienceqa test: the split has no records" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_non_empty_out_needs_overwrite_and_is_then_replaced_as_a_whole(tmp_path, capsys):
    out = tmp_path / "out"
    convert("pope", make_pope(tmp_path / "pope"), out)
    (out / "notes.txt").write_text("mine")
    assert run_cli("vqav2", "--src", str(make_vqa(tmp_path / "vqa", "v2_")), "--out", str(out)) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["adversarial.json", "dataset.json", "notes.txt", "popular.json",
                                                      "random.json"]
    assert run_cli("vqav2", "--src", str(tmp_path / "vqa"), "--out", str(out), "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "test.json", "train.json"]  # no stale POPE files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    check_folder(out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        convert("pope", tmp_path / "pope", tmp_path / "file")


def test_a_failed_overwrite_keeps_the_old_folder(tmp_path):
    out = tmp_path / "out"
    src = make_pope(tmp_path / "pope")
    convert("pope", src, out)
    before = load(out)
    (src / "coco_pope_popular.json").write_text("{bad\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        convert("pope", src, out, overwrite=True)
    assert load(out) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------ HF parquet
def png_bytes(color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def jpg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="JPEG")
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict], row_group_size: int | None = None) -> None:
    """Rows as the `datasets` library stores them: an ``image`` struct column {bytes, path}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def vqav2_rows(n: int, start: int = 0, answers=True) -> list[dict]:
    return [{"question_type": "what color", "multiple_choice_answer": "red",
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                         for k, a in enumerate(["red"] * 6 + ["dark red"] * 4)] if answers else None,
             "image_id": 100 + i, "answer_type": "other", "question_id": 1000 + i,
             "question": f"What color is thing {i}?", "image": {"bytes": png_bytes(), "path": f"{100 + i}.png"}}
            for i in range(start, start + n)]


def test_parquet_vqav2_folder_maps_validation_to_test_and_writes_images(tmp_path):
    data = tmp_path / "VQAv2/data"
    write_parquet(data / "validation-00000-of-00002.parquet", vqav2_rows(3), row_group_size=2)
    write_parquet(data / "validation-00001-of-00002.parquet", vqav2_rows(2, start=3))
    write_parquet(data / "testdev-00000-of-00001.parquet", vqav2_rows(2, start=10, answers=False))
    meta = convert("vqav2", tmp_path / "VQAv2", tmp_path / "out")
    assert meta["splits"] == {"test": 5} and meta["image_folder"] == "images"
    assert "lmms-lab/VQAv2 parquet" in meta["source"]
    records = load_split(tmp_path / "out", "test")  # the loader accepts it; images resolve inside the folder
    first = json.loads((tmp_path / "out/test.json").read_text())[0]
    assert first == {"id": "vqav2-test-1000", "image": "test/vqav2-test-1000.png",
                     "conversations": [{"from": "human", "value": f"<image>\nWhat color is thing 0?\n{VQA}"},
                                       {"from": "gpt", "value": "red"}],
                     "references": ["red"] * 6 + ["dark red"] * 4}
    assert Image.open(records[4]["image_path"]).size == (4, 4)
    sub = convert("vqav2", data / "validation-00000-of-00002.parquet", tmp_path / "sub", test_size=2, seed=3)
    assert sub["splits"] == {"test": 2} and len(list((tmp_path / "sub/images/test").iterdir())) == 2


def test_parquet_pope_splits_by_category_and_okvqa_vizwiz_scienceqa_flickr(tmp_path):
    pope = [{"id": str(i), "question_id": str(i), "question": "Is there a dog in the image?",
             "answer": ["yes", "no"][i % 2], "image_source": "COCO_val2014_000000000042",
             "image": {"bytes": jpg_bytes(), "path": None}, "category": ["adversarial", "popular", "random"][i % 3]}
            for i in range(6)]
    write_parquet(tmp_path / "POPE/data/test-00000-of-00001.parquet", pope)
    meta = convert("pope", tmp_path / "POPE", tmp_path / "pope")
    assert meta["splits"] == {"random": 2, "popular": 2, "adversarial": 2}
    rec = json.loads((tmp_path / "pope/random.json").read_text())[0]
    assert rec["id"] == "pope-random-2" and rec["label"] == "yes" and rec["image"] == "random/pope-random-2.jpg"

    ok = [{"question_id": "297147", "image": {"bytes": png_bytes(), "path": None}, "question": "What sport?",
           "answers": ["race"] * 6 + ["motocross"] * 4, "question_type": "eight", "answer_type": "other"}]
    write_parquet(tmp_path / "okvqa/val2014-00000-of-00001.parquet", ok)
    convert("okvqa", tmp_path / "okvqa", tmp_path / "ok")
    okr = json.loads((tmp_path / "ok/test.json").read_text())[0]
    assert okr["id"] == "okvqa-test-297147" and okr["conversations"][1]["value"] == "race"

    viz = [{"question_id": "VizWiz_val_00000000", "image": {"bytes": png_bytes(), "path": None},
            "question": "What is this?", "answers": ["soup"] * 7 + ["can"] * 3, "category": "other"}]
    write_parquet(tmp_path / "viz/data/val-00000-of-00001.parquet", viz)
    write_parquet(tmp_path / "viz/data/test-00000-of-00001.parquet", [{**viz[0], "answers": None}])
    assert convert("vizwiz", tmp_path / "viz", tmp_path / "vz")["splits"] == {"test": 1}
    assert "When the information is insufficient" in json.loads(
        (tmp_path / "vz/test.json").read_text())[0]["conversations"][0]["value"]

    def sqa(img):
        return {"image": img, "question": "Which animal?", "choices": ["cat", "dog"], "answer": 1, "hint": "",
                "task": "closed choice", "grade": "g1", "subject": "s", "topic": "t", "category": "c",
                "skill": "k", "lecture": "", "solution": ""}
    write_parquet(tmp_path / "sqa/ScienceQA-IMG/train-00000-of-00001.parquet",
                  [sqa({"bytes": png_bytes(), "path": None}), sqa(None)])  # text-only rows are skipped
    write_parquet(tmp_path / "sqa/ScienceQA-IMG/test-00000-of-00001.parquet",
                  [sqa({"bytes": png_bytes(), "path": None})])
    sq = convert("scienceqa", tmp_path / "sqa", tmp_path / "sq")
    assert sq["splits"] == {"train": 1, "test": 1}
    rec = json.loads((tmp_path / "sq/train.json").read_text())[0]
    assert rec["id"] == "scienceqa-train-0" and rec["references"] == ["B"] and rec["choices"] == ["cat", "dog"]

    fl = [{"image": {"bytes": jpg_bytes(), "path": "1000092795.jpg"}, "caption": [f"Caption {k}." for k in range(5)],
           "sentids": [str(k) for k in range(5)], "img_id": "0", "filename": "1000092795.jpg"}]
    write_parquet(tmp_path / "fl/data/test-00000-of-00001.parquet", fl)
    assert convert("flickr30k", tmp_path / "fl", tmp_path / "f")["splits"] == {"test": 1}
    assert json.loads((tmp_path / "f/test.json").read_text())[0]["id"] == "flickr30k-test-1000092795"


def test_parquet_errors_name_the_file_and_column(tmp_path):
    rows = vqav2_rows(1)
    del rows[0]["answers"]
    write_parquet(tmp_path / "a/validation-00000-of-00001.parquet", rows)
    with pytest.raises(ValueError, match=r"validation-00000-of-00001\.parquet: column 'answers' is missing; "
                                         r"expected the lmms-lab/VQAv2 schema"):
        convert("vqav2", tmp_path / "a", tmp_path / "out")
    write_parquet(tmp_path / "b/testdev-00000-of-00001.parquet", vqav2_rows(1, answers=False))
    with pytest.raises(ValueError, match=r"has no split this reader uses \(found: testdev; uses: validation"):
        convert("vqav2", tmp_path / "b", tmp_path / "out")
    write_parquet(tmp_path / "c/validation-00000-of-00001.parquet", vqav2_rows(1))
    with pytest.raises(ValueError, match=r"ocrvqa: no Hugging Face parquet reader \(readers: flickr30k, okvqa"):
        convert("ocrvqa", tmp_path / "c", tmp_path / "out")
    with pytest.raises(ValueError, match="has no train split"):
        convert("vqav2", tmp_path / "c", tmp_path / "out", train_size=5)
    (tmp_path / "d").mkdir()
    (tmp_path / "d/validation-00000-of-00001.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"validation-00000-of-00001\.parquet: not a readable parquet file"):
        convert("vqav2", tmp_path / "d", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parquet_dataset_id_without_the_datasets_library_says_what_to_do(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    assert run_cli("vqav2", "--src", "hf:lmms-lab/VQAv2", "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "reading a dataset id needs the `datasets` library (pip install datasets==5.2.0)" in err
    assert not (tmp_path / "out").exists()
