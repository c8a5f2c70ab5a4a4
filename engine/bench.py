"""Benchmarks: how long the studio's jobs take, against the targets users were promised.

``run_bench(options)`` measures, each several times (median and spread): model load; one image
(20 steps, CFG) through the studio's generator *and* through a plain diffusers
``StableDiffusionPipeline`` call with the same settings in the same run (their ratio says whether our
wrapper costs anything); the after-grid refresh (a strength change, then four images); the closed-form
methods with 1, 10 and 100 concepts; the fine-tuning methods per iteration and for their default
iteration count; every export format; and the peak memory of each job.

Two scales: ``builtin`` (the ShapesWorld model) and ``sd15``, a Stable Diffusion 1.5-sized pipeline
built from the bundled SD 1.x skeleton with random weights (costs do not depend on weight values),
saved once as a diffusers folder so that "load" goes through the studio's real loader.

Everything a run finds is a ``BenchReport`` (``engine.bench_report``, with the targets and the writers):
JSON-able, with hardware, library versions and date, so runs on different machines can be compared. A job that
fails or is not available yet is recorded as such and the run goes on: a benchmark should report as much as it can.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import engine  # noqa: F401  (offline switches first)
from engine.bench_report import BenchReport, Measurement, evaluate_targets
from engine.jobs import InputError, Progress

GROUPS = ("load", "generate", "refresh", "closed-form", "export", "fine-tune")  # the order they run in
SCALES = ("builtin", "sd15")
CLOSED_FORM = ("uce", "speed", "rece")
FINE_TUNE = ("esd-x", "ca")
CONCEPT_COUNTS = (1, 10, 100)
STEPS = 20
SD15_SIZE = 512
# single-file fp16 first: it has a target, and a GPU lease may end before the slower fp32 writes
EXPORTS = (("single-file", "fp16"), ("single-file", "fp32"), ("diffusers", "fp32"), ("lora", "fp32"),
           ("edit", "fp32"))
BENCH_PROMPT = {"builtin": "a red circle", "sd15": "a photo of a cat sitting on a wooden table"}


@dataclass
class BenchOptions:
    """What to measure. ``repeat`` None means 5 runs (3 with ``quick``) of cheap jobs; jobs over a
    minute run once. ``only`` limits the run to some of ``GROUPS``; ``size`` overrides the image
    size (smoke tests of the sd15 path on a CPU); ``json_out`` is rewritten after every measurement,
    so a run that is killed still leaves what it measured. Past ``deadline_s`` no new job starts; the
    rest are recorded as "skipped"."""

    device: str = "cpu"
    scale: str = "builtin"
    quick: bool = False
    repeat: int | None = None
    only: tuple[str, ...] = ()
    concept_counts: tuple[int, ...] = CONCEPT_COUNTS
    quick_iterations: int = 5
    size: int | None = None
    json_out: Path | None = None
    workdir: Path | None = None
    deadline_s: float | None = None  # stop starting new measurements after this many seconds (GPU leases)

    def validate(self) -> None:
        if self.scale not in SCALES:
            raise InputError(f"Unknown scale {self.scale!r}; choose builtin or sd15.")
        unknown = [g for g in self.only if g not in GROUPS]
        if unknown:
            raise InputError(f"Unknown benchmark group {unknown[0]!r}; choose from {', '.join(GROUPS)}.")
        if self.repeat is not None and self.repeat < 1:
            raise InputError("--repeat must be at least 1.")
        if any(n < 1 for n in self.concept_counts):
            raise InputError("Concept counts must be at least 1.")
        if self.size is not None and (self.size < 8 or self.size % 8):
            raise InputError("The image size must be a multiple of 8.")

    def wants(self, group: str) -> bool:
        return not self.only or group in self.only

    @property
    def runs(self) -> int:
        return self.repeat or (3 if self.quick else 5)


# ---------------------------------------------------------------- environment
def hardware_info(device: str) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu or "unknown", "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform(), "memory_bytes": _total_memory(), "gpu": None,
                            # OpenMP's spin-waiting decides CPU timings on a busy machine; record how it was set
                            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = int(props.total_memory)
        info["cuda"] = torch.version.cuda
    return info


def _total_memory() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
        return int(re.search(r"MemTotal:\s+(\d+)", text).group(1)) * 1024  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        return None


def library_versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------- timing and memory
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _status_kib(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(rf"{field_name}:\s+(\d+)\s+kB", text)
    return int(found.group(1)) * 1024 if found else None


class PeakMemory:
    """Peak memory of one job. CUDA: ``torch.cuda.max_memory_allocated``. CPU: the process's peak
    resident set (VmHWM in /proc/self/status) after resetting it through /proc/self/clear_refs; where
    that reset is not allowed, a thread samples VmRSS every 10 ms instead (it can miss short spikes)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0

    def __enter__(self) -> Self:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        if not _reset_peak_rss():
            self._sampled = _status_kib("VmRSS") or 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._sampled = max(self._sampled, _status_kib("VmRSS") or 0)

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = self._sampled or None
        else:
            self.peak = _status_kib("VmHWM")


_CLEAR_REFS_WORKS: list[bool] = []


def _reset_peak_rss() -> bool:
    if _CLEAR_REFS_WORKS == [False]:
        return False
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
    except OSError:
        _CLEAR_REFS_WORKS[:] = [False]
        return False
    _CLEAR_REFS_WORKS[:] = [True]
    return True


class Recorder:
    """Collects measurements, prints a line per run to ``log``, rewrites ``json_out`` after each one."""

    def __init__(self, report: BenchReport, options: BenchOptions, log: Callable[[str], None]) -> None:
        self.report, self.options, self.log = report, options, log
        self.started = time.perf_counter()

    def out_of_time(self) -> bool:
        limit = self.options.deadline_s
        return limit is not None and time.perf_counter() - self.started > limit

    def skip(self, key: str, group: str, title: str) -> Measurement:
        return self.add(Measurement(key, group, title, status="skipped", note="the run's time limit was reached"))

    def add(self, measurement: Measurement) -> Measurement:
        self.report.measurements.append(measurement)
        self.save()
        return measurement

    def save(self) -> None:
        if self.options.json_out is None:
            return
        from engine.atomic import atomic_path

        self.report.targets = evaluate_targets(self.report, self.options)
        with atomic_path(Path(self.options.json_out)) as tmp:
            Path(tmp).write_text(json.dumps(self.report.to_json(), indent=1), encoding="utf-8")

    def measure(self, key: str, group: str, title: str, job: Callable[[], Any], runs: int, warmup: bool = False,
                note: str = "") -> Measurement:
        """Run ``job`` ``runs`` times (after one untimed warm-up run if asked); a failure is recorded, not raised."""
        if self.out_of_time():
            return self.skip(key, group, title)
        m = Measurement(key, group, title, note=note)
        try:
            if warmup:
                job()
            for i in range(runs):
                if i and self.out_of_time():
                    break
                seconds, peak, _ = self.time_once(job)
                m.seconds.append(seconds)
                m.peak_memory_bytes = max(m.peak_memory_bytes or 0, peak or 0) or None
                self.log(f"  {title}: {seconds:.3f} s")
        except Exception as exc:  # noqa: BLE001  (one failing job must not end the benchmark)
            m.status = "failed"
            m.note = (m.note + "; " if m.note else "") + _one_line(exc)
            self.log(f"  {title}: FAILED {m.note}")
        return self.add(m)

    def time_once(self, job: Callable[[], Any]) -> tuple[float, int | None, Any]:
        device = self.options.device
        with PeakMemory(device) as memory:
            _sync(device)
            start = time.perf_counter()
            result = job()
            _sync(device)
            seconds = time.perf_counter() - start
        return seconds, memory.peak, result


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "user_message", None) or f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())[:300]


# ---------------------------------------------------------------- the sd15-sized model
def build_sd15_folder(target: Path, device: str, dtype: Any) -> Path:
    """Write an SD 1.5-sized diffusers folder with random weights, built from the bundled SD 1.x skeleton.

    No weights file is read: every component comes from its config (``from_config``). Weights are
    created directly on ``device`` (fast on a GPU) and saved in ``dtype``, as a downloaded fp16 or fp32
    model would be.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from engine.model import CLIP_TOKENIZER, SKELETONS, _quiet_libraries, _skeleton_tokenizer_kwargs

    _quiet_libraries()
    skeleton = SKELETONS / "sd1"
    if (target / "model_index.json").is_file():
        return target
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(skeleton), subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(skeleton), subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(skeleton / "text_encoder")))
    tokenizer = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER), local_files_only=True,
                                              **_skeleton_tokenizer_kwargs(skeleton))
    scheduler = DDIMScheduler.from_pretrained(str(skeleton), subfolder="scheduler", local_files_only=True)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype=dtype)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    tmp.rename(target)
    del pipe, unet, vae, text_encoder
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return target


# ---------------------------------------------------------------- concept lists
def concept_list(model: Any, count: int) -> list[str]:
    """``count`` distinct concepts: on the built-in model its world's vocabulary, then generated phrases
    ("a crimson disk", "a blue star by Kusama"); on a real model the bundled common-concepts list."""
    from engine import closed_form as cf
    from engine.concept_lists import read_concepts_file

    if not model.is_builtin:
        words = read_concepts_file(cf.COMMON_CONCEPTS_FILE)
        if count > len(words):
            raise InputError(f"The bundled concept list has only {len(words)} entries.")
        return words[:count]
    from engine.shapesworld import all_style_phrases, load_world

    world = load_world()
    items = list(cf.vocabulary_sample(model))
    colors = [n for c, v in world["colors"].items() for n in (c, *v["synonyms"])]
    shapes = [n for s, v in world["shapes"].items() for n in (s, *v["synonyms"])]
    phrasings = all_style_phrases()
    items += [f"a {c} {s}" for c in colors for s in shapes]
    items += [f"a {c} {s} {p}" for p in phrasings for c in colors for s in shapes]
    seen: set[str] = set()
    unique = [x for x in items if not (x.lower() in seen or seen.add(x.lower()))]
    return unique[:count]


# ---------------------------------------------------------------- fine-tuning cost model
@dataclass
class PhaseTimes:
    """A fine-tuning run split by its progress reports: sampling the training latents, then iterations."""

    sampling_s: float = 0.0
    sampling_work: int = 0  # trajectory-steps (one trajectory advanced by one DDIM step)
    iteration_s: list[float] = field(default_factory=list)
    setup_s: float = 0.0


class PhaseClock:
    """A progress callback that timestamps every report and sorts them into phases by their message."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []
        self.start = time.perf_counter()

    def __call__(self, p: Progress) -> None:
        if p.step > 0:
            self.events.append((time.perf_counter(), p.message))

    def phases(self) -> PhaseTimes:
        out = PhaseTimes()
        last = self.start
        first_iteration = True
        for stamp, message in self.events:
            dt = stamp - last
            last = stamp
            if message.startswith("sampling"):
                out.sampling_s += dt
                found = re.search(r"\((\d+) trajector", message)
                out.sampling_work += int(found.group(1)) if found else 1
            elif message.startswith("iteration"):
                if first_iteration:  # holds the copy of the trainable weights; counted as setup
                    out.setup_s += dt
                    first_iteration = False
                out.iteration_s.append(dt)
        return out


def default_sampling_work(method: str, params: dict[str, Any], seed: int) -> int:
    """Trajectory-steps the method's default run samples before training, from its sampling plan.

    ESD draws (trajectory, DDIM step) per training sample and advances each trajectory to the last step
    it needs (engine/esd.py); Concept Ablation runs every anchor image to the end. An estimate for the
    extrapolation only: if a method changes its plan, this still gives the right order of magnitude.
    """
    if method == "ca":
        return int(params["anchor_images"]) * int(params["sample_steps"])
    samples = int(params["iterations"]) * int(params.get("batch_size", 1))
    n_traj = max(1, min(int(params["trajectories"]), samples))
    steps = int(params["ddim_steps"])
    rng = random.Random(seed)
    last = [-1] * n_traj
    for k in range(samples):
        traj, step = k % n_traj, rng.randrange(steps)
        last[traj] = max(last[traj], step)
    return sum(x + 1 for x in last)


# ---------------------------------------------------------------- the run
def run_bench(options: BenchOptions, log: Callable[[str], None] = lambda _: None) -> BenchReport:
    """Measure everything ``options`` asks for; see the module doc."""
    from engine.model import resolve_device

    options.validate()
    device, dtype = resolve_device(options.device, None)
    options.device = device
    started = time.perf_counter()
    report = BenchReport(options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
                         hardware=hardware_info(device), versions=library_versions(),
                         date=_dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds"),
                         load_average={"start": load_average()})
    rec = Recorder(report, options, log)
    with _workdir(options) as work:
        model = _bench_load(rec, options, device, dtype, work)
        if model is not None:
            _bench_all(rec, options, model, work)
    report.load_average["end"] = load_average()
    report.total_s = time.perf_counter() - started
    report.targets = evaluate_targets(report, options)
    rec.save()
    return report


@contextlib.contextmanager
def _workdir(options: BenchOptions) -> Iterator[Path]:
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        yield options.workdir
        return
    with tempfile.TemporaryDirectory(prefix="erasure-bench-") as tmp:
        yield Path(tmp)


def _bench_load(rec: Recorder, options: BenchOptions, device: str, dtype: Any, work: Path) -> Any:
    """Load the model (timed when the load group is wanted) and return it for the other groups."""
    from engine.model import load_model

    source = "builtin"
    if options.scale == "sd15":
        rec.log(f"Building an SD 1.5-sized model with random weights in {work} ...")
        built = time.perf_counter()
        source = str(build_sd15_folder(work / "sd15-random", device, dtype))
        rec.log(f"  model folder ready in {time.perf_counter() - built:.1f} s")
    holder: list[Any] = []

    def load() -> None:
        holder.clear()
        _free(device)
        holder.append(load_model(source, device=device, dtype=dtype))

    if options.wants("load"):
        rec.log("Model load")
        runs = min(options.runs, 3)
        m = rec.measure("load", "load", "model load", load, runs, warmup=True,
                        note="diffusers folder through engine.model.load_model, after one warm-up load")
        if m.status != "ok":
            return None
    else:
        load()
    return holder[-1]


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _bench_all(rec: Recorder, options: BenchOptions, model: Any, work: Path) -> None:
    import torch

    from engine.edits import EditDelta

    size = options.size or (SD15_SIZE if options.scale == "sd15" else None)
    prompt = BENCH_PROMPT[options.scale]
    # A stand-in edit on every cross-attention key/value projection (what UCE touches), so that the refresh
    # and export measurements do not depend on the erasure methods being ready.
    gen = torch.Generator("cpu").manual_seed(0)
    deltas = {}
    for name, param in model.pipe.unet.named_parameters():
        if "attn2.to_k" in name or "attn2.to_v" in name:
            deltas[f"unet.{name}"] = torch.randn(param.shape, generator=gen) * 1e-3
    edit = EditDelta.create(model.pipe, deltas, "bench", concepts={"targets": ["bench"]}, params={})

    if options.wants("generate"):
        _bench_generate(rec, options, model, prompt, size)
    if options.wants("refresh"):
        _bench_refresh(rec, options, model, edit, prompt, size)
    if options.wants("closed-form"):
        _bench_closed_form(rec, options, model)
    # export before fine-tuning: the fine-tuning runs are the longest, and a GPU lease's deadline should cut
    # them rather than the export target
    if options.wants("export"):
        _bench_export(rec, options, model, edit, work)
    if options.wants("fine-tune"):
        _bench_fine_tune(rec, options, model)


def _bench_generate(rec: Recorder, options: BenchOptions, model: Any, prompt: str, size: int | None) -> None:
    """The studio's generator and a plain diffusers call, alternated run by run so drift hits both alike."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from engine.generate import GenerationRequest, generate

    if rec.out_of_time():
        rec.skip("generate.studio", "generate", "studio generate")
        return
    rec.log(f"Generation: 1 image, {STEPS} steps, CFG, studio vs plain diffusers")
    pipe = model.pipe
    guidance = 7.5 if options.scale == "sd15" else 5.0
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height = width = size or default
    plain = StableDiffusionPipeline(**pipe.components)
    plain.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    plain.set_progress_bar_config(disable=True)

    def studio() -> None:
        generate(model, GenerationRequest(prompt, seeds=[0], steps=STEPS, guidance=guidance, width=width,
                                          height=height))

    def diffusers_call() -> None:
        plain(prompt, num_inference_steps=STEPS, guidance_scale=guidance, height=height, width=width,
              generator=torch.Generator("cpu").manual_seed(0), output_type="pil")

    a = Measurement("generate.studio", "generate", f"studio generate, 1 image {width}px, {STEPS} steps",
                    note="engine.generate.generate")
    b = Measurement("generate.diffusers", "generate", f"plain diffusers, 1 image {width}px, {STEPS} steps",
                    note="StableDiffusionPipeline(**components) with the same scheduler and settings")
    try:
        studio()
        diffusers_call()  # warm-up of both
        for i in range(options.repeat or max(options.runs, 5)):  # noisy: at least 5 pairs unless told
            if i >= 2 and rec.out_of_time():
                break
            pair = ((a, studio), (b, diffusers_call))
            for m, job in pair if i % 2 == 0 else pair[::-1]:  # alternate who goes first: no order bias
                seconds, peak, _ = rec.time_once(job)
                m.seconds.append(seconds)
                m.peak_memory_bytes = max(m.peak_memory_bytes or 0, peak or 0) or None
                rec.log(f"  {m.title}: {seconds:.3f} s")
    except Exception as exc:  # noqa: BLE001
        a.status = b.status = "failed"
        a.note = b.note = _one_line(exc)
    if a.median and b.median:
        # The target compares medians; the ratio of the fastest runs is less sensitive to a busy machine.
        a.extra["ratio"] = round(a.median / b.median, 4)
        a.extra["ratio_of_fastest"] = round(min(a.seconds) / min(b.seconds), 4)
        rec.log(f"  ratio studio/diffusers: {a.extra['ratio']:.3f} (fastest runs: {a.extra['ratio_of_fastest']:.3f})")
    rec.add(a)
    rec.add(b)


def _bench_refresh(rec: Recorder, options: BenchOptions, model: Any, edit: Any, prompt: str,
                   size: int | None) -> None:
    from engine.generate import GenerationRequest, generate

    rec.log("After-grid refresh: strength change, then 4 images")
    model.stack.push(edit, 1.0)
    strengths = iter([0.5, 1.0] * 50)

    weights_s: list[float] = []

    def refresh() -> None:
        start = time.perf_counter()
        model.stack.set_strength(0, next(strengths))
        _sync(options.device)
        weights_s.append(time.perf_counter() - start)
        generate(model, GenerationRequest(prompt, seeds=[0, 1, 2, 3], steps=STEPS, width=size, height=size))

    try:
        m = rec.measure("refresh", "refresh", f"refresh: set_strength + 4 images, {STEPS} steps", refresh,
                        options.runs, warmup=True, note="edit on every cross-attention key/value projection")
        if weights_s:
            m.extra["set_strength_s"] = round(statistics.median(weights_s), 5)
            m.note += f"; set_strength alone {m.extra['set_strength_s'] * 1000:.1f} ms"
            rec.save()
    finally:
        model.stack.clear()


def _bench_closed_form(rec: Recorder, options: BenchOptions, model: Any) -> None:
    from engine.methods import EraseRequest, all_methods, erase

    available = all_methods()
    for method in CLOSED_FORM:
        for count in options.concept_counts:
            key, title = f"{method}.{count}", f"{method.upper()} {count} concept{'s' if count > 1 else ''}"
            if method not in available:
                rec.add(Measurement(key, "closed-form", title, status="not available",
                                    note="not registered in engine.methods.all_methods()"))
                continue
            rec.log(title)
            try:
                targets = concept_list(model, count)
            except Exception as exc:  # noqa: BLE001
                rec.add(Measurement(key, "closed-form", title, status="failed", note=_one_line(exc)))
                continue
            runs = options.runs if count < 100 else min(options.runs, 3)
            rec.measure(key, "closed-form", title, lambda m=method, t=targets: erase(model, EraseRequest(m, list(t))),
                        runs, note="engine.methods.erase, default parameters; the model is unchanged after")


def _bench_fine_tune(rec: Recorder, options: BenchOptions, model: Any) -> None:
    """Per-iteration cost and the cost of the default number of iterations.

    Full runs time the default run itself. ``quick`` runs few iterations, measures the phases (sampling the
    training latents per trajectory-step, training per iteration) and extrapolates to the defaults."""
    from engine.methods import EraseRequest, all_methods, erase

    available = all_methods()
    for method in FINE_TUNE:
        title = {"esd-x": "ESD-x", "ca": "Concept Ablation"}[method]
        if method not in available:
            for suffix in ("iteration", "default"):
                rec.add(Measurement(f"{method}.{suffix}", "fine-tune", f"{title} {suffix}", status="not available",
                                    note="not registered in engine.methods.all_methods()"))
            continue
        if rec.out_of_time():
            for suffix in ("iteration", "default"):
                rec.skip(f"{method}.{suffix}", "fine-tune", f"{title} {suffix}")
            continue
        spec = available[method]
        defaults = spec.resolve_params({})
        target = concept_list(model, 1)
        overrides: dict[str, Any] = {}
        if options.quick:
            overrides = {"iterations": options.quick_iterations}
            if method == "ca":
                overrides["anchor_images"] = min(defaults["anchor_images"], 8)
        rec.log(f"{title}: {'quick run of ' + str(options.quick_iterations) if options.quick else 'default'} "
                f"iterations ({defaults['iterations']} by default)")
        clock = PhaseClock()
        try:
            clock.start = time.perf_counter()
            seconds, peak, _ = rec.time_once(lambda c=clock, o=overrides, m=method, t=target: erase(
                model, EraseRequest(m, list(t), params=dict(o)), progress=c))
        except Exception as exc:  # noqa: BLE001
            for suffix in ("iteration", "default"):
                rec.add(Measurement(f"{method}.{suffix}", "fine-tune", f"{title} {suffix}", status="failed",
                                    note=_one_line(exc)))
            continue
        phases = clock.phases()
        per_iter = statistics.median(phases.iteration_s) if phases.iteration_s else None
        it = Measurement(f"{method}.iteration", "fine-tune", f"{title} per iteration",
                         seconds=list(phases.iteration_s[1:] or phases.iteration_s), peak_memory_bytes=peak,
                         note="training step only; from the progress reports of one run")
        it.extra = {"sampling_s": round(phases.sampling_s, 3), "sampling_trajectory_steps": phases.sampling_work}
        rec.add(it)
        if not options.quick:
            rec.add(Measurement(f"{method}.default", "fine-tune",
                                f"{title} {defaults['iterations']} iterations (default)", seconds=[seconds],
                                peak_memory_bytes=peak, note="one full run with the default parameters"))
            continue
        params = {**defaults, **overrides}
        per_work = phases.sampling_s / phases.sampling_work if phases.sampling_work else 0.0
        work_default = default_sampling_work(method, defaults, 0)
        overhead = max(0.0, seconds - phases.sampling_s - sum(phases.iteration_s))
        estimate = overhead + per_work * work_default + (per_iter or 0.0) * defaults["iterations"]
        rec.add(Measurement(
            f"{method}.default", "fine-tune", f"{title} {defaults['iterations']} iterations (default), EXTRAPOLATED",
            seconds=[estimate], status="extrapolated", peak_memory_bytes=peak,
            note=(f"extrapolated from {params['iterations']} iterations: {per_iter or 0:.3f} s/iteration, "
                  f"{per_work * 1000:.1f} ms per trajectory-step x {work_default} for the default sampling"
                  + (f", {overhead:.1f} s other" if overhead >= 0.1 else "")),
            extra={"measured_run_s": round(seconds, 3), "measured_iterations": params["iterations"]}))


def _bench_export(rec: Recorder, options: BenchOptions, model: Any, edit: Any, work: Path) -> None:
    from engine.export import ExportRequest, export

    model.stack.push(edit, 1.0)
    try:
        for fmt, dtype in EXPORTS:
            out = work / "exports" / (f"bench-{fmt}-{dtype}" + ("" if fmt == "diffusers" else ".safetensors"))
            title = f"export {fmt} {dtype}"
            rec.log(title)

            def job(out: Path = out, fmt: str = fmt, dtype: str = dtype) -> None:
                remove = out if out.exists() else None
                if remove is not None:
                    shutil.rmtree(remove) if remove.is_dir() else remove.unlink()
                export(model, ExportRequest(format=fmt, out=out, dtype=dtype))

            # whole-model writes of an SD 1.5-sized model take tens of seconds each: fewer runs
            big = options.scale == "sd15" and fmt in ("diffusers", "single-file")
            runs = min(options.runs, (2 if dtype == "fp16" else 1) if big else 3)
            m = rec.measure(f"export.{fmt}.{dtype}", "export", title, job, runs,
                            note="engine.export.export, written, reloaded and checked")
            if out.exists():
                from engine.export.writer import path_size

                m.extra["bytes"] = path_size(out)
                shutil.rmtree(out) if out.is_dir() else out.unlink()
                rec.save()
    finally:
        model.stack.clear()


# ---------------------------------------------------------------- presentation
