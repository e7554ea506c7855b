"""The ``mllm-study`` command: study, report, world, pretrain, run, sweep, rescore, results, params, data convert.

Usage: ``mllm-study run --profile quick --method lora --dataset iconqa_txt --connector tuned``
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, StudyError
from .method_info import method_order

__all__ = ["main", "build_parser"]

DESCRIPTION = ("mllm-study: parameter-efficient fine-tuning of multimodal LLMs, measured. "
               "Start with 'mllm-study study --profile quick' (the quick study on the embedded model; reports in "
               "reports/index.html); '<command> --help' explains each command.")
EPILOG = ("params: weight-free parameter and FLOP accounting of a method on a model "
          "('mllm-study params --help'). Global: --quiet on a command turns off progress bars and per-run lines; "
          "without a terminal, progress bars are off anyway.")

# Options of `run` that map onto run.* params keys (flag -> key); values are parsed as YAML scalars.
RUN_OPTIONS = {
    "model": str, "dataset": str, "method": str, "placement": str, "connector": str, "lr": float,
    "connector_lr": float, "vision": str, "vision_lr": float, "epochs": float, "batch_size": int, "grad_accum": int,
    "train_size": int, "test_size": int, "seed": int,
}


#: help and choices of the `run` options (None: free text)
RUN_HELP = {
    "model": ("tiny-llava (the embedded model, default), a local checkpoint folder or a hub id", None),
    "dataset": ("a synthetic world family (sqa, vizwiz, iconqa_txt, iconqa_blank, flickr30k, okvqa, ocrvqa, vqav2) "
                "or a converted dataset folder (docs/data_format.md)", None),
    "method": (f"PEFT method: {', '.join(m for m in method_order() if m != 'none')} or peft:<tuner> "
               f"(mllm_study/methods; 'none' = zero-shot)", None),
    "placement": ("where the module goes (default: the method's own)", ["attention", "mlp", "both"]),
    "connector": ("tune the vision-language connector too (default frozen)", ["frozen", "tuned"]),
    "lr": ("learning rate (default: the profile's preset for the method, else the paper's)", None),
    "connector_lr": ("learning rate of a tuned connector", None),
    "vision": ("tune the vision encoder too (default frozen)", ["frozen", "tuned"]),
    "vision_lr": ("learning rate of a tuned vision encoder", None),
    "epochs": ("training epochs (may be fractional; default 3, the profile may change it)", None),
    "batch_size": ("training batch size (default 16)", None),
    "grad_accum": ("gradient accumulation steps (default 1)", None),
    "train_size": ("subsample the train split to this many records (seeded)", None),
    "test_size": ("score on this many test records (fixed seed, the same for every run)", None),
    "seed": ("training seed (default 42)", None),
}


def _add_params_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", metavar="FILE", help="params YAML file (diff on top of defaults and its profile)")
    p.add_argument("--profile", help="profile in params/: smoke, quick, full, ...")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one params key, e.g. --set run.lr=1e-4 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mllm-study", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("world", help="generate the synthetic world (LLaVA JSON + PNG per family and split)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"], help="world size (default quick)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0); the same seed gives the same files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("pretrain", help="build and pre-train the tiny base model (cached by recipe)")
    _add_params_options(p)

    p = sub.add_parser("run", help="train one PEFT run and evaluate it; prints its run directory")
    _add_params_options(p)
    for name, typ in RUN_OPTIONS.items():
        text, choices = RUN_HELP[name]
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None, help=text, choices=choices)
    p.add_argument("--data", dest="data_file", metavar="FILE",
                   help="train on a LLaVA conversation file (JSON or JSON lines) instead of --dataset")
    p.add_argument("--test-data", dest="test_data_file", metavar="FILE",
                   help="score on this conversation file (default: the last records of --data, not trained on)")
    p.add_argument("--image-folder", metavar="DIR", help="folder the --data image paths are relative to")
    p.add_argument("--metric-variant", action="append", default=[], metavar="METRIC=VARIANT",
                   help="score with a named metric variant, e.g. vqa_score=official-2021 or pope=llava (repeatable)")
    p.add_argument("--method-params", metavar="YAML", help="method parameters, e.g. '{r: 8, alpha: 16}'")
    p.add_argument("--force", action="store_true", help="re-run even if a finished run with this id exists")

    p = sub.add_parser("sweep", help="run every run a params file declares (skips finished ones, retries failed)")
    p.add_argument("sweep_params", metavar="PARAMS", help="params YAML with a sweep: section")
    p.add_argument("--profile", help="profile applied under the params file (default: the file's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one params key, e.g. --set run.lr=1e-4 (repeatable)")
    p.add_argument("--shard", help="i/n: run only this worker's share (e.g. 0/4 on the first of four machines)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1: a 2-core laptop)")
    p.add_argument("--retries", type=int, default=0, help="extra attempts for a failing run")
    p.add_argument("--status", action="store_true", help="only print the sweep's state, run nothing")
    p.add_argument("--slurm", action="store_true", help="submit as a SLURM job array through submitit (one run per "
                                                          "task unless --slurm-tasks)")
    p.add_argument("--slurm-tasks", type=int, help="array size (default: one task per remaining run)")
    p.add_argument("--slurm-partition")
    p.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per task")
    p.add_argument("--slurm-cpus", type=int, default=2, help="CPUs per task")
    p.add_argument("--slurm-time", type=int, default=240, help="minutes per task")
    p.add_argument("--slurm-parallel", type=int, default=32, help="array tasks running at once")
    p.add_argument("--slurm-local", action="store_true", help="run the job array with submitit's local executor")
    p.add_argument("--wait", action="store_true", help="with --slurm: wait for the array and print the table")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")

    for name, text in (("study", "train or reuse every run of the research questions, execute their notebooks and "
                                 "render reports/<notebook>/<profile>.html and reports/index.html"),
                       ("report", "re-render the reports from the runs that exist (no training)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--profile", default="quick", help="smoke, quick (default), full, or a real-scale profile")
        p.add_argument("--only", help="comma-separated notebook stems, e.g. rq1_main,rq8_summary")
        p.add_argument("--force", action="store_true", help="re-render reports whose inputs did not change")
        p.add_argument("--cache", help="cache folder (default: the profile's paths.cache)")
        p.add_argument("--runs", help="runs folder (default: the profile's paths.runs)")
        p.add_argument("--reports", help="reports folder (default: the profile's paths.reports)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one params key in every research question, the calibration and the notebooks, "
                            "e.g. --set run.seed=1 or --set pretrain.lr=3e-3 (repeatable; applied last)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")

    p = sub.add_parser("calibrate", help="choose each PEFT method's learning rate for an embedded profile: a log grid "
                                         "scored on a validation split carved from train (params/calibration.yaml)")
    p.add_argument("--profile", default="quick", help="smoke or quick (default); real-model profiles keep the "
                                                      "paper's rates")
    p.add_argument("--cache", help="cache folder (default: the profile's paths.cache)")
    p.add_argument("--runs", help="runs folder (default: the profile's paths.runs)")
    p.add_argument("--workers", type=int, default=None, help="worker processes for the grid (default: 2 on 2 cores)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one params key of every calibration run, e.g. --set run.warmup_ratio=0.15 "
                        "(repeatable; applied last, as `study --set` does)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")

    p = sub.add_parser("validate", help="check that the world, base model and runs can show the study's factors "
                                        "(docs/study.md); prints the figures, exits 1 if a criterion fails")
    _add_params_options(p)
    p.add_argument("--runs", help="runs folder (default: the params' paths.runs)")
    p.add_argument("--world", help="world folder (default: the params' world, generated if missing)")
    p.add_argument("--base-model", help="base model folder with pretrain_record.json (default: the params' tiny-llava)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="also write every figure to this JSON file")

    p = sub.add_parser("rescore", help="re-score the finished runs of a params file whose metrics changed version "
                                       "(stored predictions, no retraining; sweep and study do it too)")
    p.add_argument("sweep_params", metavar="PARAMS", help="params YAML (its sweep: section names the runs)")
    p.add_argument("--profile", help="profile applied under the params file (default: the file's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one params key, e.g. --set run.lr=1e-4 (repeatable)")

    p = sub.add_parser("results", help="the tidy results table of finished runs (CSV to stdout or --out)")
    p.add_argument("--runs", help="runs folder (default: the project's runs/)")
    p.add_argument("--out", help="write CSV (or .parquet) here instead of printing")

    sub.add_parser("params", add_help=False, help="parameter and FLOP accounting of a method on a model, no weights "
                                                   "loaded ('mllm-study params --help' for its options)")

    p = sub.add_parser("data", help="convert real datasets (VQAv2, POPE, ScienceQA, ...) into the project's format")
    dsub = p.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("convert", help="convert a public dataset release into the project's LLaVA JSON")
    c.add_argument("name", help="dataset: scienceqa, vizwiz, iconqa_txt, iconqa_blank, flickr30k, okvqa, vqav2, "
                                "ocrvqa, pope")
    c.add_argument("--src", required=True, help="folder of the public release, or a Hugging Face parquet file or "
                                                "folder (lmms-lab/...), or hf:<dataset id>[:<config>]")
    c.add_argument("--out", required=True, help="output dataset folder (must be empty unless --overwrite)")
    c.add_argument("--image-folder", help="folder the images are in, if they are not found under --src")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty --out as a whole")
    c.add_argument("--train-size", type=int)
    c.add_argument("--test-size", type=int)
    c.add_argument("--seed", type=int, default=0)
    return parser


def _here(path: str | None) -> str | None:
    """A folder given on the command line: relative to the working directory, as a shell user means it."""
    return None if path is None else str(Path(path).expanduser().resolve())


def _here_paths(overrides: dict[str, Any]) -> dict[str, Any]:
    """``--set paths.X=...`` values taken from the working directory (the other keys unchanged)."""
    return {k: (_here(str(v)) if k.startswith("paths.") and v is not None else v) for k, v in overrides.items()}


def _params(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    """Params of a command: defaults <- profile <- --params <- --set. The ``paths`` of params files are taken from
    the project root (from any working directory the same cache, base model and runs, as in the notebooks); a
    ``--set paths.X=...`` value from the working directory."""
    from .config import load_params, parse_overrides, rooted_paths

    overrides = {**parse_overrides(args.overrides), **(extra or {})}
    return rooted_paths(load_params(args.params, args.profile, _here_paths(overrides)))


def _cmd_world(args) -> int:
    from .world import generate_world

    manifest = generate_world(Path(args.out), profile=args.profile, seed=args.seed, progress=not args.quiet)
    print(json.dumps({k: manifest[k] for k in manifest if k in ("profile", "seed", "families", "fingerprint")},
                     indent=1))
    print(f"world written to {args.out}")
    return 0


def _cmd_pretrain(args) -> int:
    from .models import ensure_world, pretrain_tiny_llava

    params = _params(args)
    world = ensure_world(params, not args.quiet)
    path = pretrain_tiny_llava(params, world, not args.quiet)
    from .runs import read_json

    record = read_json(path / "pretrain_record.json")
    for stage, info in record["stages"].items():
        print(f"{stage}: {info['steps']} steps in {info['seconds']} s, final loss {info['final_loss']:.4f}")
    print("image-use check (seen families, test split):")
    for family, res in record["image_use_check"].items():
        print(f"  {family:8s} {res['metric']:10s} image {res['image']:.3f}   blank image {res['blank']:.3f}")
    print(f"base model: {path}")
    return 0


def _cmd_run(args) -> int:
    import yaml

    from .runs import execute_run

    extra = {f"run.{k}": getattr(args, k) for k in RUN_OPTIONS if getattr(args, k) is not None}
    for key in ("data_file", "test_data_file", "image_folder"):
        if getattr(args, key) is not None:
            extra[f"run.{key}"] = getattr(args, key)
    if args.data_file is not None and args.dataset is not None:
        raise ConfigError("give --data FILE or --dataset NAME, not both")
    if args.metric_variant:
        pairs = [v.split("=", 1) for v in args.metric_variant]
        if any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
            raise ConfigError(f"--metric-variant must look like METRIC=VARIANT (e.g. vqa_score=official-2021), "
                              f"got {args.metric_variant!r}")
        extra["run.metric_variants"] = dict(pairs)
    if args.method_params:
        try:
            mp = yaml.safe_load(args.method_params)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--method-params is not valid YAML ({str(exc).splitlines()[0]}): "
                              f"{args.method_params!r}") from None
        if not isinstance(mp, dict):
            raise ConfigError(f"--method-params must be a YAML mapping like '{{r: 8}}', got {args.method_params!r}")
        extra["run.method_params"] = mp
    params = _params(args, extra)
    from .runs import read_json
    from .sweep import install_sigterm

    install_sigterm()  # SIGTERM like Ctrl-C: the run is recorded as failed, no temporary folder stays behind
    run_dir = execute_run(params, progress=not args.quiet, force=args.force)
    metrics = read_json(run_dir / "metrics.json")
    print(f"{metrics['dataset']} ({metrics['metric']}): {metrics['value']:.4f} on {metrics['n']} "
          f"{params.run.eval_split} items; "
          f"trained {metrics['train']['trainable_params']:,} parameters for {metrics['train']['steps']} steps")
    print(f"run directory: {run_dir}")
    return 0


def _sweep_params(args):
    """The sweep command's params (:func:`mllm_study.study.sweep_params`), its file and ``--set paths`` taken from
    the working directory."""
    from .config import parse_override
    from .study import sweep_params

    path = _here(args.sweep_params) if Path(args.sweep_params).exists() else args.sweep_params
    return sweep_params(path, args.profile, _here_paths(dict(parse_override(o) for o in args.overrides)))


def _cmd_sweep(args) -> int:
    from .sweep import parse_shard, plan_sweep, run_sweep, sweep_status

    params = _sweep_params(args)
    shard = parse_shard(args.shard)
    if args.status:
        from .sweep import missing_datasets

        missing = missing_datasets(params)
        if missing:  # every one at once, rather than the first one resolve_spec trips over
            print(f"{len(missing)} dataset folder(s) missing; convert them first:")
            for folder, command in missing:
                print(f"  {folder}: {command}")
            return 1
    plan = plan_sweep(params, shard, progress=not args.quiet)
    ids = [rid for rid, _ in plan]
    state = sweep_status(params.paths.runs, ids)
    print("sweep " + ", ".join(f"{k} {len(v)}" for k, v in state.items())
          + f" (of {len(ids)}, shard {shard[0]}/{shard[1]})")
    if args.status:
        return 0
    if args.slurm:
        return _slurm_sweep(args, params, ids, state)
    failed = False
    if args.workers > 1:
        failed = _pool_sweep(args, params, shard)
    else:
        summary = run_sweep(params, shard, progress=not args.quiet, retries=args.retries)
        print(summary.line())
        failed = bool(summary.failed)  # including runs that failed before writing anything
    _print_sweep_table(params.paths.runs, ids)
    state = sweep_status(params.paths.runs, ids)
    print("sweep " + ", ".join(f"{k} {len(v)}" for k, v in state.items()))
    return 1 if failed or state["failed"] else 0


def _slurm_sweep(args, params, ids, state) -> int:
    from .sweep import submit_sweep, sweep_status

    todo = len(ids) - len(state["done"])
    if todo == 0:
        print("nothing to submit: every run is done")
        _print_sweep_table(params.paths.runs, ids)
        return 0
    n = args.slurm_tasks or todo
    folder = Path(params.paths.runs) / ".submitit"
    jobs = submit_sweep(params, n, folder, retries=args.retries, local=args.slurm_local, timeout_min=args.slurm_time,
                        cpus_per_task=args.slurm_cpus, gpus_per_node=args.slurm_gpus,
                        slurm_partition=args.slurm_partition, slurm_array_parallelism=args.slurm_parallel)
    print(f"submitted {len(jobs)} array tasks (job {jobs[0].job_id.split('_')[0]}); logs in {folder}")
    if not args.wait:
        print(f"follow with: mllm-study sweep {args.sweep_params} --status")
        return 0
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # a task that crashed; its runs stay remaining/failed and the table says so
            print(f"task {job.job_id} failed: {exc}", file=sys.stderr)
    _print_sweep_table(params.paths.runs, ids)
    state = sweep_status(params.paths.runs, ids)
    print("sweep " + ", ".join(f"{k} {len(v)}" for k, v in state.items()))
    return 0 if not state["failed"] and not state["remaining"] else 1


def _pool_sweep(args, params, shard):
    """Split this shard over local worker processes (each a sub-shard, :func:`mllm_study.sweep.sweep_task`);
    claims keep them apart."""
    import functools

    from .sweep import pool_map, sweep_task

    i, n = shard
    w = args.workers
    codes = pool_map(functools.partial(sweep_task, params, retries=args.retries),
                     [(i * w + k, n * w) for k in range(w)])
    print(f"{w} workers finished with exit codes {codes}")
    if any(c not in (0, 1) for c in codes):
        raise RuntimeError(f"a sweep worker stopped with exit code {max(codes)}")
    return any(c == 1 for c in codes)


def _print_sweep_table(runs_dir, ids) -> None:
    from .results import collect_results

    table, report = collect_results(runs_dir, ids)
    print(report)
    if table.empty:
        return
    main_rows = table[(table["split"] == "test") & (table["dataset"] == table["train_dataset"])
                      & ~table["metric"].str.contains(r"\.", regex=True)]
    if main_rows.empty:
        return
    last = main_rows.sort_values("epoch").groupby("run_id").tail(1)
    cols = ["run_id", "method", "connector", "placement", "train_dataset", "seed", "metric", "value"]
    print(last[cols].sort_values(["train_dataset", "method", "connector", "seed"]).to_string(index=False))


def _cmd_study(args, train: bool = True) -> int:
    from .study import run_study

    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    summary = run_study(args.profile, only, cache=_here(args.cache), runs=_here(args.runs),
                        reports=_here(args.reports), train=train,
                        force=args.force, progress=not args.quiet, overrides=list(args.overrides))
    print("\n".join(summary.lines()))
    return 0 if summary.ok else 1


def _cmd_results(args) -> int:
    from .results import collect_results

    from .config import load_params, project_path

    runs = Path(_here(args.runs)) if args.runs else project_path(load_params().paths.runs)
    if not runs.is_dir():
        raise FileNotFoundError(f"runs folder not found: {runs}")
    table, report = collect_results(runs)
    print(report, file=sys.stderr)
    if args.out:
        if str(args.out).endswith(".parquet"):
            table.to_parquet(args.out)
        else:
            table.to_csv(args.out, index=False)
        print(f"{len(table)} rows -> {args.out}", file=sys.stderr)
    else:
        print(table.to_csv(index=False), end="")
    return 1 if report.damaged else 0  # named above; `sweep` or `study` re-runs them


def _cmd_rescore(args) -> int:
    from .records import rescore_run
    from .runs import is_done
    from .sweep import plan_sweep

    params = _sweep_params(args)
    done = [(rid, p) for rid, p in plan_sweep(params) if is_done(Path(params.paths.runs) / rid)]
    rescored = 0
    for rid, p in done:
        stale = rescore_run(Path(params.paths.runs) / rid, p)
        if stale:
            rescored += 1
            print(f"{rid}: re-scored {', '.join(stale)}")
    print(f"{rescored} of {len(done)} finished runs re-scored")
    return 0


def _cmd_calibrate(args) -> int:
    from .calibration import calibrate

    result = calibrate(args.profile, cache=_here(args.cache), runs=_here(args.runs), progress=False,
                       workers=args.workers, overrides=args.overrides or None,
                       stream=sys.stderr if not args.quiet else io.StringIO())
    print("\n".join(result.lines()))
    return 0 if result.ok else 1


def _cmd_validate(args) -> int:
    from .models import ensure_world, tiny_llava_dir
    from .validity import run_dirs, validate

    params = _params(args)
    runs = Path(_here(args.runs) or params.paths.runs)
    run_dirs(runs)  # a missing or empty runs folder is an error before any world is generated
    world = Path(args.world) if args.world else ensure_world(params, not args.quiet)
    base = Path(args.base_model) if args.base_model else (
        tiny_llava_dir(params, world) if params.run.model == "tiny-llava" and (world / "manifest.json").exists()
        else None)
    result = validate(runs, world, base)
    print(result.text())
    if args.json_out:
        result.write_json(args.json_out)
        print(f"figures written to {args.json_out}")
    return result.exit_code


def _cmd_data(args) -> int:
    from .converters import convert

    info = convert(args.name, args.src, args.out, train_size=args.train_size, test_size=args.test_size,
                   seed=args.seed, image_folder=args.image_folder, overwrite=args.overwrite)
    print(json.dumps(info, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mllm-study`` console script."""
    from .process import configure_process

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "params":  # weight-free accounting has its own parser (mllm_study/accounting.py)
        from .accounting import main_params

        return main_params(argv[1:])
    args = build_parser().parse_args(argv)
    configure_process(quiet=getattr(args, "quiet", False))
    handlers = {"world": _cmd_world, "pretrain": _cmd_pretrain, "run": _cmd_run, "sweep": _cmd_sweep,
                "study": _cmd_study, "report": lambda a: _cmd_study(a, train=False), "results": _cmd_results,
                "rescore": _cmd_rescore,
                "data": _cmd_data, "validate": _cmd_validate,
                "calibrate": _cmd_calibrate}
    try:
        return handlers[args.command](args)
    except (StudyError, FileNotFoundError) as exc:  # bad input: one line. Anything else is a bug: its traceback
        print(f"mllm-study {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only or full runs folder, a path through a file, ...: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"mllm-study {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mllm-study {args.command}: interrupted; finished runs are kept, the current one will re-run",
              file=sys.stderr)
        return 130


def entry() -> None:
    """The ``mllm-study`` command and ``python -m mllm_study``: :func:`main`, then exit with its code. A second
    interrupt (Ctrl-C or SIGTERM again, while the first is being reported or the interpreter shuts down) still
    exits 130, not through an unhandled ``KeyboardInterrupt`` (which Python turns into death by SIGINT)."""
    import signal

    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
