"""LLaVA conversation files read directly: `run --data FILE --image-folder DIR` and `run.data_file`.

Usage: ``.venv/bin/python -m pytest tests/test_conversation_files.py -q``

Fixtures are written in tmp_path in the shapes LLaVA-1.5 (llava_v1_5_mix665k.json), ShareGPT4V and Qwen-style
data ship: gpt-first records, user/assistant roles, messages/role/content, repeated ids, text-only records.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from mllm_study.cli import main
from mllm_study.config import ConfigError, load_params
from mllm_study.converters.llava_file import conversation_dataset
from mllm_study.runs import resolve_dataset
from mllm_study.data import DataError, load_conversation_file, load_split


def png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (90, 10, 200)).save(path)


def llava_records() -> list[dict]:
    return [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
            {"from": "gpt", "value": "White and red."},
            {"from": "human", "value": "What feature can be seen on the back?"},
            {"from": "gpt", "value": "An advertisement."}]},
        {"id": "gpt-first", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"from": "gpt", "value": "Hello! Ask me about the picture."},  # dropped, as LLaVA's preprocess does
            {"from": "human", "value": "Is it a bus?\n<image>"}, {"from": "gpt", "value": "Yes"}]},
        {"id": "000000033471", "image": ["coco/train2017/000000033471.jpg"], "conversations": [  # repeated id
            {"from": "user", "value": "<image>\nHow many wheels?"}, {"from": "assistant", "value": "4"}]},
        {"id": "text-only", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]},
        {"id": "qwen", "image": "coco/train2017/000000033471.jpg", "messages": [
            {"role": "system", "content": "You are helpful."}, {"role": "user", "content": "<image>Colour?"},
            {"role": "assistant", "content": "red"}]},
        {"id": "sharegpt4v-1", "image": "sam/images/sa_1.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image in detail."},
            {"from": "gpt", "value": "A purple square."}]},
    ]


def make_files(tmp_path: Path, lines: bool = False) -> tuple[Path, Path]:
    images = tmp_path / "data"
    png(images / "coco/train2017/000000033471.jpg")
    png(images / "sam/images/sa_1.jpg")
    records = llava_records()
    path = tmp_path / ("mix.jsonl" if lines else "mix.json")
    path.write_text("".join(json.dumps(r) + "\n" for r in records) if lines else json.dumps(records, indent=1))
    return path, images


@pytest.mark.parametrize("lines", [False, True])
def test_llava_handling_of_turns_roles_ids_and_text_only(tmp_path, lines):
    path, images = make_files(tmp_path, lines)
    with pytest.warns(UserWarning, match=r"1 record\(s\) repeat an earlier id \(e\.g\. '000000033471'\); kept"):
        records = load_conversation_file(path, images)
    assert [r["id"] for r in records] == ["000000033471", "gpt-first", "000000033471-dup1", "text-only", "qwen",
                                          "sharegpt4v-1"]
    assert records[1]["conversations"] == [{"from": "human", "value": "Is it a bus?\n<image>"},
                                           {"from": "gpt", "value": "Yes"}]
    assert records[2]["image"] == "coco/train2017/000000033471.jpg"
    assert [t["from"] for t in records[2]["conversations"]] == ["human", "gpt"]
    assert "image" not in records[3]
    assert records[4]["conversations"] == [{"from": "human", "value": "<image>Colour?"},
                                           {"from": "gpt", "value": "red"}]
    assert len(records[0]["conversations"]) == 4


@pytest.mark.parametrize("edit, message", [
    (lambda r: r[0]["conversations"].__setitem__(1, {"from": "bot", "value": "x"}),
     r"record 0 \(id 000000033471\): turn 1 is from 'bot'; known roles: human/user, gpt/assistant"),
    (lambda r: r[5].__setitem__("image", "sam/images/missing.jpg"),
     r"record 5 \(id sharegpt4v-1\): image file not found: .*missing\.jpg \(pass --image-folder"),
    (lambda r: r[3]["conversations"].append({"from": "gpt", "value": "again"}),
     r"record 3 \(id text-only\): turns do not alternate human/gpt \(turn 2 is from 'gpt'"),
    (lambda r: r[2].__setitem__("image", ["a.jpg", "b.jpg"]), r"record 2 .*2 images; only one image per record"),
    (lambda r: r[1].pop("conversations"), r"record 1 \(id gpt-first\): record has neither 'conversations' nor"),
])
def test_malformed_records_name_the_file_and_record(tmp_path, edit, message):
    path, images = make_files(tmp_path)
    records = json.loads(path.read_text())
    edit(records)
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"mix\.json " + message):
        load_conversation_file(path, images)


def test_bad_json_lines_and_empty_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": 1, "conversations": []}\n{oops\n')
    with pytest.raises(DataError, match=r"a\.jsonl: line 2 is not valid JSON"):
        load_conversation_file(tmp_path / "a.jsonl", tmp_path)
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(DataError, match=r"b\.json: the file has no records"):
        load_conversation_file(tmp_path / "b.json", tmp_path)


def test_conversation_dataset_is_built_once_and_loads(tmp_path):
    path, images = make_files(tmp_path)
    with pytest.warns(UserWarning):
        folder = conversation_dataset(path, images, cache=tmp_path / "cache")
    assert folder.parent == tmp_path / "cache/data" and folder.name.startswith("mix-")
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["splits"] == {"train": 5, "test": 1} and meta["metric"] == "accuracy"  # val_size(6) = 1
    assert meta["image_folder"] == str(images.resolve())
    test = load_split(folder, "test")
    assert test[0]["id"] == "sharegpt4v-1" and test[0]["image_path"] == str(images.resolve() / "sam/images/sa_1.jpg")
    assert load_split(folder, "train")[3]["image_path"] is None  # text-only
    assert conversation_dataset(path, images, cache=tmp_path / "cache") == folder  # reused, no second warning
    path.write_text(path.read_text().replace("White and red.", "White."))
    with pytest.warns(UserWarning):
        assert conversation_dataset(path, images, cache=tmp_path / "cache") != folder  # edited file: new folder
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(json.dumps({"id": "t1", "image": "sam/images/sa_1.jpg", "conversations": [
        {"from": "user", "value": "<image>\nColour?"}, {"from": "assistant", "value": "purple"}]}) + "\n")
    with pytest.warns(UserWarning):
        both = conversation_dataset(path, images, test_file, cache=tmp_path / "cache")
    assert json.loads((both / "dataset.json").read_text())["splits"] == {"train": 6, "test": 1}


def test_params_keys_become_the_dataset_folder(tmp_path):
    path, images = make_files(tmp_path)
    params = load_params(profile="smoke", overrides={"run.data_file": str(path), "run.image_folder": str(images),
                                                     "paths.cache": str(tmp_path / "cache")})
    assert Path(params.run.dataset).parent == tmp_path / "cache/data"
    assert not hasattr(params.run, "data_file")  # not a RunConfig field: run ids are computed as before
    assert not Path(params.run.dataset).exists()  # config names the folder; the run's data resolution builds it
    with pytest.warns(UserWarning):  # the file's duplicate id, reported by the reader while building
        folder = resolve_dataset(params.run.dataset, params, progress=False)
    assert folder == Path(params.run.dataset) and (folder / "dataset.json").is_file()
    assert folder == conversation_dataset(path, images, cache=tmp_path / "cache")  # the converter's own folder
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("run:\n  image_folder: data\n")
    with pytest.raises(ConfigError, match=r"run\.image_folder needs run\.data_file"):
        load_params(yaml_file)
    with pytest.raises(ConfigError, match=r"'run.data_file': expected str, got int"):
        load_params(overrides={"run.data_file": 3})


def _smoke_args(smoke_params):
    return ["--profile", "smoke", "--quiet", "--set", f"paths.cache={smoke_params.paths.cache}",
            "--set", f"paths.runs={smoke_params.paths.runs}"]


def test_run_data_file_end_to_end(smoke_params, smoke_model_dir, tmp_path, capsys):
    path, images = make_files(tmp_path, lines=True)
    with pytest.warns(UserWarning, match="repeat an earlier id"):
        code = main(["run", *_smoke_args(smoke_params), "--method", "lora", "--data", str(path), "--image-folder",
                     str(images), "--method-params", "{r: 2, alpha: 4}"])
    assert code == 0
    out = capsys.readouterr().out
    assert re.search(r"^mix \(accuracy\): [0-9.]+ on 1 test items; trained .* parameters", out, re.M)
    run_dir = Path(re.search(r"run directory: (.+)", out)[1])
    spec = json.loads((run_dir / "spec.json").read_text())
    assert Path(spec["run"]["dataset"]).name.startswith("mix-") and "data_file" not in spec["run"]


def test_run_data_errors(smoke_params, tmp_path, capsys):
    assert main(["run", *_smoke_args(smoke_params), "--data", str(tmp_path / "nope.json")]) == 2
    assert "conversation file not found" in capsys.readouterr().err
    path, images = make_files(tmp_path)
    assert main(["run", *_smoke_args(smoke_params), "--data", str(path), "--dataset", "vqav2"]) == 2
    assert "give --data FILE or --dataset NAME, not both" in capsys.readouterr().err
    assert main(["run", *_smoke_args(smoke_params), "--data", str(path)]) == 2  # images not beside the file
    assert "image file not found" in capsys.readouterr().err
