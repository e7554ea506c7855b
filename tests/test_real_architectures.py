"""Real architectures at tiny size (mllm_study.fixtures): llava-hf LLaVA-1.5 (float16), Qwen2-VL (bfloat16) and
Idefics3/SmolVLM (bfloat16, image splitting), each with its real processor class, a BPE tokenizer carrying the real
special tokens and the hub chat template, run through ``mllm-study run --model <folder>``.

The matrix: every method x placement x connector (LoRA, IA3 and the bottleneck adapter at attention, MLP and both,
each with a frozen and a tuned connector; prefix tuning, which has no placement, with either connector; full
fine-tuning; and the zero-shot ``none``) on every architecture, in the checkpoint's dtype. Each run must finish (no
NaN), lower the training loss, change every trainable tensor, evaluate at batch > 1, and reload to the same
predictions (plain peft for peft formats to the same logits as the project's loader).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mllm_study.cli import main
from mllm_study.fixtures import ARCHITECTURES, build_checkpoint, build_dataset

pytestmark = pytest.mark.slow  # tiny random checkpoints of every real architecture x method (make test-fast skips)

END_OF_TURN = {"llava-1.5": "</s>", "qwen2-vl": "<|im_end|>", "idefics3": "<end_of_utterance>"}
DTYPE = {"llava-1.5": torch.float16, "qwen2-vl": torch.bfloat16, "idefics3": torch.bfloat16}
METHODS = ("lora", "ia3", "prefix", "adapter", "full")
PLACED = ("lora", "ia3", "adapter")  # the methods with a placement
#: (method, placement, connector): every combination the study's factors allow; full fine-tuning trains the
#: connector with everything else
COMBOS = ([(m, p, c) for m in PLACED for p in ("attention", "mlp", "both") for c in ("frozen", "tuned")]
          + [("prefix", None, c) for c in ("frozen", "tuned")] + [("full", None, "tuned")])


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    data = build_dataset(root / "data")
    models = {arch: build_checkpoint(arch, root / arch) for arch in ARCHITECTURES}
    return root, data, models


def _records(data: Path, split: str = "train"):
    from mllm_study.data import load_split

    return load_split(data, split)


def _supervised(collator, records):
    batch = collator(records)
    tok = collator.tokenizer
    return batch, [tok.convert_ids_to_tokens(row[lab != -100].tolist())
                   for row, lab in zip(batch["input_ids"], batch["labels"])]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_labels_are_the_answer_and_the_end_of_turn_token(fixtures, arch):
    from mllm_study.data import Collator, DataError
    from mllm_study.models import load_checkpoint

    _, data, models = fixtures
    model, processor = load_checkpoint(models[arch])
    assert model.dtype == DTYPE[arch]  # the checkpoint's own precision (transformers 5 loads dtype "auto")
    records = _records(data)[:4]
    collator = Collator(processor, cache=False)
    assert collator.end_of_turn == END_OF_TURN[arch]
    batch, supervised = _supervised(collator, records)
    for rec, toks in zip(records, supervised):
        answer = rec["conversations"][1]["value"]
        assert toks[-1] == END_OF_TURN[arch]
        assert processor.tokenizer.convert_tokens_to_string(toks[:-1]).strip() == answer
    if arch == "idefics3":  # image splitting: 2x2 tiles + the global image, each with its own markers
        assert batch["pixel_values"].shape[1] == 5
    # the check itself: labels off by one token are an error naming the record and both token lists
    ids = batch["input_ids"][0][batch["labels"][0] != -100]
    shifted = batch["input_ids"][0][(batch["labels"][0] != -100).roll(-1)]
    collator._check_answer(records[0], ids, records[0]["conversations"][1]["value"])
    with pytest.raises(DataError, match=rf"record {records[0]['id']}: .*labels .* vs expected"):
        collator._check_answer(records[0], shifted, records[0]["conversations"][1]["value"])


def test_llava_template_trailing_space_would_never_teach_stopping(fixtures):
    """The hub template renders ``ASSISTANT: answer `` (no ``</s>``): without the appended end of turn the check
    fails, naming the record; with it the answer ends with ``</s>`` as in LLaVA's own training format."""
    from mllm_study.data import Collator, DataError
    from mllm_study.models import load_checkpoint

    _, data, models = fixtures
    _, processor = load_checkpoint(models["llava-1.5"])
    records = _records(data)[:2]
    collator = Collator(processor, cache=False)
    assert collator.append_end
    collator.append_end = False
    with pytest.raises(DataError, match=f"record {records[0]['id']}"):
        collator(records)


def test_qwen2_vl_batches_pad_per_token_inputs(fixtures):
    from mllm_study.data import Collator
    from mllm_study.models import load_checkpoint

    _, data, models = fixtures
    model, processor = load_checkpoint(models["qwen2-vl"])
    records = _records(data)[:3]
    records[1] = {**records[1], "conversations": [records[1]["conversations"][0],
                                                  {"from": "gpt", "value": "a red and round shape"}]}
    batch = Collator(processor, cache=False)(records)
    assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape
    assert (batch["mm_token_type_ids"][batch["attention_mask"] == 0] == 0).all()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def _run(fixtures, arch, method, tmp_path, capsys, placement=None, connector=None):
    root, data, models = fixtures
    if connector is None:
        connector = "tuned" if method in ("adapter", "lora") else "frozen"
    args = ["run", "--profile", "smoke", "--quiet", "--model", str(models[arch]), "--dataset", str(data),
            "--method", method, "--connector", connector, *(["--placement", placement] if placement else []),
            "--epochs", "4", "--batch-size", "4", "--set", "run.eval_batch_size=4",
            "--set", f"paths.runs={tmp_path / 'runs'}", "--set", f"paths.cache={root / 'cache'}"]
    assert main(args) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1].split("run directory: ")[1])


def _logits(model, processor, records):
    from mllm_study.data import Collator
    from mllm_study.train import forward_inputs, precision_context

    batch = Collator(processor, cache=False)(records)
    batch.pop("labels")
    with torch.no_grad(), precision_context(model):
        return model(**forward_inputs(model, batch)).logits.float()


#: the connector's module name in each architecture (transformers 5)
CONNECTOR = {"llava-1.5": "multi_modal_projector", "qwen2-vl": "visual.merger", "idefics3": "connector"}


def _check_placement(arch, method, placement, connector, names):
    """The trainable tensors sit where the placement and connector say: attention only, MLP only, or both."""
    in_connector = [n for n in names if CONNECTOR[arch] in n]
    assert bool(in_connector) == (connector == "tuned"), (connector, in_connector[:3])
    if placement is None:
        return
    attn = [n for n in names if "self_attn" in n and CONNECTOR[arch] not in n]
    mlp = [n for n in names if ".mlp." in n and CONNECTOR[arch] not in n]
    assert bool(attn) == (placement in ("attention", "both")), (placement, attn[:3])
    assert bool(mlp) == (placement in ("mlp", "both")), (placement, mlp[:3])


@pytest.mark.parametrize("method,placement,connector", COMBOS,
                         ids=[f"{m}-{p or 'none'}-{c}" for m, p, c in COMBOS])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_method_matrix_trains_in_the_checkpoint_dtype(fixtures, arch, method, placement, connector, tmp_path, capsys):
    from mllm_study.evaluate import evaluate_loss, generate_predictions
    from mllm_study.methods.registry import apply_method, load_method
    from mllm_study.models import load_checkpoint
    from mllm_study.train import set_seed

    _, data, models = fixtures
    run_dir = _run(fixtures, arch, method, tmp_path, capsys, placement, connector)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "done", status.get("reason")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["train"]["steps"] == 16
    train, test = _records(data), _records(data, "test")

    base, processor = load_checkpoint(models[arch])
    loss_before = evaluate_loss(base, processor, train, 8)
    spec = json.loads((run_dir / "spec.json").read_text())["run"]
    set_seed(spec["seed"])
    initial = apply_method(load_checkpoint(models[arch])[0], method, spec["method_params"], spec["placement"],
                           spec["connector"])
    trainable = {n: p.detach().float().clone() for n, p in initial.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in initial.parameters() if p.requires_grad)
    assert spec["connector"] == connector and placement in (None, spec["placement"])
    _check_placement(arch, method, placement, connector, list(trainable))
    if method != "full":  # the frozen base stays in the checkpoint's dtype
        assert any(p.dtype == DTYPE[arch] for p in initial.parameters() if not p.requires_grad)

    reloaded = load_method(base, run_dir / "adapter")
    state = dict(reloaded.named_parameters())
    unchanged = [n for n, p in trainable.items() if torch.equal(state[n].detach().float(), p)]
    assert not unchanged, f"{len(unchanged)} of {len(trainable)} trainable tensors never changed: {unchanged[:5]}"
    assert all(torch.isfinite(p).all() for p in state.values())
    assert evaluate_loss(reloaded, processor, train, 8) < loss_before  # the loss fell

    # evaluation ran at batch 4; the reloaded model predicts exactly what the run recorded
    items = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in test}
    again = generate_predictions(reloaded, processor, [by_id[i["id"]] for i in items], 4, batch_size=4,
                                 progress=False)
    assert again == [i["prediction"] for i in items]
    if method in ("lora", "ia3", "prefix"):  # a plain peft folder: peft alone reloads it to the same logits
        from peft import PeftModel

        plain = PeftModel.from_pretrained(load_checkpoint(models[arch])[0], str(run_dir / "adapter"))
        ours, theirs = _logits(reloaded, processor, test[:3]), _logits(plain, processor, test[:3])
        if spec["connector"] == "frozen":
            assert torch.equal(ours, theirs)
        else:  # plain peft rounds the saved fp32 connector to the base's dtype; the project's loader keeps fp32
            assert torch.allclose(ours, theirs, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zero_shot_evaluates_the_checkpoint(fixtures, arch, tmp_path, capsys):
    run_dir = _run(fixtures, arch, "none", tmp_path, capsys)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["train"]["steps"] == 0
    assert metrics["train"]["peak_memory_mb"] > 0 and metrics["train"]["peak_memory_kind"] == "cpu_rss"


@pytest.mark.parametrize("arch,method", [("llava-1.5", "lora"), ("llava-1.5", "adapter"), ("qwen2-vl", "lora"),
                                         ("idefics3", "ia3"), ("idefics3", "full")])
def test_gradient_checkpointing_gives_the_same_training(fixtures, arch, method, tmp_path, capsys):
    root, data, models = fixtures
    losses = []
    for flag in ("false", "true"):
        args = ["run", "--profile", "smoke", "--quiet", "--model", str(models[arch]), "--dataset", str(data),
                "--method", method, "--epochs", "1", "--batch-size", "4", "--set", "run.eval_batch_size=4",
                "--set", f"run.gradient_checkpointing={flag}", "--set", f"paths.runs={tmp_path / flag}",
                "--set", f"paths.cache={root / 'cache'}"]
        assert main(args) == 0
        run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].split("run directory: ")[1])
        train = json.loads((run_dir / "metrics.json").read_text())["train"]
        spec = json.loads((run_dir / "spec.json").read_text())["run"]
        assert ("gradient_checkpointing" in spec) == (flag == "true")  # enters the id only when on
        assert train["tokens"] > 0 and train["tokens_per_second"] > 0 and train["peak_memory_mb"] > 0
        assert train.get("gradient_checkpointing") == ("on" if flag == "true" else None)
        losses.append(train["final_loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_gradient_checkpointing_with_prefix_tuning(fixtures, tmp_path, capsys):
    """The API refuses it with a message; a run (real profiles turn it on for every method) trains without it and
    records why."""
    from mllm_study.methods.registry import apply_method
    from mllm_study.models import load_checkpoint
    from mllm_study.train import enable_gradient_checkpointing

    root, data, models = fixtures
    prefixed = apply_method(load_checkpoint(models["llava-1.5"])[0], "prefix", {"num_virtual_tokens": 4})
    with pytest.raises(ValueError, match="does not work with prefix tuning"):
        enable_gradient_checkpointing(prefixed)
    args = ["run", "--profile", "smoke", "--quiet", "--model", str(models["llava-1.5"]), "--dataset", str(data),
            "--method", "prefix", "--epochs", "1", "--set", "run.gradient_checkpointing=true",
            "--set", f"paths.runs={tmp_path}", "--set", f"paths.cache={root / 'cache'}"]
    with pytest.warns(UserWarning, match="gradient_checkpointing ignored"):
        assert main(args) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].split("run directory: ")[1])
    train = json.loads((run_dir / "metrics.json").read_text())["train"]
    assert train["gradient_checkpointing"].startswith("off: prefix tuning")


def test_run_identity_covers_the_checkpoint_and_precision(fixtures, tmp_path):
    import shutil

    from mllm_study.config import load_params
    from mllm_study.models import load_checkpoint
    from mllm_study.runs import resolve_spec, run_id

    root, data, models = fixtures
    copy = tmp_path / "llava-copy"
    shutil.copytree(models["llava-1.5"], copy)

    def rid(model, **extra):
        overrides = {"run.model": str(model), "run.dataset": str(data), "paths.cache": str(root / "cache"),
                     "paths.runs": str(tmp_path / "runs"), **extra}
        spec = resolve_spec(load_params(profile="smoke", overrides=overrides), progress=False)
        return run_id(spec), spec

    first, spec = rid(copy)
    assert "precision" not in spec["run"] and spec["base_model"]["fingerprint"]
    assert rid(copy)[0] == first
    assert rid(copy, **{"run.precision": "fp32"})[0] != first
    assert rid(copy, **{"run.eval_batch_sizes": {"shapes": 2}})[0] == first  # evaluation batch: not identity
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(config))
    assert rid(copy)[0] != first  # same folder, other checkpoint: a new id
    assert load_checkpoint(copy, precision="fp32")[0].dtype == torch.float32


def test_qwen2_vl_pixel_bounds_reach_the_processor(fixtures):
    from mllm_study.data import Collator
    from mllm_study.models import load_checkpoint

    _, data, models = fixtures
    records = _records(data)[:1]
    default = Collator(load_checkpoint(models["qwen2-vl"])[1], cache=False)(records)
    large = Collator(load_checkpoint(models["qwen2-vl"], min_pixels=112 * 112, max_pixels=112 * 112)[1],
                     cache=False)(records)
    assert large["input_ids"].shape[1] > default["input_ids"].shape[1]  # more image tokens
    with pytest.raises(ValueError, match="min_pixels / run.max_pixels"):
        load_checkpoint(models["llava-1.5"], max_pixels=28 * 28)


def test_params_command_takes_a_checkpoint_folder(fixtures, capsys):
    from mllm_study.accounting import main_params

    _, _, models = fixtures
    assert main_params(["--model", str(models["qwen2-vl"]), "--methods", "lora", "--connector", "tuned"]) == 0
    assert "lora" in capsys.readouterr().out
    assert main_params(["--model", str(models["qwen2-vl"].parent), "--methods", "lora"]) == 2
    assert "folder without config.json" in capsys.readouterr().err


def test_sweep_status_lists_every_missing_dataset_folder(tmp_path, capsys, monkeypatch):
    from mllm_study.cli import main as cli

    monkeypatch.chdir(tmp_path)  # the paper profile's data/ folders are relative: none exist here
    params = Path(__file__).resolve().parents[1] / "params" / "rq1_main.yaml"
    assert cli(["sweep", str(params), "--profile", "paper-llava-1.5-7b", "--status", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "9 dataset folder(s) missing" in out
    for name in ("scienceqa", "vizwiz", "iconqa_txt", "iconqa_blank", "flickr30k", "okvqa", "ocrvqa", "vqav2",
                 "pope"):
        assert f"mllm-study data convert {name} --src" in out


def test_gpu_check_benchmark_runs_tiny_on_cpu(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--tiny", "--methods", "lora,prefix,full", "--steps", "2", "--warmup", "1", "--gen-batch", "2",
                       "--gen-tokens", "2", "--text-len", "8", "--out", str(tmp_path / "rows.json")])
    assert [r["method"] for r in rows] == ["lora", "prefix", "full"]
    for r in rows:
        assert r["tokens_per_second"] > 0 and r["peak_memory_mb"] > 0 and r["tflops_per_second"] > 0
        assert r["generate_batched_s"] > 0 and r["generate_one_at_a_time_s"] > 0
        assert torch.isfinite(torch.tensor(r["final_loss"]))
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    assert "tok/s" in capsys.readouterr().out
    assert bench.main([]) == [] or torch.cuda.is_available()  # no GPU: the 7B shapes are refused with a message


def test_ddp_on_two_processes_trains_like_one_process_with_accumulation(fixtures, tmp_path, capsys):
    """Two gloo processes of batch 4 average their gradients as one process does over 2 accumulated batches of 4
    (the same records in the same order): the trained weights agree. The fixture is Qwen2-VL, whose positions need
    the config read through the DDP wrapper."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    root, data, models = fixtures
    common = ["--profile", "smoke", "--quiet", "--model", str(models["qwen2-vl"]), "--dataset", str(data),
              "--method", "lora", "--epochs", "1", "--batch-size", "4", "--set", "run.eval_batch_size=4",
              "--method-params", "{dropout: 0.0}", "--set", "run.precision=fp32",
              "--set", "run.min_pixels=12544", "--set", "run.max_pixels=12544",  # 4x4 image tokens: 3-D positions
              "--set", f"paths.cache={root / 'cache'}"]
    assert main(["run", *common, "--grad-accum", "2", "--set", f"paths.runs={tmp_path / 'one'}"]) == 0
    one = Path(capsys.readouterr().out.strip().splitlines()[-1].split("run directory: ")[1])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "MLLM_STUDY_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mllm_study", "run",
           *common, "--set", f"paths.runs={tmp_path / 'two'}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (two,) = [d for d in (tmp_path / "two").iterdir() if not d.name.startswith(".")]
    steps = [json.loads((d / "metrics.json").read_text())["train"]["steps"] for d in (one, two)]
    assert steps == [2, 2]
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (one, two))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-3), k


def test_evaluation_is_greedy_whatever_the_generation_config_says(fixtures, monkeypatch):
    """The Qwen2-VL fixture's generation config samples with a repetition penalty of 1.05 (as the hub's): the
    evaluation overrides both, so its answers equal those of a model whose config has neither."""
    from mllm_study.evaluate import generate_predictions
    from mllm_study.models import load_checkpoint

    _, data, models = fixtures
    model, processor = load_checkpoint(models["qwen2-vl"])
    assert model.generation_config.repetition_penalty == 1.05 and model.generation_config.do_sample
    records = _records(data, "test")[:4]
    seen = []
    original = type(model).generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", spy)
    penalised = generate_predictions(model, processor, records, 6, batch_size=4, progress=False)
    assert seen and all(k["repetition_penalty"] == 1.0 and k["do_sample"] is False for k in seen)
    model.generation_config.update(repetition_penalty=1.0, do_sample=False, temperature=None, top_k=None, top_p=None)
    assert generate_predictions(model, processor, records, 6, batch_size=4, progress=False) == penalised


def test_is_sharded_names_fsdp_and_zero3_only():
    from types import SimpleNamespace

    from mllm_study.train import is_sharded

    def acc(kind, stage=None):
        state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage) if stage is not None else None)
        return SimpleNamespace(distributed_type=f"DistributedType.{kind}", state=state)

    assert is_sharded(acc("FSDP"))
    assert is_sharded(acc("DEEPSPEED", 3))
    assert not is_sharded(acc("DEEPSPEED", 2))
    assert not is_sharded(acc("MULTI_GPU")) and not is_sharded(acc("MULTI_CPU")) and not is_sharded(acc("NO"))


@pytest.mark.parametrize("method,connector", [("lora", "tuned"), ("adapter", "frozen")])
def test_sharded_training_evaluates_a_whole_copy_with_the_gathered_weights(fixtures, method, connector, tmp_path,
                                                                            capsys, monkeypatch):
    """FSDP and ZeRO-3 cannot run on this CPU machine (accelerate: FSDP v1 "no available devices found, must be
    one of 'XPU', 'CUDA', ..."; with ``cpu=True`` it falls back to plain multi-CPU DDP). What the executor does
    around them is tested in one process: the loop gathers the state (``acc.get_state_dict``, the whole state dict
    here), the main process loads its trainable tensors into a fresh copy of base + method and evaluates and saves
    that. Same seed, same records: the same predictions and the same saved weights as the unsharded run."""
    import mllm_study.train as train_module
    from safetensors.torch import load_file

    plain = _run(fixtures, "llava-1.5", method, tmp_path / "plain", capsys, connector=connector)
    gathered = []
    original = train_module.TrainResult

    def recording(*a, **k):  # the loop's result, with the gathered state kept for the assertion below
        gathered.append(k.get("full_state"))
        return original(*a, **k)

    monkeypatch.setattr(train_module, "is_sharded", lambda acc: True)
    monkeypatch.setattr(train_module, "TrainResult", recording)
    sharded = _run(fixtures, "llava-1.5", method, tmp_path / "sharded", capsys, connector=connector)
    assert gathered and gathered[0], "the loop did not gather a state dict"
    metrics = json.loads((sharded / "metrics.json").read_text())
    assert metrics["train"]["sharded"] == "NO"  # the (single-process) accelerator's own kind, recorded
    preds = [(sharded / "predictions.jsonl").read_text(), (plain / "predictions.jsonl").read_text()]
    assert preds[0] == preds[1]
    ours, theirs = (load_file(str(next((d / "adapter").glob("*.safetensors")))) for d in (sharded, plain))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_unsharded_copy_names_the_tensors_a_gathered_state_lacks(fixtures, tmp_path):
    from mllm_study.config import load_params
    from mllm_study.errors import RunError
    from mllm_study.runs import _unsharded

    root, data, models = fixtures
    params = load_params(profile="smoke", overrides={
        "run.model": str(models["llava-1.5"]), "run.dataset": str(data), "run.method": "lora",
        "paths.cache": str(root / "cache"), "paths.runs": str(tmp_path / "runs")})
    with pytest.raises(RunError, match="lacks .* trainable tensors"):
        _unsharded(params, {"unrelated.weight": torch.zeros(1)}, "cpu")


def test_sharded_training_refuses_per_epoch_evaluation(fixtures, tmp_path, capsys, monkeypatch):
    import mllm_study.train as train_module

    root, data, models = fixtures
    monkeypatch.setattr(train_module, "is_sharded", lambda acc: True)
    args = ["run", "--profile", "smoke", "--quiet", "--model", str(models["llava-1.5"]), "--dataset", str(data),
            "--method", "lora", "--epochs", "1", "--set", "run.eval_every_epoch=true",
            "--set", f"paths.runs={tmp_path / 'runs'}", "--set", f"paths.cache={root / 'cache'}"]
    assert main(args) != 0
    assert "eval_every_epoch is not supported with sharded parameters" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any(p for p in (tmp_path / "runs").iterdir()
                                                        if not p.name.startswith("."))


def test_attention_auto_is_flash_attention_only_with_flash_attn_and_a_gpu(fixtures, tmp_path, capsys, monkeypatch):
    """``run.attn_implementation: auto`` (the paper profiles'): flash_attention_2 needs the flash_attn package and a
    CUDA GPU, else sdpa; the run records what it became."""
    import importlib.util

    from mllm_study.models import resolve_attn_implementation

    real_find_spec = importlib.util.find_spec
    for cuda, installed, expected in ((False, False, "sdpa"), (False, True, "sdpa"), (True, False, "sdpa"),
                                      (True, True, "flash_attention_2")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda c=cuda: c)
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, i=installed: object() if name == "flash_attn" and i
                            else (None if name == "flash_attn" else real_find_spec(name, *a)))
        assert resolve_attn_implementation("auto") == expected
    monkeypatch.undo()
    assert resolve_attn_implementation("eager") == "eager" and resolve_attn_implementation(None) is None

    root, data, models = fixtures
    args = ["run", "--profile", "smoke", "--quiet", "--model", str(models["llava-1.5"]), "--dataset", str(data),
            "--method", "ia3", "--epochs", "1", "--set", "run.attn_implementation=auto",
            "--set", f"paths.runs={tmp_path / 'runs'}", "--set", f"paths.cache={root / 'cache'}"]
    assert main(args) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].split("run directory: ")[1])
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["attn_implementation"] == "sdpa"
