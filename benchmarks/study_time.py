"""Wall time of a study, split into world generation, pre-training, model set-up, training, evaluation and rendering.

Usage: ``python benchmarks/study_time.py`` (smoke profile, fresh temporary cache) or
``python benchmarks/study_time.py --profile quick [--cache .cache]``

The phases are timed by wrapping the package's own functions while the study runs, each second counted once, in
the innermost phase (evaluation inside a training epoch is evaluation, not training; world generation and
pre-training absorb the training and evaluation they do themselves):

===========  =====================================================================================
world        ``mllm_study.world.generate_world`` (the synthetic world; instant when cached)
pretrain     ``mllm_study.models.pretrain_tiny_llava`` (both stages and the image-use check)
setup        ``runs.base_model`` and ``apply_method`` (load / copy the base model, add the method)
train        ``mllm_study.train.train_model`` (encoding included), minus evaluation inside it
eval         ``runs.evaluate_all`` and ``evaluate.evaluate_loss`` (generation, scoring, held-out loss)
render       ``report.execute_notebook`` and ``report.write_index`` (notebooks -> HTML)
other        the rest (specs, run directories, saving adapters, collecting results, imports)
===========  =====================================================================================

When the study driver is usable (``mllm_study.study.run_study`` with ``notebooks/rq*.ipynb`` and
``params/rq*.yaml``), the script times ``run_study(profile)``. Otherwise it says so and times what exists: the
world, the base model, and one run per ``--methods`` on ``--datasets`` through ``runs.execute_run`` (train and
eval phases), then ``results.collect_results``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PHASES = ("world", "pretrain", "setup", "train", "eval", "render", "other")
# (module, attribute, phase, absorbs nested phases)
TARGETS = [
    ("mllm_study.world", "generate_world", "world", True),
    ("mllm_study.models", "pretrain_tiny_llava", "pretrain", True),
    ("mllm_study.runs", "base_model", "setup", False),
    ("mllm_study.methods.registry", "apply_method", "setup", False),
    ("mllm_study.train", "train_model", "train", False),
    ("mllm_study.runs", "evaluate_all", "eval", False),
    ("mllm_study.evaluate", "evaluate_loss", "eval", False),
    ("mllm_study.report", "execute_notebook", "render", False),
    ("mllm_study.report", "write_index", "render", False),
]


class PhaseClock:
    """Exclusive wall time per phase: entering a phase pauses the enclosing one."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()
        self._stack: list[list] = []  # [phase, started, absorbs]

    def wrap(self, phase: str, fn, absorbs: bool):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self._stack and self._stack[-1][2]:
                return fn(*args, **kwargs)
            now = time.perf_counter()
            if self._stack:
                outer = self._stack[-1]
                self.seconds[outer[0]] += now - outer[1]
            self._stack.append([phase, now, absorbs])
            try:
                return fn(*args, **kwargs)
            finally:
                now = time.perf_counter()
                _, started, _ = self._stack.pop()
                self.seconds[phase] += now - started
                self.calls[phase] += 1
                if self._stack:
                    self._stack[-1][1] = now

        return timed

    def patch(self, stack: ExitStack) -> None:
        for module_name, attr, phase, absorbs in TARGETS:
            module = importlib.import_module(module_name)
            original = getattr(module, attr, None)
            if original is None:
                continue
            setattr(module, attr, self.wrap(phase, original, absorbs))
            stack.callback(setattr, module, attr, original)


def study_usable() -> bool:
    try:
        from mllm_study.config import PARAMS_DIR
        from mllm_study.study import list_notebooks, run_study  # noqa: F401
    except ImportError:
        return False
    return bool(list_notebooks()) and any(PARAMS_DIR.glob("rq*.yaml"))


def run_fallback(profile: str, cache: Path, runs: Path, methods: list[str], datasets: list[str]) -> list[str]:
    from mllm_study.config import load_params
    from mllm_study.models import ensure_world
    from mllm_study.results import collect_results
    from mllm_study.runs import base_model, execute_run

    lines = []
    for dataset in datasets:
        for method in methods:
            params = load_params(profile=profile, overrides={"paths.cache": str(cache), "paths.runs": str(runs),
                                                             "run.method": method, "run.dataset": dataset})
            if not lines:  # world and base model first, so their phases are not mixed into the first run
                ensure_world(params, progress=False)
                base_model(params, progress=False)
            run_dir = execute_run(params, progress=False)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            lines.append(f"  {run_dir.name}: {metrics['metric']} {metrics['value']:.3f}, "
                         f"{metrics['train'].get('steps', 0)} steps in {metrics['train'].get('seconds', 0):.1f} s")
    collect_results(runs)
    return lines


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke", help="smoke (default, about a minute) or quick (minutes)")
    ap.add_argument("--cache", default=None,
                    help="world/model cache to use (default: a fresh temporary folder, so everything is built)")
    ap.add_argument("--methods", nargs="+", default=["lora", "ia3", "prefix", "adapter"],
                    help="fallback only: one run per method")
    ap.add_argument("--datasets", nargs="+", default=["iconqa_txt"], help="fallback only: world families")
    ap.add_argument("--fallback", action="store_true", help="time the fallback even when the study is usable")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("MLLM_STUDY_THREADS", "1")))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    clock = PhaseClock()
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as patches:
        cache = Path(args.cache).resolve() if args.cache else Path(tmp) / "cache"
        runs, reports = Path(tmp) / "runs", Path(tmp) / "reports"
        clock.patch(patches)
        start = time.perf_counter()
        if study_usable() and not args.fallback:
            from mllm_study.study import run_study

            summary = run_study(args.profile, cache=str(cache), runs=str(runs), reports=str(reports),
                                progress=False, stream=open(os.devnull, "w"))
            notes.append(f"timed run_study({args.profile!r}): {summary.runs_total} runs, {len(summary.reports)} "
                         f"reports")
            notes.extend(summary.lines()[1:])
        else:
            why = "--fallback" if args.fallback else \
                "the study driver is not usable yet (no notebooks/rq*.ipynb or params/rq*.yaml)"
            notes.append(f"{why}: timed world + base model + one run per method "
                         f"({', '.join(args.methods)} on {', '.join(args.datasets)}, the profile's run settings) "
                         "through runs.execute_run, then results.collect_results; nothing to render")
            notes.extend(run_fallback(args.profile, cache, runs, args.methods, args.datasets))
        total = time.perf_counter() - start
    timed = sum(clock.seconds.values())
    seconds = {phase: clock.seconds.get(phase, 0.0) for phase in PHASES}
    seconds["other"] += max(0.0, total - timed)
    print(f"study time, profile {args.profile}, cache {'fresh' if not args.cache else args.cache}, "
          f"torch threads {torch.get_num_threads()}")
    for line in notes:
        print(line)
    print(f"\n{'phase':10s} {'seconds':>9s} {'share':>7s} {'calls':>6s}")
    for phase in PHASES:
        print(f"{phase:10s} {seconds[phase]:9.1f} {100 * seconds[phase] / total:6.1f}% {clock.calls.get(phase, 0):6d}")
    print(f"{'total':10s} {total:9.1f}")
    if args.cache:
        for record in sorted(Path(cache, "models").glob("tiny-llava-*/pretrain_record.json")):
            stages = json.loads(record.read_text()).get("stages", {})
            built = sum(s.get("seconds", 0) for s in stages.values())
            notes_line = ", ".join(f"{k} {v.get('seconds', 0):.0f} s" for k, v in stages.items())
            print(f"cached base model {record.parent.name}: pre-training took {built:.0f} s when built "
                  f"({notes_line})")
    return {**seconds, "total": total}


if __name__ == "__main__":
    main()
