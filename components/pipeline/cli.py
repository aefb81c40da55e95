"""`subjectflow`: the command line.

    subjectflow init DIR [--profile quick]   a new project folder
    subjectflow run            the whole pipeline (Prefect flow over the DVC stages)
    subjectflow stage NAME     one stage, through the same flow
    subjectflow status         which stages are stale and why
    subjectflow benchmark --generator NAME   score one generator on the benchmark
    subjectflow promote [--version N | --rollback]   the gate that moves @champion
    subjectflow deploy [--cron C | --interval S]      the scheduled retrain on a Prefect server
    subjectflow worker         a Prefect worker running the retrains
    subjectflow generate --model URI --ref a.png [--ref b.png ...] "prompt" --out out.png
    subjectflow ui             MLflow UI and Prefect server on 127.0.0.1
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Telemetry off; and a patient ephemeral Prefect server: its first start migrates a new database,
# which on a busy 2-core machine can take longer than Prefect's default 20 s.
for _k, _v in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
               ("DVC_NO_ANALYTICS", "1"), ("GX_ANALYTICS_ENABLED", "false"),
               ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")):
    os.environ.setdefault(_k, _v)


from .operations import cmd_deploy, cmd_promote, cmd_pull, cmd_worker  # noqa: E402
from .processes import _stop_groups  # noqa: E402
from .usage import UsageError, _project  # noqa: E402


def _whole_number(lo: int, hi: int | None = None, what: str = "a whole number"):
    """An argparse type: an int in lo..hi, else argparse's one-line error (exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if value < lo or (hi is not None and value > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{what} {bound}, got {text!r}")
        return value
    return parse


_positive_int = _whole_number(1, what="must be a whole number")
_port = _whole_number(1, 65535, what="a port is a whole number")


def _print_summary(summary: dict) -> None:
    print("\nstage        state      compute")
    for r in summary["stages"]:
        print(f"{r['stage']:<12} {r['state']:<10} {r.get('seconds', 0.0):7.1f}s")
    promoted = summary.get("promotion")
    if promoted:
        print(f"{'promote':<12} {promoted['verdict']:<10} version {promoted['version']}, champion "
              f"{promoted['champion_before']} -> {promoted['champion_after']}")
    print(f"\nflow wall time {summary['seconds']:.1f}s")
    print(f"MLflow: {summary['mlflow_url']}")


def cmd_run(args, stages=None) -> int:
    from components.config import load_params

    root = _project(args)
    load_params(root / "params.yaml")  # a typo fails here, before Prefect starts a server
    from flows.pipeline import pipeline

    summary = pipeline(project=str(root), stages=stages, force=args.force,
                       push=False if args.no_push else None)
    _print_summary(summary)
    return 0


def cmd_init(args) -> int:
    """A new project folder: the code, dvc.yaml, prefect.yaml, a params.yaml (the profile's), git
    and DVC, one commit."""
    from components.pipeline.project import PROFILES, profile_params, scaffold

    dest = Path(args.dir).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest}: exists and is not an empty folder; pick a new one")
    if args.profile not in PROFILES:
        raise UsageError(f"--profile {args.profile}: unknown; profiles: {', '.join(PROFILES)}")
    scaffold(dest, profile_params(args.profile))
    print(f"{dest}: a subjectflow project ({args.profile} profile); run it with `subjectflow run --project {dest}`")
    return 0


def cmd_stage(args) -> int:
    from components.pipeline import lineage

    names = [s.name for s in lineage.stages(_project(args))]
    if args.name not in names:  # checked here: the flow would say so only once Prefect is up
        raise UsageError(f"unknown stage {args.name!r}; dvc.yaml has {', '.join(names)}")
    return cmd_run(args, stages=[args.name])


def cmd_status(args) -> int:
    from components.pipeline import lineage

    root = _project(args)
    stale = lineage.status(root)
    for info in lineage.stages(root):
        reasons = stale.get(info.name)
        print(f"{info.name}: {'stale' if reasons else 'up to date'}")
        for r in reasons or []:
            print(f"    {r}")
    return 0


def cmd_benchmark(args) -> int:
    """Score one generator on the benchmark with the evaluation judges, outside the DAG."""
    import mlflow

    from components.benchmark.generators import available
    from components.benchmark.scoring import benchmark
    from components.config import load_params
    from components.pipeline import tracking

    root = _project(args)
    params = load_params(root / "params.yaml")
    if args.generator not in available() and not (root / "models" / args.generator / "generator_config.json").is_file():
        raise UsageError(f"unknown generator {args.generator!r}; known: {', '.join(available())}, or a trained "
                         f"generator under {root / 'models'}")
    if args.per_subset is not None:
        params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"per_subset": args.per_subset})})
    judges = root / "models" / "judges" / params.evaluate.judge_set
    if not judges.exists():
        raise UsageError(f"{judges}: no judges yet; run `subjectflow stage judges` (after synthesize) first")
    reports = root / "reports" / "benchmark" / args.generator
    tracking.setup(root, params)
    tags = {"kind": "benchmark", "generator": args.generator, "judge_set": params.evaluate.judge_set,
            **tracking.run_tags(root)}
    with mlflow.start_run(run_name=f"benchmark-{args.generator}", tags=tags) as run:
        mlflow.log_params(tracking.flatten({"evaluate": params.evaluate.model_dump()}))
        metrics = benchmark(params, root / "data" / "bench", root / "models" / "judges", reports, [args.generator],
                            models=root / "models")
        timings = metrics.pop("timings", {})  # named as the flow names a stage's: timing.*
        mlflow.log_metrics(tracking.numeric_metrics({**metrics, "timing": timings}))
        mlflow.log_artifacts(str(reports), artifact_path="benchmark")
    print((reports / "table.md").read_text())
    print(f"reports: {reports}\nMLflow: {tracking.run_url(run)}")
    return 0


def _image_out(path: str) -> Path:
    """``--out``, checked before any work: an image type Pillow writes, in a folder that exists
    or can be made, and can be written."""
    from PIL import Image

    out = Path(path)
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name ending in .png")
    Image.init()
    if Image.registered_extensions().get(out.suffix.lower()) not in Image.SAVE:
        raise UsageError(f"--out {out}: {out.suffix or 'no extension'} is not an image type; end the name in .png")
    folder = out.parent
    while not folder.exists():  # the nearest existing folder is where the missing ones get made
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"--out {out}: {folder} is a file, so no folder can be made in it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {folder} is not writable")
    return out


def cmd_generate(args) -> int:
    """An image from a registered generator (models:/subjectflow-generator@candidate, any
    MLflow model URI) or a local generator folder (models/sft)."""
    from components.models import pyfunc

    try:
        return _generate(args, pyfunc)
    except pyfunc.RequestError as e:  # the prompt, references, steps, guidance or model path
        raise UsageError(str(e)) from None


def _generate(args, pyfunc) -> int:
    import mlflow
    from mlflow.exceptions import MlflowException
    from PIL import Image

    from components.pipeline import tracking

    # Everything that can be checked before a model loads (minutes, for a real one).
    pyfunc.check_request(args.prompt, len(args.ref), args.steps, args.guidance, pyfunc.max_refs(args.model),
                         args.seed)
    out = _image_out(args.out)
    refs = [pyfunc.read_image(path, f"--ref {path}") for path in args.ref]
    if not pyfunc.is_local_generator(args.model):
        root = Path(args.project).resolve()
        if (root / "params.yaml").exists():
            from components.config import load_params

            mlflow.set_tracking_uri(tracking.tracking_uri(root, load_params(root / "params.yaml")))
    try:
        sample = pyfunc.load(args.model)
    except pyfunc.RequestError as e:  # a local path holding no generator (the message names it)
        raise UsageError(f"--model {e}") from None
    except MlflowException as e:  # a URI that does not resolve: no such model, alias, version or run
        raise UsageError(f"--model {args.model}: {tracking.redact_uri(e.message.strip().splitlines()[0])}") from None
    image = sample(args.prompt, refs, seed=args.seed, steps=args.steps, guidance=args.guidance)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out)
    print(f"{out} ({image.shape[1]}x{image.shape[0]}) from {args.model}")
    return 0


def _check_ports(ports: dict[str, int]) -> None:
    """Each server's port is its own and free on 127.0.0.1: a server that cannot bind would only
    say so in its log."""
    if len(set(ports.values())) < len(ports):
        raise UsageError(f"{' and '.join(ports)} are both {next(iter(ports.values()))}; give each server its own port")
    for flag, port in ports.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                raise UsageError(f"{flag} {port}: cannot listen on 127.0.0.1:{port} ({e.strerror}); "
                                 f"pass another {flag}") from None


def cmd_ui(args) -> int:
    from components.config import load_params
    from components.pipeline import tracking

    root = _project(args)
    params = load_params(root / "params.yaml")
    store = tracking.tracking_uri(root, params)
    _check_ports({"--mlflow-port": args.mlflow_port, "--prefect-port": args.prefect_port})
    # Ctrl-C (SIGINT) and SIGTERM both stop the servers, even when SIGINT came in ignored (a
    # shell starts background jobs that way, and Python then never raises KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The servers write to log files, not to our stdout: a worker a server leaves behind (MLflow
    # 3 starts some in a session of their own) would otherwise hold our caller's pipe open.
    logs = root / ".ui-logs"
    logs.mkdir(exist_ok=True)
    # Each server in its own process group: both spawn workers, and stopping only the parent
    # would orphan them (still bound to the port).
    commands = {
        "mlflow": [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
                   "--host", "127.0.0.1", "--port", str(args.mlflow_port)],
        "prefect": [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                    "--port", str(args.prefect_port)],
    }
    procs = []
    for name, command in commands.items():
        with open(logs / f"{name}.log", "ab") as log:
            procs.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    print(f"MLflow UI:      http://127.0.0.1:{args.mlflow_port}  (store {tracking.redact_uri(store)})")
    print(f"Prefect server: http://127.0.0.1:{args.prefect_port}")
    print(f"Server logs:    {logs}/mlflow.log, {logs}/prefect.log")
    print("Ctrl-C stops both.", flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        died = [name for name, p in zip(commands, procs) if p.poll() is not None]
        _stop_groups(procs)
    if died:
        print(f"subjectflow ui: the {died[0]} server stopped by itself; see {logs / died[0]}.log", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subjectflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        p = sub.add_parser(name, help=help)
        p.add_argument("--project", default=".", help="project folder holding dvc.yaml and params.yaml")
        p.set_defaults(fn=fn)
        return p

    p = sub.add_parser("init", help="create a new project folder (git, DVC, params.yaml)")
    p.add_argument("dir", help="the folder to create (new or empty)")
    p.add_argument("--profile", default="default",
                   help="default (the full pipeline, about an hour on 2 cores) or quick (every stage in minutes)")
    p.set_defaults(fn=cmd_init)
    for name, fn, help in (("run", cmd_run, "run the whole pipeline"), ("stage", cmd_stage, "run one stage")):
        p = add(name, fn, help)
        if name == "stage":
            p.add_argument("name", help="stage name from dvc.yaml")
        p.add_argument("--force", action="store_true", help="rerun even if DVC finds nothing changed")
        p.add_argument("--no-push", action="store_true", help="do not `dvc push` at the end")
    add("status", cmd_status, "which stages are stale and why")
    p = add("benchmark", cmd_benchmark, "score one generator on the benchmark (PSRBench-style)")
    p.add_argument("--generator", required=True,
                   help="oracle, copy_paste, background_only, noise, or a trained generator under models/ (pretrain)")
    p.add_argument("--per-subset", type=_positive_int, default=None,
                   help="rows per subset (default: params.evaluate.per_subset)")
    p = add("promote", cmd_promote, "move @champion to @candidate if the gate passes (or by hand, or back)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=_positive_int, default=None,
                       help="promote this version by hand (the gate still reports what it would decide)")
    which.add_argument("--rollback", action="store_true", help="move @champion back to the version it replaced")
    p = add("deploy", cmd_deploy, "register the scheduled retrain deployment (prefect.yaml) on the Prefect server")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None, help="schedule instead of prefect.yaml's (e.g. '0 3 * * *')")
    when.add_argument("--interval", type=_positive_int, default=None, help="schedule every N seconds instead")
    p.add_argument("--collision", choices=("enqueue", "cancel"), default=None,
                   help="a run due while one runs waits (enqueue, prefect.yaml's) or is cancelled")
    p.add_argument("--pool", default=None, help="work pool (default: prefect.yaml's, created if missing)")
    add("pull", cmd_pull, "fetch every stage's outputs from the DVC remote (pipeline.dvc_remote) and check them")
    p = add("worker", cmd_worker, "run a Prefect worker that executes the retrain deployment's runs")
    p.add_argument("--pool", default=None, help="work pool (default: prefect.yaml's)")
    p.add_argument("--limit", type=_positive_int, default=None, help="at most N flow runs at once on this worker")
    p = add("generate", cmd_generate, "generate an image from a registered or local generator")
    p.add_argument("--model", required=True,
                   help="models:/subjectflow-generator@candidate (any MLflow model URI) or a generator folder")
    p.add_argument("--ref", action="append", default=[], help="reference image of subject k (\"image k\"), in order")
    p.add_argument("prompt", help='e.g. "the cat from image 1 left of the robot from image 2, in a forest"')
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="ODE steps (default: what the generator records, the benchmark's setting)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, 1 = off (default: what the generator records)")
    p = add("ui", cmd_ui, "start the MLflow UI and a Prefect server on 127.0.0.1")
    p.add_argument("--mlflow-port", type=_port, default=5000)
    p.add_argument("--prefect-port", type=_port, default=4200)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.config import ParamsError

    try:
        return args.fn(args)
    except (ParamsError, UsageError) as e:
        print(f"subjectflow {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
