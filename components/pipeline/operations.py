"""The operations commands: `subjectflow promote`, `deploy`, `worker` and `pull` (the promotion
gate, the scheduled retrain deployment of prefect.yaml, a Prefect worker that runs it, the stage
outputs from the DVC remote)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from .processes import _stop_groups
from .usage import UsageError, _project


def cmd_promote(args) -> int:
    """The promotion gate: @candidate against @champion on the same benchmark rows (or a
    version by hand, or a rollback); exit 0 when @champion ends where the command asked, 1 when
    the gate refused."""
    from components.config import load_params
    from components.promote import Decision, PromotionError

    root = _project(args)
    load_params(root / "params.yaml")
    from flows.pipeline import promotion

    try:
        decided = promotion(project=str(root), version=args.version, rollback=args.rollback)
    except PromotionError as e:
        raise UsageError(str(e)) from None
    print(Decision(**decided).markdown())
    return 1 if decided["verdict"] == "refused" else 0


def _prefect_api(command: str) -> str:
    """The Prefect server deployments live on: $PREFECT_API_URL (or the active profile's)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UsageError(f"{command} needs a Prefect server: start one (`prefect server start`, or `subjectflow ui`) "
                         "and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    return url


def _prefect_file(root: Path) -> tuple[dict, dict]:
    """prefect.yaml's contents and its ``retrain`` deployment (a part of them)."""
    import yaml

    spec = root / "prefect.yaml"
    if not spec.is_file():
        raise UsageError(f"{root}: no prefect.yaml here (the deployments); copy it from the subjectflow checkout")
    found = yaml.safe_load(spec.read_text()) or {}
    retrain = next((d for d in found.get("deployments") or [] if d.get("name") == "retrain"), None)
    if retrain is None:
        raise UsageError(f"{spec}: no deployment named 'retrain'")
    return found, retrain


def _deployment_spec(root: Path) -> dict:
    return _prefect_file(root)[1]


def _ensure_pool(pool: str) -> bool:
    """Create the process work pool ``pool`` when the server has none by that name; True if made."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            return True


def cmd_deploy(args) -> int:
    """Register the retrain deployment of prefect.yaml (schedule and collision strategy
    overridable) on the Prefect server, creating its process work pool if needed."""
    import yaml

    root = _project(args)
    url = _prefect_api("subjectflow deploy")
    found, spec = _prefect_file(root)
    pool = args.pool or spec["work_pool"]["name"]
    if _ensure_pool(pool):
        print(f"work pool {pool!r} (process) created on {url}")
    # the options replace prefect.yaml's schedule and collision strategy (prefect deploy's own
    # --cron/--interval would add a schedule beside the nightly one), in a copy deployed instead
    if args.cron or args.interval:
        spec["schedules"] = [{"cron": args.cron, "timezone": "UTC"} if args.cron else {"interval": args.interval}]
    if args.collision:
        spec["concurrency_limit"] = {"limit": 1,
                                     "collision_strategy": {"enqueue": "ENQUEUE", "cancel": "CANCEL_NEW"}[args.collision]}
    copy = root / ".prefect-deploy.yaml"
    copy.write_text(yaml.safe_dump(found, sort_keys=False))
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(copy),
               "--name", "retrain", "--pool", pool]
    # SUBJECTFLOW_PROJECT left unset: prefect deploy would write its value into the pull step,
    # which each worker resolves from its own environment instead (subjectflow worker sets it)
    env = {k: v for k, v in os.environ.items() if k != "SUBJECTFLOW_PROJECT"}
    try:
        done = subprocess.run(command, cwd=root, env=env)
    finally:
        copy.unlink(missing_ok=True)
    if done.returncode:
        return done.returncode
    print(f"deployment subjectflow-pipeline/retrain on {url}, pool {pool!r}; run it with `subjectflow worker "
          f"--project {root}` (a worker polls the pool) or now with `prefect deployment run subjectflow-pipeline/retrain`")
    return 0


def cmd_worker(args) -> int:
    """A Prefect process worker on the retrain deployment's pool; its flow runs start in this
    project (SUBJECTFLOW_PROJECT, read by prefect.yaml's pull step)."""
    root = _project(args)
    _prefect_api("subjectflow worker")
    pool = args.pool or _deployment_spec(root)["work_pool"]["name"]
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    if args.limit:
        command += ["--limit", str(args.limit)]
    env = {**os.environ, "SUBJECTFLOW_PROJECT": str(root)}
    proc = subprocess.Popen(command, cwd=root, env=env, start_new_session=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop_groups([proc])
        return 0


def cmd_pull(args) -> int:
    """Every stage's outputs from the project's DVC remote (pipeline.dvc_remote, else the one
    .dvc/config names), then which stages are stale: in a new clone of a project that ran, none."""
    from components.config import load_params
    from components.pipeline import lineage

    root = _project(args)
    cfg = load_params(root / "params.yaml").pipeline
    lineage.configure_remote(root, cfg.dvc_remote, cfg.s3_endpoint_url)
    try:
        fetched = lineage.pull(root)
    except Exception as e:  # DVC's errors name the remote and the missing files
        raise UsageError(f"dvc pull failed: {type(e).__name__}: {e}") from None
    stale = lineage.status(root)
    print(f"{fetched} file(s) fetched; " + (f"stale: {', '.join(sorted(stale))}" if stale else "every stage is up to date"))
    return 1 if stale else 0
