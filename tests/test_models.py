"""tiny-llava: built from configs, saved and loaded through the Auto classes like any hub checkpoint."""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path

import pytest
import torch

from mllm_study.config import PretrainConfig
from mllm_study.models import build_tiny_llava, build_tokenizer, load_checkpoint, load_model

TEXTS = ["what color is the circle ?", "red", "blue", "user : assistant :"]


def _inputs(processor):
    from PIL import Image

    img = Image.new("RGB", (32, 32), (10, 200, 10))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]}],
        add_generation_prompt=True, tokenize=False)
    return processor(images=[img], text=text, return_tensors="pt")


def test_tiny_llava_layout_and_size():
    model, processor = build_tiny_llava(build_tokenizer(TEXTS), PretrainConfig())
    names = {n for n, _ in model.named_modules()}
    # transformers 5.x layout (CONTRIBUTING.md): model.model.{vision_tower, multi_modal_projector, language_model}
    for part in ("model.vision_tower", "model.multi_modal_projector", "model.language_model", "lm_head"):
        assert part in names
    assert processor.tokenizer.padding_side == "left"
    enc = _inputs(processor)
    assert int((enc["input_ids"] == model.config.image_token_index).sum()) == 16


def test_save_and_load_through_auto_classes_is_exact(tmp_path):
    model, processor = build_tiny_llava(build_tokenizer(TEXTS), PretrainConfig(), seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    # the same function a user's local checkpoint folder or hub id goes through
    loaded, proc2 = load_model(str(tmp_path / "ckpt"))
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    enc, enc2 = _inputs(processor), _inputs(proc2)
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    with torch.no_grad():
        a = model.eval()(**enc).logits
        b = loaded(**enc2).logits
    assert torch.equal(a, b)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load model .*not a local checkpoint folder"):
        load_checkpoint(tmp_path / "does-not-exist")


def test_pretraining_is_cached_with_a_record(smoke_params, smoke_world, smoke_model_dir):
    from mllm_study.models import pretrain_tiny_llava, tiny_llava_dir

    record = json.loads((smoke_model_dir / "pretrain_record.json").read_text())
    assert record["stages"]["stage1_align"]["steps"] == smoke_params.pretrain.stage1_steps
    assert record["stages"]["stage2_instruct"]["families"] == ["okvqa", "ocrvqa", "vqav2", "align"]
    from mllm_study.models import CHECK_FAMILIES

    assert set(record["image_use_check"]) == set(CHECK_FAMILIES)  # every column and POPE, image vs blank
    # the record holds what evaluating the saved model gives: recomputed exactly for three families (a choice
    # letter, a caption metric and POPE), with the real images and with blank ones
    from mllm_study.models import image_use_check, load_checkpoint

    model, processor = load_checkpoint(smoke_model_dir)
    model.eval()
    families = ("sqa", "flickr30k", "pope")
    again = image_use_check(model, processor, smoke_world, smoke_params.pretrain.eval_size, progress=False,
                            families=families)
    assert again == {fam: record["image_use_check"][fam] for fam in families}
    assert {res["metric"] for res in again.values()} == {"mc_accuracy", "cider", "pope"}
    # and "blank" is the blank-image score: the captions with blank images, scored on their own, give it (and
    # differ from those with the images: measured CIDEr 0.16 with the images, 0.24 blank)
    from mllm_study.data import load_dataset_info, load_split
    from mllm_study.evaluate import evaluate_records

    folder = smoke_world / "flickr30k"
    captions = load_split(folder, "test")[:smoke_params.pretrain.eval_size]
    blank = evaluate_records(model, processor, captions, "cider", load_dataset_info(folder).get("max_new_tokens", 8),
                             blank_images=True, progress=False).value
    assert again["flickr30k"]["blank"] == blank != again["flickr30k"]["image"]
    # second call: same folder, nothing retrained
    mtime = (smoke_model_dir / "model.safetensors").stat().st_mtime_ns
    assert pretrain_tiny_llava(smoke_params, smoke_world, progress=False) == smoke_model_dir
    assert (smoke_model_dir / "model.safetensors").stat().st_mtime_ns == mtime
    # the cache key follows the recipe
    from dataclasses import replace

    other = replace(smoke_params, pretrain=replace(smoke_params.pretrain, lr=5e-4))
    assert tiny_llava_dir(other, smoke_world) != smoke_model_dir


@pytest.mark.slow  # pre-trains the smoke model again (make test-fast skips)
def test_pretraining_is_deterministic_and_keyed_by_its_code(smoke_params, smoke_world, smoke_model_dir, tmp_path,
                                                            monkeypatch):
    """Same recipe, machine and thread count: bit-identical weights; the key covers the world's and trainer's code."""
    import hashlib
    from dataclasses import replace

    import mllm_study
    from mllm_study import models

    again = replace(smoke_params, paths=replace(smoke_params.paths, cache=str(tmp_path / "cache")))
    world = models.ensure_world(again, progress=False)
    assert models.tiny_llava_dir(again, world).name == smoke_model_dir.name
    second = models.pretrain_tiny_llava(again, world, progress=False)
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() for d in (smoke_model_dir, second)]
    assert digest[0] == digest[1]
    # a change to the code of the training loop or to the vocabulary changes the recipe key
    root = Path(mllm_study.__file__).parent
    read = Path.read_bytes
    for changed in (root / "train.py", root / "data.py", models.VOCABULARY_FILE):
        monkeypatch.setattr(Path, "read_bytes", lambda self, c=changed: read(self) + (b"#" if self == c else b""))
        assert models.tiny_llava_dir(again, world).name != smoke_model_dir.name, changed
        monkeypatch.setattr(Path, "read_bytes", read)


def _world_with_manifest(world: Path, tmp_path: Path, edit) -> Path:
    """A world folder whose manifest is ``world``'s edited by ``edit`` (the recipe key reads only the manifest)."""
    out = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    manifest = json.loads((world / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_the_recipe_key_follows_the_pretraining_data_not_the_unseen_families(smoke_params, smoke_world, tmp_path):
    """Pre-training reads the pretrain splits of align and the seen families and the committed vocabulary: a change
    to any of them is a new base model; a changed unseen family (its prompts, its answers) keeps it."""
    from mllm_study import models

    key = models.tiny_llava_dir(smoke_params, smoke_world).name

    def changed(split):
        def edit(m):
            m["split_fingerprints"][split] = "0" * 64
            m["fingerprint"] = "1" * 64
        return models.tiny_llava_dir(smoke_params, _world_with_manifest(smoke_world, tmp_path, edit)).name

    for unseen in ("sqa/train", "sqa/test", "iconqa_txt/test", "flickr30k/train", "pope/random", "vqav2/test"):
        assert changed(unseen) == key, unseen
    for read in ("align/pretrain", "okvqa/pretrain", "ocrvqa/pretrain", "vqav2/pretrain"):
        assert changed(read) != key, read
    # the formats split enters exactly when stage 3 trains on it (pretrain.format_steps > 0)
    for steps in (0, 5):
        params = dataclasses.replace(smoke_params, pretrain=dataclasses.replace(smoke_params.pretrain,
                                                                                 format_steps=steps))
        base = models.tiny_llava_dir(params, smoke_world).name
        edited = _world_with_manifest(smoke_world, tmp_path, lambda m: m["split_fingerprints"].update(
            {"vqav2/formats": "0" * 64}))
        assert (models.tiny_llava_dir(params, edited).name != base) == (steps > 0), steps
    old = _world_with_manifest(smoke_world, tmp_path, lambda m: m.pop("split_fingerprints"))
    with pytest.raises(ValueError, match="no fingerprint of align/pretrain"):
        models.tiny_llava_dir(smoke_params, old)


def test_stage3_replays_stage2_records_up_to_its_share(smoke_params, smoke_world):
    """``pretrain.format_replay_share``: stage 3 trains on the formats split plus stage 2's own records (the pretrain
    split, native formats), interleaved over the families, replayed records making up that share of the stage."""
    from mllm_study import models
    from mllm_study.data import load_split

    families = ["align", *models.SEEN_FAMILIES]
    formats, fams = models.stage_records("stage3_formats", families,
                                         dataclasses.replace(smoke_params.pretrain, format_replay_share=0.0),
                                         smoke_world)
    assert fams == families and formats
    replayed, _ = models.stage_records("stage3_formats", families,
                                       dataclasses.replace(smoke_params.pretrain, format_replay_share=0.5),
                                       smoke_world)
    assert replayed[:len(formats)] == formats
    extra = replayed[len(formats):]
    pretrain = {json.dumps(r, sort_keys=True) for f in families for r in load_split(smoke_world / f, "pretrain")}
    assert len(extra) == min(len(formats), len(pretrain)) and extra
    assert all(json.dumps(r, sort_keys=True) in pretrain for r in extra)
    assert len({r["id"].split("-")[0] for r in extra[:len(families)]}) == len(families)  # interleaved


def test_the_committed_vocabulary_gives_the_ids_the_world_text_gave(smoke_world):
    """The tokenizer over the committed vocabulary encodes like one trained on the text it was measured from, and
    covers every word of the world (an unknown word would be read as <unk> by the tiny model)."""
    from mllm_study import models

    tok = models.world_tokenizer()
    texts = models.world_corpus(smoke_world)
    backend, vocab = tok.backend_tokenizer, tok.get_vocab()
    unknown = sorted({w for t in texts for w, _ in backend.pre_tokenizer.pre_tokenize_str(t.lower()) if w not in vocab})
    assert not unknown, f"words outside {models.VOCABULARY_FILE.name}: {unknown[:10]}"
    trained = build_tokenizer(texts)
    shared = set(trained.get_vocab()) & set(tok.get_vocab())
    sample = [t for t in texts[::37]]
    same = [tok.convert_ids_to_tokens(tok(t)["input_ids"]) == trained.convert_ids_to_tokens(trained(t)["input_ids"])
            for t in sample]  # the same tokens (the ids differ: the smoke world's words have other frequencies)
    assert all(same) and len(same) > 10
    assert shared == set(trained.get_vocab())  # the smoke world's words are a subset
    with pytest.raises(ValueError, match="must start with"):
        models.world_tokenizer(["the", "<pad>"])


def test_a_case_sensitive_tokenizer_keeps_option_letters_apart_from_articles():
    texts = ["A. red , B. blue", "a red circle", "user : assistant :"]
    tok = build_tokenizer(texts, case_sensitive=True)
    assert tok.convert_tokens_to_ids("A") != tok.convert_tokens_to_ids("a")
    assert tok.decode(tok("A")["input_ids"], skip_special_tokens=True) == "A"
    lower = build_tokenizer(texts)  # the default: lowercased, one token for both
    assert lower("A")["input_ids"] == lower("a")["input_ids"]


@pytest.mark.parametrize("text_first", [False, True])
def test_the_chat_template_places_the_image_as_configured(text_first):
    _, processor = build_tiny_llava(build_tokenizer(TEXTS), PretrainConfig(image_after_text=text_first))
    messages = [{"role": "user",
                 "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    question_first = "user : what color is the circle ? <image> assistant : red </s>"
    image_first = "user : <image> what color is the circle ? assistant : red </s>"
    assert text.strip() == (question_first if text_first else image_first)


def test_per_sample_loss_weighs_every_record_equally():
    from mllm_study.train import _answer_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    labels = torch.full((2, 6), -100)
    labels[0, 1:6] = torch.tensor([1, 2, 3, 4, 0])  # a long answer (5 tokens)
    labels[1, 5] = 2  # a one-token answer
    ce = torch.nn.functional.cross_entropy
    per_record = [ce(logits[0, 0:5], labels[0, 1:6]), ce(logits[1, 4:5], labels[1, 5:6])]
    token_mean = ce(torch.cat([logits[0, 0:5], logits[1, 4:5]]), torch.cat([labels[0, 1:6], labels[1, 5:6]]))
    assert torch.allclose(_answer_loss(logits, labels, 6, "sample"), (per_record[0] + per_record[1]) / 2)
    assert torch.allclose(_answer_loss(logits, labels, 6, "token"), token_mean)
    assert not torch.allclose(token_mean, (per_record[0] + per_record[1]) / 2)


def test_stage0_targets_name_the_object_of_each_patch_cell():
    from mllm_study.models import _cell_targets
    from mllm_study.world.scenes import OBJECT_TYPES

    scene = {"objects": [{"shape": "circle", "color": "red", "center": [8, 8]},
                         {"shape": "cross", "color": "blue", "center": [24, 25]}]}
    got = _cell_targets(scene, 4)  # 4 x 4 patches of 8 px, 2 x 2 per 16 px cell, row-major
    red, blue = 1 + OBJECT_TYPES.index(("red", "circle")), 1 + OBJECT_TYPES.index(("blue", "cross"))
    assert got == [red, red, 0, 0, red, red, 0, 0, 0, 0, blue, blue, 0, 0, blue, blue]
