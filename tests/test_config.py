"""Params loading: merge order, typed validation and the error messages users see."""

from __future__ import annotations

import pytest

from mllm_study.config import ConfigError, load_params, parse_override


def test_profile_merges_over_defaults():
    p = load_params(profile="smoke")
    assert p.world.profile == "smoke"  # from smoke.yaml
    assert p.pretrain.stage1_steps == 30  # smoke.yaml overrides defaults.yaml (1500)
    assert p.run.method == "lora"  # defaults.yaml
    assert p.run.epochs == 1.0 and isinstance(p.run.epochs, float)  # int in YAML, float field


def test_user_file_and_overrides_win(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("profile: smoke\nrun:\n  lr: 1.0e-4\n  dataset: vqav2\n")
    p = load_params(f, overrides={"run.lr": 5e-5})
    assert p.world.profile == "smoke"
    assert p.run.dataset == "vqav2"
    assert p.run.lr == 5e-5
    assert p.sources[-1] == "command line"


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("run:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'run.learning_rate'.*Known keys"):
        load_params(f)
    f.write_text("run:\n  metod: lora\n")
    with pytest.raises(ConfigError, match=r"Did you mean 'method'"):
        load_params(f)


def test_unknown_section(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("trainer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown section 'trainer'"):
        load_params(f)


def test_wrong_type_names_key_and_types(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("run:\n  batch_size: sixteen\n")
    with pytest.raises(ConfigError, match=r"'run.batch_size': expected int, got str 'sixteen'"):
        load_params(f)
    f.write_text("run:\n  batch_size: true\n")
    with pytest.raises(ConfigError, match=r"expected int, got bool"):
        load_params(f)


def test_bad_value_and_malformed_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("run:\n  connector: half\n")
    with pytest.raises(ConfigError, match=r"run.connector must be 'frozen' or 'tuned'"):
        load_params(f)
    f.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML"):
        load_params(f)


def test_unknown_profile_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown profile 'quik'.*Did you mean 'quick'"):
        load_params(profile="quik")
    with pytest.raises(ConfigError, match=r"params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_parse_override():
    assert parse_override("run.lr=1e-4") == ("run.lr", 1e-4)  # a float as YAML 1.2 reads it (PyYAML: a string)
    assert load_params(profile="smoke", overrides=dict([parse_override("run.lr=1e-4")])).run.lr == 1e-4
    assert parse_override("run.method_params={r: 8}") == ("run.method_params", {"r": 8})
    assert parse_override("run.method_params={dropout: 5E-2, names: [a, 1e3]}") == (
        "run.method_params", {"dropout": 0.05, "names": ["a", 1000.0]})
    assert parse_override("run.dataset=2e5b") == ("run.dataset", "2e5b")  # not a number: stays a string


def test_nested_override_sets_one_key_inside_a_mapping():
    presets = load_params(profile="quick").run.method_presets
    p = load_params(profile="quick", overrides=dict([parse_override("run.method_presets.ia3.lr=1e-1"),
                                                     parse_override("run.method_presets.lora.r=8")]))
    assert p.run.method_presets["ia3"]["lr"] == 0.1 and p.run.method_presets["lora"]["r"] == 8
    assert p.run.method_presets["lora"]["lr"] == presets["lora"]["lr"]  # the rest of the mapping is kept
    assert p.run.method_presets["prefix"] == presets["prefix"]
    assert load_params(profile="quick").run.method_presets == presets  # the layers themselves are not changed
    for text, message in [("run.lr.x=1", r"'run.lr' is not a mapping"),
                          ("run.method_presets.lora.lr.x=1", r"'run.method_presets.lora.lr' is 0.003, not a mapping"),
                          ("run.nokey.a=1", r"unknown key 'run.nokey'"),
                          ("nosection.a.b=1", r"unknown section 'nosection'")]:
        with pytest.raises(ConfigError, match=message):
            load_params(profile="quick", overrides=dict([parse_override(text)]))
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("lr=3")


@pytest.mark.parametrize("text, message", [
    ("_profils:\n  quick: {run: {epochs: 1}}\n", r"unknown block '_profils'.*Did you mean '_profiles'"),
    ("_profiles:\n  quick: {run: {metod: lora}}\n", r"_profiles\.quick\.run\.metod.*unknown key 'run\.metod'"),
    ("_profiles:\n  quick: {run: {epochs: many}}\n", r"_profiles\.quick\.run\.epochs: expected float"),
    ("_profiles:\n  quik: {run: {epochs: 1}}\n", r"_profiles\.quik: unknown profile.*Did you mean 'quick'"),
    ("_profiles:\n  quick: {runs: {epochs: 1}}\n", r"_profiles\.quick: unknown key 'runs'.*Did you mean 'run'"),
    ("_report:\n  nctx: 64\n", r"unknown key '_report\.nctx'.*Did you mean 'n_ctx'"),
    ("_datasets:\n  vqav2: [a, b]\n", r"_datasets\.vqav2 must be a folder path"),
])
def test_study_blocks_are_typed_and_errors_name_the_file(tmp_path, text, message):
    f = tmp_path / "rq_mine.yaml"
    f.write_text("profile: smoke\n" + text)
    with pytest.raises(ConfigError, match=message) as exc:
        load_params(f)
    assert str(f) in str(exc.value)


def test_a_notebook_reports_parameters_it_does_not_know():
    from mllm_study.notebook import check_parameters, injected_parameters

    own = '# Parameters (papermill injects the study\'s values after this cell)\nprofile = "smoke"\ntrain = False\n'
    injected = '# Parameters\nprofile = "quick"\ntrian = True\n'
    assert injected_parameters([own]) is None
    assert injected_parameters([own, injected]) == ["profile", "trian"]
    check_parameters(["profile", "train"], [own])  # opened in JupyterLab: nothing injected, nothing to report
    with pytest.raises(ValueError, match=r"unknown notebook parameter\(s\) 'trian' \(did you mean 'train'\?\)"):
        check_parameters(["profile", "train"], [own, injected])


def test_paths_a_notebook_passes_are_taken_from_the_project_root(tmp_path, monkeypatch):
    """A kernel started in notebooks/ (JupyterLab) passes the parameters' relative paths; nothing may land there."""
    from mllm_study import evidence, study, world
    from mllm_study.config import PROJECT_ROOT

    seen = []
    monkeypatch.setattr(world, "ensure_world", lambda params, progress=True: seen.append(params.paths.cache) or
                        tmp_path)
    monkeypatch.chdir(PROJECT_ROOT / "notebooks")
    evidence.world_dir("smoke", ".cache")
    params = study.rq_params("params/rq4_data_size.yaml", "smoke", ".cache", "runs")
    assert seen == [str(PROJECT_ROOT / ".cache")]
    assert (params.paths.cache, params.paths.runs) == (str(PROJECT_ROOT / ".cache"), str(PROJECT_ROOT / "runs"))
