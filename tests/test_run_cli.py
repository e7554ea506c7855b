"""`mllm-study run` end to end on the smoke profile, and the command line's error messages."""

from __future__ import annotations

import json

import pytest

from mllm_study.cli import main


def _smoke_args(smoke_params):
    return ["--profile", "smoke", "--quiet", "--set", f"paths.cache={smoke_params.paths.cache}",
            "--set", f"paths.runs={smoke_params.paths.runs}"]


def test_lora_run_writes_a_complete_run_directory(smoke_params, smoke_model_dir, capsys):
    args = ["run", *_smoke_args(smoke_params), "--method", "lora", "--dataset", "iconqa_txt", "--connector", "tuned",
            "--method-params", "{r: 4, alpha: 8}", "--test-size", "16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    run_dir = out.strip().splitlines()[-1].split("run directory: ")[1]
    from pathlib import Path

    run_dir = Path(run_dir)
    for name in ("spec.json", "status.json", "metrics.json", "predictions.jsonl", "train_log.jsonl",
                 "adapter/adapter_config.json", "adapter/mllm_method.json"):
        assert (run_dir / name).exists(), name
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["run"]["method_params"] == {"r": 4, "alpha": 8, "dropout": 0.05}  # defaults merged in
    assert spec["run"]["connector"] == "tuned" and spec["base_model"].startswith("tiny-llava-")
    assert "vision" not in spec["run"] and "vision_lr" not in spec["run"]  # frozen: ids as before the option
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and metrics["n"] == 16 and 0.0 <= metrics["value"] <= 1.0
    assert [r["metric"] for r in metrics["results"]] == ["accuracy"] and metrics["results"][0]["split"] == "test"
    assert metrics["train"]["steps"] > 0 and metrics["train"]["trainable_params"] > 0
    items = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(items) == 16 and {"id", "prompt", "prediction", "references", "score"} <= set(items[0])
    assert sum(i["score"] for i in items) / 16 == pytest.approx(metrics["value"])
    adapter = json.loads((run_dir / "adapter/adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["multi_modal_projector"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    # the id is a hash of the resolved spec: the same command reuses the directory, another seed does not
    mtime = (run_dir / "metrics.json").stat().st_mtime_ns
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith(str(run_dir))
    assert (run_dir / "metrics.json").stat().st_mtime_ns == mtime
    assert main(args + ["--seed", "7"]) == 0
    assert not capsys.readouterr().out.strip().endswith(str(run_dir))


@pytest.mark.slow
def test_vision_tuned_run_trains_saves_and_reloads_the_vision_encoder(smoke_params, smoke_model_dir, capsys):
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from mllm_study.data import Collator, load_split
    from mllm_study.methods import VISION_FILE, load_method, vision_param_names
    from mllm_study.models import load_checkpoint
    from mllm_study.runs import resolve_dataset
    from mllm_study.train import forward_inputs

    args = ["run", *_smoke_args(smoke_params), "--method", "lora", "--dataset", "iconqa_txt", "--vision", "tuned",
            "--vision-lr", "1e-3", "--method-params", "{r: 4, alpha: 8}", "--test-size", "8"]
    assert main(args) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].split("run directory: ")[1])
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["run"]["vision"] == "tuned" and spec["run"]["vision_lr"] == 1e-3
    record = json.loads((run_dir / "adapter/mllm_method.json").read_text())
    assert record["vision"] == "tuned" and record["connector"] == "frozen"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    base, processor = load_checkpoint(smoke_model_dir)
    names = vision_param_names(base)
    # r * (in + out) per adapted linear (every linear of the LM's blocks) + the whole vision encoder
    lora = 4 * sum(m.in_features + m.out_features for n, m in base.named_modules()
                   if n.startswith("model.language_model.layers.") and isinstance(m, torch.nn.Linear))
    vision = sum(p.numel() for n, p in base.named_parameters() if n in set(names))
    assert vision > 0 and metrics["train"]["trainable_params"] == lora + vision
    saved = load_file(str(run_dir / "adapter" / VISION_FILE))
    assert set(saved) == set(names)
    own = dict(base.named_parameters())
    assert any(not torch.equal(saved[n], own[n]) for n in names)  # the vision encoder did train
    # reloading onto a fresh base restores the trained vision encoder: same logits as the saved weights give
    model = load_method(load_checkpoint(smoke_model_dir)[0], run_dir / "adapter")
    records = load_split(resolve_dataset("iconqa_txt", smoke_params, False), "test", 4, seed=0)
    batch = forward_inputs(model, Collator(processor, mode="generate")(records))
    loaded = dict(model.base_model.model.named_parameters())
    assert all(torch.equal(loaded[n], saved[n]) for n in names)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_none_method_evaluates_without_training(smoke_params, smoke_model_dir, capsys):
    assert main(["run", *_smoke_args(smoke_params), "--method", "none", "--dataset", "vqav2", "--test-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "vqav2 (vqa_score)" in out and "for 0 steps" in out


@pytest.mark.parametrize("args, message", [
    (["--dataset", "vqa2"], r"unknown dataset 'vqa2'.*Did you mean 'vqav2'"),
    (["--method", "lorra"], r"unknown method 'lorra'.*Did you mean 'lora'"),
    (["--set", "run.learning_rate=1"], r"unknown key 'run.learning_rate'"),
    (["--set", "run.batch_size=big"], r"'run.batch_size': expected int, got str 'big'"),
    (["--set", "run.connector=half"], r"run.connector must be 'frozen' or 'tuned'"),
    (["--set", "run.vision=half"], r"run.vision must be 'frozen' or 'tuned'"),
    (["--method", "none", "--vision", "tuned"], r"run.vision 'tuned' needs a method that trains"),
    (["--method-params", "{rank: 8}"], r"unknown parameter\(s\) \['rank'\] for method 'lora'"),
    (["--method-params", "[1, 2]"], r"--method-params must be a YAML mapping"),
    (["--train-size", "100000"], r"asked for 100000 records but the split has only"),
])
def test_run_errors_are_clear(smoke_params, smoke_model_dir, capsys, args, message):
    assert main(["run", *_smoke_args(smoke_params), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mllm-study run: error: ")
    import re

    assert re.search(message, err), err


def test_run_options_with_choices_list_them(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--connector", "half"])
    assert exc.value.code == 2
    assert "argument --connector: invalid choice: 'half'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--placement {attention,mlp,both}" in out and "PEFT method: lora, ia3" in out


def test_params_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "study.yaml"
    bad.write_text("run:\n  metod: lora\n")
    assert main(["run", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "study.yaml: unknown key 'run.metod'" in err and "Did you mean 'method'" in err


def test_argparse_rejects_unknown_option_and_type(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--epoch", "x"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["run", "--lr", "fast"])
    assert "invalid float value: 'fast'" in capsys.readouterr().err


@pytest.mark.slow
def test_world_command_is_deterministic(tmp_path, capsys):
    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    built = []
    for name in ("w", "again"):  # two runs into two folders: the same files, byte for byte
        assert main(["world", "--out", str(tmp_path / name), "--profile", "smoke", "--quiet"]) == 0
        assert "world written to" in capsys.readouterr().out
        built.append(files(tmp_path / name))
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["seed"] == 0
    assert "manifest.json" in built[0] and any(n.endswith(".png") for n in built[0])
    assert built[0].keys() == built[1].keys()
    assert [n for n in built[0] if built[0][n] != built[1][n]] == []


def test_params_paths_are_the_projects_from_any_directory_and_command_line_folders_the_shells(tmp_path, monkeypatch):
    """From another working directory a command reads the project's .cache and runs/ (not a fresh cache that would
    pre-train the base model again); folders typed on the command line are taken from the working directory."""
    from pathlib import Path

    from mllm_study import cli
    from mllm_study.config import PROJECT_ROOT

    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["validate", "--profile", "smoke"])
    params = cli._params(args)
    assert Path(params.paths.cache) == PROJECT_ROOT / ".cache" and Path(params.paths.runs) == PROJECT_ROOT / "runs"
    args = cli.build_parser().parse_args(["validate", "--profile", "smoke", "--set", "paths.runs=mine"])
    assert Path(cli._params(args).paths.runs) == tmp_path / "mine"
    (tmp_path / "my.yaml").write_text("paths: {runs: elsewhere}\n")
    args = cli.build_parser().parse_args(["sweep", "my.yaml"])  # the file from the working directory
    assert Path(cli._sweep_params(args).paths.runs) == PROJECT_ROOT / "elsewhere"
    assert main(["results", "--runs", "nothing-here"]) == 2
