"""Paired, teacher-shared studies: many students x methods x seeds trained in one process.

A study plan (YAML, validated like a recipe) names student recipes, distillation methods and seeds.
Every (student, method, seed) is an ordinary run built by :class:`~apd_edge.engine.trainer.Trainer` and
writes an ordinary run folder (recipe.yaml, metrics.jsonl, last.pt, best.pt, summary.json), so
``eval``, ``export``, ``bench`` and ``train|distill --resume`` work on it. What the study shares:

* **one data stream per seed**: the runs of one seed (every student and method) see the same batches
  in the same order with the same augmentations, the stream the seed gives a run trained alone;
* **one teacher forward per batch**: a :class:`SharedTeacher` computes the teacher's features and
  logits once and hands the same tensors to every distiller of that batch;
* **the same initial weights per (student, seed)**: every run is built exactly as it would be alone.

Each run keeps its own model, optimizer, schedule, distiller and RNG streams (the global Python /
NumPy / torch state is swapped in before a run's step and out after it), so a study run gives the
same weights, losses and checkpoints as the same recipe trained alone with ``apd-edge distill``
(bit-exact on CPU with ``data.workers: 0``; tests/test_study.py checks it).

Resume: every run saves last.pt at its ``ckpt_interval``; a restarted study rebuilds each unfinished
run from its last.pt and replays the data stream from the earliest one, each run re-joining the
stream at its own step. Seeds run one after the other; finished runs are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..config import RecipeError, Recipe, _build, load_recipe, recipe_to_dict, yaml_load
from ..errors import ApdError

# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------


@dataclass
class StudentPlan:
    """One student architecture: its recipe and the overrides of every run of it."""

    recipe: str
    name: Optional[str] = None  # run-name prefix; None = the recipe's model.name
    set: list[str] = field(default_factory=list)


@dataclass
class TeacherTrainPlan:
    """Train the shared teacher first, as a normal run ``<output_dir>/<name>`` (skipped once finished)."""

    recipe: str
    name: str = "teacher"
    set: list[str] = field(default_factory=list)
    checkpoint: str = "last.pt"  # the weights the students learn from: the final step, not the best on val


@dataclass
class StudyPlan:
    name: str = "study"
    output_dir: str = "runs/study"
    students: list[StudentPlan] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["none", "kd", "cwd", "apd"])
    seeds: list[int] = field(default_factory=lambda: [0])
    set: list[str] = field(default_factory=list)  # overrides of every student run
    teacher: dict[str, Any] = field(default_factory=dict)  # the recipes' teacher section, for every run
    teacher_train: Optional[TeacherTrainPlan] = None
    threads: Optional[int] = None  # torch intra-op threads (None: library default)
    base_dir: str = "."  # where relative recipe paths are looked up after the working directory


def load_plan(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyPlan:
    """Read and validate a study plan; ``overrides`` are ``key=value`` on the plan's top-level keys."""
    path = Path(path)
    if not path.is_file():
        raise ApdError(f"study plan not found: {path}")
    try:
        data = yaml_load(path.read_text()) or {}
    except Exception as exc:  # yaml.YAMLError
        raise ApdError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ApdError(f"{path}: a study plan must be a mapping")
    for item in overrides:
        if "=" not in item:
            raise ApdError(f"--set {item!r}: expected key=value, e.g. seeds=[0,1]")
        key, raw = item.split("=", 1)
        data[key.strip()] = yaml_load(raw)
    data.setdefault("name", path.stem)
    data.setdefault("base_dir", str(path.resolve().parent))
    return plan_from_dict(data)


def plan_from_dict(data: dict) -> StudyPlan:
    try:
        plan = _build(StudyPlan, data)
    except RecipeError as exc:
        raise ApdError(f"study plan: {str(exc).replace('recipe key', 'plan key')}") from None
    if not plan.students:
        raise ApdError("study plan: 'students' is empty (give at least one {recipe: ...})")
    if not plan.methods:
        raise ApdError("study plan: 'methods' is empty")
    if not plan.seeds:
        raise ApdError("study plan: 'seeds' is empty")
    from ..distill.base import DISTILLERS

    _register_methods()
    for m in plan.methods:
        if m not in DISTILLERS:
            raise ApdError(f"study plan: methods: {_unknown_method(m)}")
    for key, n in (("methods", plan.methods), ("seeds", plan.seeds)):
        if len(set(n)) != len(n):
            raise ApdError(f"study plan: '{key}' lists a value twice: {n}")
    return plan


def _register_methods() -> None:
    """Import every distiller module the package ships, so the registry knows all method names."""
    import importlib
    import pkgutil

    from .. import distill

    for mod in pkgutil.iter_modules(distill.__path__):
        importlib.import_module(f"{distill.__name__}.{mod.name}")


def _unknown_method(name: str) -> str:
    from ..distill.base import DISTILLERS
    from ..errors import unknown_name

    return str(unknown_name("distillation method", name, DISTILLERS.names()))


def _recipe_path(plan: StudyPlan, recipe: str) -> Path:
    """A recipe path as given if it exists from here, else relative to the plan's folder (shown short)."""
    import os

    p = Path(recipe)
    if not (p.is_file() or p.is_absolute()):
        p = Path(os.path.normpath(Path(plan.base_dir) / p))
        try:
            p = p.relative_to(Path.cwd())
        except ValueError:
            pass
    return p


@dataclass
class PlannedRun:
    name: str
    student: str
    method: str
    seed: int
    recipe: Recipe
    overrides: list[str]  # as a user would pass them to `apd-edge distill RECIPE --set ...`
    recipe_file: str


def teacher_recipe(plan: StudyPlan) -> Recipe | None:
    """The resolved recipe of the teacher run (None when the plan brings a trained teacher)."""
    t = plan.teacher_train
    if t is None:
        return None
    sets = [f"output_dir={plan.output_dir}", f"name={t.name}", *t.set]
    return load_recipe(_recipe_path(plan, t.recipe), sets)


def teacher_command(plan: StudyPlan) -> str | None:
    """The teacher run as a user would type it (None when the plan brings a trained teacher)."""
    import shlex

    t = plan.teacher_train
    if t is None:
        return None
    sets = [f"output_dir={plan.output_dir}", f"name={t.name}", *t.set]
    return " ".join(["apd-edge", "train", str(_recipe_path(plan, t.recipe)),
                     *[f"--set {shlex.quote(s)}" for s in sets]])


def teacher_checkpoint(plan: StudyPlan) -> str | None:
    if plan.teacher.get("checkpoint"):
        return str(plan.teacher["checkpoint"])
    if plan.teacher_train is not None:
        return str(Path(plan.output_dir) / plan.teacher_train.name / plan.teacher_train.checkpoint)
    return None


def _teacher_sets(plan: StudyPlan) -> list[str]:
    t = dict(plan.teacher)
    if plan.teacher_train is not None:
        tr = teacher_recipe(plan)
        t.setdefault("name", tr.model.name)
        if tr.model.kwargs:  # e.g. output_stride: the checkpoint records them too, this keeps recipes explicit
            t.setdefault("kwargs", dict(tr.model.kwargs))
    t["checkpoint"] = teacher_checkpoint(plan)
    # every key is set, null included: the student recipes' own teacher section must not leak through
    return [f"teacher.{k}={v}" if isinstance(v, str) else f"teacher.{k}={json.dumps(v)}" for k, v in t.items()]


def plan_runs(plan: StudyPlan) -> list[PlannedRun]:
    """Every (student, seed, method) run of the plan, seed-major (the order they train in)."""
    tsets = _teacher_sets(plan)
    runs = []
    for seed in plan.seeds:
        for st in plan.students:
            path = _recipe_path(plan, st.recipe)
            base = load_recipe(path, [*plan.set, *st.set])
            prefix = st.name or base.model.name
            for method in plan.methods:
                name = f"{prefix}_{method}_s{seed}"
                sets = [*plan.set, *st.set, f"output_dir={plan.output_dir}", f"name={name}", f"seed={seed}",
                        f"distill.method={method}", *tsets]
                runs.append(PlannedRun(name, prefix, method, seed, load_recipe(path, sets), sets, str(path)))
    names = [r.name for r in runs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ApdError(f"study plan: two students give the same run names ({', '.join(sorted(dup))}): "
                       f"set a distinct 'name' per student")
    return runs


def user_command(run: PlannedRun) -> str:
    """The equivalent single-run command (what the study's run reproduces when trained alone)."""
    import shlex

    return " ".join(["apd-edge", "distill", run.recipe_file, *[f"--set {shlex.quote(s)}" for s in run.overrides]])


def _stream_key(r: Recipe) -> str:
    """Runs with equal keys can share one data stream (and so one teacher forward per batch)."""
    keep = {"seed": r.seed, "data": recipe_to_dict(r)["data"], "batch_size": r.train.batch_size,
            "crop": r.train.crop, "device": r.train.device, "channels_last": r.train.channels_last,
            "amp": r.train.amp}
    return json.dumps(keep, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------------
# The shared teacher
# ------------------------------------------------------------------------------------------------


class SharedTeacher(nn.Module):
    """A frozen teacher whose output for one batch is computed once and reused by every distiller.

    The cache is keyed on the identity of the input tensor: the study hands the same tensor object to
    every run of a batch; any other input (a different tensor) is computed afresh.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.feat_channels = int(getattr(teacher, "feat_channels", 0) or 0)
        self.feat_stride = int(getattr(teacher, "feat_stride", 8) or 8)
        self._key: torch.Tensor | None = None
        self._out: dict[str, Any] | None = None
        self.seconds = 0.0  # time spent in teacher forwards
        self.forwards = 0

    def train(self, mode: bool = True) -> "SharedTeacher":
        return super().train(False)  # always frozen

    @torch.no_grad()
    def forward_dict(self, x: torch.Tensor, with_aux: bool = False) -> dict[str, Any]:
        if self._key is not x or self._out is None:
            t0 = time.perf_counter()
            self._out = self.teacher.forward_dict(x, with_aux=False)
            self._key = x
            self.seconds += time.perf_counter() - t0
            self.forwards += 1
        return self._out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_dict(x)["out"]

    def release(self) -> None:
        self._key, self._out = None, None


# ------------------------------------------------------------------------------------------------
# One run inside a study
# ------------------------------------------------------------------------------------------------


class _Run:
    """A Trainer driven step by step from outside (the study owns the data stream and the RNG swap)."""

    def __init__(self, planned: PlannedRun, trainer, shared: SharedTeacher | None) -> None:
        self.planned, self.trainer = planned, trainer
        self.total = trainer.recipe.train.iterations
        self.rng: dict[str, Any] | None = None  # this run's global RNG state between its steps
        self.seconds = 0.0  # own compute time: steps (minus the shared teacher) + evaluations
        self.start_step = trainer.step
        self.sums: dict[str, torch.Tensor] = {}
        self.n_sum = 0
        self.t_log = 0.0  # own step time since the last train record
        if shared is not None and trainer.distiller.teacher is not None:
            object.__setattr__(trainer.distiller, "_teacher", shared)  # the run's own copy is dropped

    @property
    def step(self) -> int:
        return self.trainer.step

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, t_start: float) -> None:
        """One step exactly as ``Trainer.fit`` takes it (no DDP: studies run in one process)."""
        from contextlib import nullcontext

        t = self.trainer
        autocast = (torch.autocast(device_type=t.device.type, dtype=t.amp_dtype) if t.amp_dtype is not None
                    else nullcontext())
        with autocast:
            out = t.distiller(images, labels)
        loss = out.total
        if not bool(torch.isfinite(loss.detach()).item()):
            raise t._nan_error(out.parts)
        t.optimizer.zero_grad(set_to_none=True)
        if t.scaler is not None:
            t.scaler.scale(loss).backward()
        else:
            loss.backward()
        t._optimizer_step()
        lr = t.optimizer.param_groups[0]["lr"]
        t.scheduler.step()
        t.step += 1
        for k, v in out.parts.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n_sum += 1
        self._lr = lr

    def after_step(self, step_seconds: float, t_start: float) -> None:
        """Logging, evaluation and checkpoints at this run's own intervals (as ``Trainer.fit``)."""
        t = self.trainer
        tc = t.recipe.train
        self.t_log += step_seconds
        if t.step % tc.log_interval == 0 or t.step == self.total:
            means = {k: float(v) / self.n_sum for k, v in self.sums.items()}
            img_s = self.n_sum * tc.batch_size / max(self.t_log, 1e-9)
            t.metrics.write({"type": "train", "step": t.step, **means, "lr": self._lr, "img_s": img_s,
                             "time": time.perf_counter() - t_start})
            self.sums, self.n_sum, self.t_log = {}, 0, 0.0
        if t.step % tc.eval_interval == 0 or t.step == self.total:
            self.evaluate()
        if t.step % tc.ckpt_interval == 0 or t.step == self.total:
            t._save_last()

    def evaluate(self) -> None:
        t = self.trainer
        if t._record_eval(t._validate(), log=False):
            t._save_best()

    def finish(self) -> dict[str, Any]:
        t = self.trainer
        summary_path = t.run_dir / "summary.json"
        if t.step > self.start_step or not summary_path.exists():
            if t.last_eval is None:  # killed between the final checkpoint and the summary: score it again
                self.evaluate()
            t._finish(self.seconds)
        return json.loads(summary_path.read_text())


# ------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------


def _done(run: PlannedRun) -> bool:
    p = Path(run.recipe.output_dir) / run.recipe.name / "summary.json"
    if not p.is_file():
        return False
    try:
        s = json.loads(p.read_text())
    except json.JSONDecodeError:
        return False
    return int(s.get("steps", 0)) >= run.recipe.train.iterations


def _train_teacher(plan: StudyPlan, log: Callable[[str], None], progress: bool) -> None:
    from .trainer import train

    r = teacher_recipe(plan)
    if r is None:
        return
    run_dir = Path(r.output_dir) / r.name
    summ = run_dir / "summary.json"
    if summ.is_file() and json.loads(summ.read_text()).get("steps", 0) >= r.train.iterations:
        return
    log(f"study {plan.name}: training the teacher {run_dir}")
    train(r, resume=(run_dir / "last.pt").is_file(), distill=False, progress=progress)


def run_study(plan: StudyPlan, progress: bool = True, log: Callable[[str], None] | None = None,
              only: Callable[[PlannedRun], bool] | None = None,
              on_step: Callable[[int, list[str]], None] | None = None, stage: str = "all") -> dict[str, Any]:
    """Train every run of ``plan`` (teacher first if the plan trains it); returns the study record.

    ``stage``: "teacher" (only the plan's teacher run), "students" (only the student runs; the teacher
    checkpoint must exist) or "all". ``only`` selects a subset of the runs;
    ``on_step(stream_step, run_names)`` is called after every
    batch of the stream (tests use it to simulate a kill). The record (:func:`read_record`) holds each
    seed's wall time, teacher time and per-run compute time; each stream keeps its own file under
    ``<output_dir>/streams/`` (so one process per seed can run at once), updated at every checkpoint.
    """
    import sys

    if log is None:
        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)
    if plan.threads:
        torch.set_num_threads(plan.threads)
    if stage not in ("all", "teacher", "students"):
        raise ApdError(f"study stage {stage!r}: expected all, teacher or students")
    out = Path(plan.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if stage != "students":
        _train_teacher(plan, log, progress)
    if stage == "teacher":
        return read_record(out)
    runs = [r for r in plan_runs(plan) if only is None or only(r)]
    ckpt = teacher_checkpoint(plan)
    if any(r.method != "none" for r in runs) and ckpt and not Path(ckpt).is_file():
        raise ApdError(f"study plan: the teacher checkpoint {ckpt} does not exist (train the teacher first)")
    _write_json(out / "study.json", {"plan": dataclasses.asdict(plan),
                                     "runs": {r.name: user_command(r) for r in plan_runs(plan)}})

    groups: dict[str, list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault(_stream_key(r.recipe), []).append(r)
    for key, members in groups.items():
        todo = [r for r in members if not _done(r)]
        label = f"seed {members[0].seed}"
        if not todo:
            log(f"study {plan.name}: {label}: {len(members)} runs finished before")
            continue
        path = _stream_path(out, label)
        base = json.loads(path.read_text()) if path.is_file() else {
            "wall_s": 0.0, "teacher_s": 0.0, "teacher_forwards": 0, "steps": 0, "run_s": {}, "runs": [],
            "teacher_runs": []}

        def save(stats: dict[str, Any], base=base, path=path) -> None:
            rec = {k: base[k] + stats[k] for k in ("wall_s", "teacher_s", "teacher_forwards", "steps")}
            rec["run_s"] = dict(base["run_s"])
            for name, sec in stats["run_s"].items():
                rec["run_s"][name] = rec["run_s"].get(name, 0.0) + sec
            rec["runs"] = sorted(set(base["runs"]) | set(stats["run_s"]))
            rec["teacher_runs"] = sorted(set(base["teacher_runs"]) | set(stats["teacher_runs"]))
            _write_json(path, rec)

        _run_stream(todo, progress, log, label, on_step, save)
    return read_record(out)


def _stream_path(out: Path, label: str) -> Path:
    return out / "streams" / f"{label.replace(' ', '_')}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def read_record(output_dir: str | Path) -> dict[str, Any]:
    """The study record: plan and commands (study.json) plus every stream's timings (streams/*.json)."""
    out = Path(output_dir)
    rec = json.loads((out / "study.json").read_text()) if (out / "study.json").is_file() else {}
    rec["streams"] = {p.stem.replace("_", " "): json.loads(p.read_text())
                      for p in sorted((out / "streams").glob("*.json"))}
    return rec


def _run_stream(todo: list[PlannedRun], progress: bool, log: Callable[[str], None], label: str,
                on_step: Callable[[int, list[str]], None] | None,
                save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Train the runs of one data stream together: one batch, one teacher forward, every run steps."""
    import sys

    from ..distill.teacher import build_teacher
    from .trainer import Trainer, rng_state, set_rng_state

    t_wall = time.perf_counter()
    runs: list[_Run] = []
    shared: SharedTeacher | None = None
    try:
        for p in todo:
            resume = (Path(p.recipe.output_dir) / p.recipe.name / "last.pt").is_file()
            tr = Trainer(p.recipe, resume=resume, distill=True, progress=False)
            if shared is None and tr.distiller.teacher is not None:
                # one teacher for the stream, built as the runs build theirs (same checkpoint and kwargs)
                shared = SharedTeacher(build_teacher(p.recipe, tr.num_classes).to(tr.device))
                shared.teacher.to(memory_format=tr.memory_format)
            runs.append(_Run(p, tr, shared))
        lead = runs[0].trainer
        device, fmt = lead.device, lead.memory_format
        n_batches = len(lead.train_loader)
        total = max(r.total for r in runs)
        s = min(r.step for r in runs)
        log(f"{label}: {len(runs)} runs from step {s} to {total} "
            f"({sum(r.trainer.distiller.teacher is not None for r in runs)} with the shared teacher)")
        epoch, pos = divmod(s, n_batches)
        it = lead._epoch_iter(epoch)
        epoch_state = rng_state()  # what every run's stream starts this epoch from
        for _ in range(pos if s < total else 0):
            next(it)
        for r in runs:
            r.trainer.distiller.train()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=s, desc=label, unit="it", dynamic_ncols=True, file=sys.stderr)
        t_start = time.perf_counter()
        s0 = s
        save_every = min(r.trainer.recipe.train.ckpt_interval for r in runs)

        def stats() -> dict[str, Any]:
            return {"wall_s": time.perf_counter() - t_wall, "teacher_s": shared.seconds if shared else 0.0,
                    "teacher_forwards": shared.forwards if shared else 0, "steps": s - s0,
                    "run_s": {r.planned.name: r.seconds for r in runs},
                    "teacher_runs": [r.planned.name for r in runs if r.trainer.distiller.teacher is not None]}

        while s < total:
            try:
                images, labels = next(it)
            except StopIteration:
                epoch += 1
                it = lead._epoch_iter(epoch)
                epoch_state = rng_state()
                for r in runs:
                    if r.rng is not None:
                        r.rng = epoch_state
                images, labels = next(it)
            images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
            labels = labels.to(device, non_blocking=True)
            stepped = []
            for r in runs:
                if r.step != s or r.step >= r.total:
                    continue
                if r.rng is None:  # joins the stream here: at an epoch start, or where its last.pt stopped
                    resume_rng = r.trainer._resume_rng
                    r.rng = epoch_state if s % n_batches == 0 or resume_rng is None else resume_rng
                set_rng_state(r.rng)
                t0 = time.perf_counter()
                teacher_before = shared.seconds if shared is not None else 0.0
                r.train_step(images, labels, t_start)
                dt = time.perf_counter() - t0 - ((shared.seconds - teacher_before) if shared is not None else 0.0)
                t1 = time.perf_counter()
                r.after_step(dt, t_start)
                r.seconds += dt + (time.perf_counter() - t1)
                r.rng = rng_state()
                stepped.append(r.planned.name)
            if shared is not None:
                shared.release()
            s += 1
            if bar is not None:
                bar.update(1)
            if s % save_every == 0:
                save(stats())
            if on_step is not None:
                on_step(s, stepped)
        if bar is not None:
            bar.close()
        for r in runs:
            r.finish()
        final = stats()
        save(final)
        return final
    finally:
        for r in runs:
            r.trainer.close()
