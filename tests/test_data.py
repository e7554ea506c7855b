"""The LLaVA-JSON loader and the collator (answer-only labels), on a small hand-made dataset folder."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mllm_study.config import PretrainConfig
from mllm_study.data import IGNORE_INDEX, Collator, DataError, load_split, subsample
from mllm_study.models import build_tiny_llava, build_tokenizer


def _write_dataset(root, records, image_names=("a.png",)):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in image_names:
        Image.new("RGB", (32, 32), (200, 30, 30)).save(root / "images" / name)
    (root / "dataset.json").write_text(json.dumps({"name": "toy", "metric": "accuracy", "image_folder": "images"}))
    (root / "train.json").write_text(json.dumps(records))
    return root


RECORDS = [
    {"id": "1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat color is it ?"}, {"from": "gpt", "value": "red"}]},
    {"id": "2", "conversations": [  # text only, multi-turn
        {"from": "human", "value": "say one"}, {"from": "gpt", "value": "one"},
        {"from": "human", "value": "say two"}, {"from": "gpt", "value": "two two"}]},
]


@pytest.fixture(scope="module")
def processor():
    texts = [t["value"] for r in RECORDS for t in r["conversations"]] + ["user : assistant :"]
    _, proc = build_tiny_llava(build_tokenizer(texts), PretrainConfig())
    return proc


def test_load_split_resolves_images_and_accepts_text_only_multiturn(tmp_path):
    root = _write_dataset(tmp_path / "toy", RECORDS)
    recs = load_split(root, "train")
    assert recs[0]["image_path"] == str((root / "images" / "a.png").resolve())
    assert recs[1]["image_path"] is None
    assert all(r["dataset"] == "toy" for r in recs)


@pytest.mark.parametrize("records, message", [
    ({"id": 1}, "must be a list of records"),
    ([], "the split is empty"),
    ([{"conversations": []}], "has no 'id'"),
    ([{"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}], "turn 0 is from 'gpt', expected 'human'"),
    ([{"id": "x", "conversations": [{"from": "human"}]}], "turn 0 needs 'from' and 'value'"),
    ([{"id": "x", "image": "missing.png", "conversations": [{"from": "human", "value": "q"}]}],
     "image file not found: .*missing.png"),
    ([RECORDS[1], RECORDS[1]], "duplicate id '2'"),
])
def test_bad_records_name_the_problem(tmp_path, records, message):
    root = _write_dataset(tmp_path / "bad", records)
    with pytest.raises(DataError, match=message):
        load_split(root, "train")


def test_missing_dataset_json_and_split(tmp_path):
    with pytest.raises(DataError, match="dataset.json is missing"):
        load_split(tmp_path, "train")
    root = _write_dataset(tmp_path / "toy", RECORDS)
    with pytest.raises(DataError, match="no split 'test'.*splits: train"):
        load_split(root, "test")
    (root / "train.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_split(root, "train")


def test_subsample_is_seeded_ordered_and_bounded():
    recs = [{"id": i} for i in range(100)]
    a, b, c = subsample(recs, 10, 1), subsample(recs, 10, 1), subsample(recs, 10, 2)
    assert a == b and a != c
    assert [r["id"] for r in a] == sorted(r["id"] for r in a)
    assert subsample(recs, None, 0) == recs
    with pytest.raises(DataError, match="asked for 101 records but the split has only 100"):
        subsample(recs, 101, 0)


def test_collator_labels_only_answer_tokens(tmp_path, processor):
    recs = load_split(_write_dataset(tmp_path / "toy", RECORDS), "train")
    batch = Collator(processor, mode="train")(recs)
    tok = processor.tokenizer
    assert batch["pixel_values"].shape == (1, 3, 32, 32)  # one image for two records (second is text-only)
    assert (batch["input_ids"] == processor.image_token_id).sum() == 16  # (32/8)^2 image tokens
    for row, expected in zip(range(2), (["red", "</s>"], ["one", "</s>", "two", "two", "</s>"])):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        assert tok.convert_ids_to_tokens(kept.tolist()) == expected
        # labels equal input ids where kept; left padding -> attention mask 0 only at the start
        assert (batch["input_ids"][row][labels != IGNORE_INDEX] == kept).all()
    mask = batch["attention_mask"][1]
    assert mask.tolist() == sorted(mask.tolist())


def test_generate_mode_ends_with_assistant_prompt(tmp_path, processor):
    recs = load_split(_write_dataset(tmp_path / "toy", RECORDS), "train")
    batch = Collator(processor, mode="generate")(recs)
    tok = processor.tokenizer
    for row in range(2):
        assert tok.convert_ids_to_tokens(batch["input_ids"][row, -2:].tolist()) == ["assistant", ":"]
    # the multi-turn prompt keeps the first exchange and stops before the last answer
    text = tok.decode(batch["input_ids"][1], skip_special_tokens=True)
    assert "say one" in text and "two two" not in text
    blank = Collator(processor, mode="generate", blank_images=True)(recs)
    assert blank["pixel_values"].abs().max() < 0.01  # mid grey -> ~0 after normalisation


def test_images_already_at_model_size_skip_resize_and_crop_with_identical_pixels(processor):
    import numpy as np
    import torch

    from mllm_study import data

    rng = np.random.default_rng(0)
    ip = processor.image_processor
    same = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    assert data._noop_geometry(ip, same) == {"do_resize": False, "do_center_crop": False}
    fast = processor(images=same, text=["<image>"] * 5, return_tensors="pt", **data._noop_geometry(ip, same))
    full = processor(images=same, text=["<image>"] * 5, return_tensors="pt")
    assert torch.equal(fast["pixel_values"], full["pixel_values"])
    # anything that resize or crop would change keeps the processor's full path
    assert data._noop_geometry(ip, same + [Image.new("RGB", (48, 32))]) == {}
    assert data._noop_geometry(ip, [Image.new("RGB", (64, 64))]) == {}
    assert data._noop_geometry(ip, [Image.new("RGB", (32, 48))]) == {}  # shortest edge fits, crop would cut
    assert data._noop_geometry(ip, []) == {}
    assert data._noop_geometry(None, same) == {}


def test_batched_chat_templates_equal_one_by_one(tmp_path, processor):
    from mllm_study.data import prompt_messages, to_messages

    recs = load_split(_write_dataset(tmp_path / "toy", RECORDS), "train")
    for mode, convs, gen in (("train", [to_messages(r) for r in recs], False),
                             ("generate", [prompt_messages(r) for r in recs], True)):
        c = Collator(processor, mode=mode)
        assert c._templates(convs, gen) == [c._template(m, gen) for m in convs]
        assert c._templates(convs[:1], gen) == [c._template(convs[0], gen)]
