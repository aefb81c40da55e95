"""Scheduled retrains for real: a `prefect server start` on 127.0.0.1 in a temporary home,
`subjectflow deploy` registering prefect.yaml's retrain deployment with an interval schedule,
`subjectflow worker` running it. The schedule fires; a run started through `run_deployment` while
the scheduled one runs waits for it (ENQUEUE), finds nothing stale and promotes nothing; with
`--collision cancel` a second run is cancelled instead."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

import components.pipeline.tracking  # noqa: F401 - reads $MLFLOW_TRACKING_URI once, before these tests set it
from tests.conftest import make_project, tiny_params

pytestmark = pytest.mark.integration
DEPLOYMENT = "subjectflow-pipeline/retrain"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server (its scheduler runs, unlike the test harness's) on 127.0.0.1, in
    its own home; the environment that reaches it; stopped after."""
    port = _free_port()
    # no MLflow store from an earlier test: the worker's runs must use the project's own
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env = {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
           "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2",
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    log = open(tmp_path / "prefect-server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the Prefect server did not start; see {tmp_path / 'prefect-server.log'}")
            time.sleep(1)
    try:
        yield env
    finally:
        from components.pipeline.cli import _stop_groups

        _stop_groups([server])
        log.close()


def _client(env):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Client:  # the real server, whatever test harness this process may have started
        def __enter__(self):
            self.settings = temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]})
            self.settings.__enter__()
            self.client = get_client(sync_client=True).__enter__()
            return self.client

        def __exit__(self, *exc):
            self.client.__exit__(*exc)
            self.settings.__exit__(*exc)
    return Client()


def _runs(env) -> list:
    from prefect.client.schemas.sorting import FlowRunSort

    with _client(env) as client:
        return client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def _deployment(env):
    with _client(env) as client:
        return client.read_deployment_by_name(DEPLOYMENT)


def _wait(env, predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = _runs(env)
        if predicate(runs):
            return runs
        time.sleep(2)
    raise TimeoutError(f"{what}: runs {[(r.name, r.state_name) for r in _runs(env)]}")


def _cli(env, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components.pipeline.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, **kw)


def test_a_scheduled_retrain_fires_and_a_second_run_waits_for_it(prefect_server, tmp_path):
    env = prefect_server
    root = make_project(tmp_path / "p", tiny_params())
    # a path in the deploying shell's SUBJECTFLOW_PROJECT is not baked in: each worker resolves its own
    deployed = _cli({**env, "SUBJECTFLOW_PROJECT": "/nowhere"}, "deploy", "--project", str(root), "--interval", "20")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "work pool 'subjectflow' (process) created" in deployed.stdout
    deployment = _deployment(env)
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                      {"directory": "{{ $SUBJECTFLOW_PROJECT }}"}}]
    # --interval replaces prefect.yaml's nightly schedule rather than adding one beside it
    assert [s.schedule.interval.total_seconds() for s in deployment.schedules] == [20.0]
    assert not (root / ".prefect-deploy.yaml").exists()
    listing = subprocess.run([sys.executable, "-m", "prefect", "deployment", "ls"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert "subjectflow-pipeline/retrain" in listing.stdout.replace(" ", "")  # the table may wrap
    print(listing.stdout)
    worker = subprocess.Popen([sys.executable, "-m", "components.pipeline.cli", "worker", "--project", str(root)],
                              env=env, stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        # the schedule fires within seconds, and its first run runs the whole pipeline
        runs = _wait(env, lambda rs: any(r.state_name == "Running" for r in rs), 240, "the scheduled run never started")
        scheduled = next(r for r in runs if r.state_name == "Running")
        assert scheduled.auto_scheduled
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            second = run_deployment(DEPLOYMENT, timeout=0, as_subflow=False)
        time.sleep(10)
        states = {r.id: r.state_name for r in _runs(env)}
        assert states[scheduled.id] == "Running" and states[second.id] in ("AwaitingConcurrencySlot", "Scheduled",
                                                                           "Pending")
        runs = _wait(env, lambda rs: all(r.state_name in ("Completed", "Failed", "Crashed", "Cancelled")
                                         for r in rs if r.id in (scheduled.id, second.id)), 900,
                     "the runs did not finish")
        by_id = {r.id: r for r in runs}
        for r in runs:  # the record a reviewer reads with -s: which run the schedule made, when each ran
            print(f"{r.name}: {r.state_name}, auto_scheduled={r.auto_scheduled}, start {r.start_time}, end {r.end_time}")
        assert by_id[scheduled.id].state_name == "Completed", (tmp_path / "worker.log").read_text()[-3000:]
        assert by_id[second.id].state_name == "Completed"
        assert by_id[second.id].start_time >= by_id[scheduled.id].end_time  # never overlapped
    finally:
        from components.pipeline.cli import _stop_groups

        _stop_groups([worker])
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    pipelines = mlflow.search_runs(search_all_experiments=True, filter_string="tags.kind = 'pipeline'",
                                   order_by=["attributes.start_time ASC"], output_format="list")
    # the scheduled run and the one run_deployment started (the schedule may have started more meanwhile)
    by_flow_run = {r.data.tags.get("prefect.flow_run_id"): r for r in pipelines}
    first, again = by_flow_run[str(scheduled.id)], by_flow_run[str(second.id)]
    assert first.data.tags["promotion.verdict"] == "promoted"  # the first champion (floors 0 in tiny params)
    assert again.data.metrics["flow.stages_ran"] == 0 and again.data.tags["promotion.verdict"] == "unchanged"
    mlflow.set_tracking_uri(None)

    # --collision cancel: of two runs at once, the second is cancelled instead of waiting (a
    # schedule that never comes due here, and the runs the old one queued removed)
    redeployed = _cli(env, "deploy", "--project", str(root), "--cron", "0 0 1 1 *", "--collision", "cancel")
    assert redeployed.returncode == 0, redeployed.stdout + redeployed.stderr
    deployment = _deployment(env)
    assert [getattr(s.schedule, "cron", None) for s in deployment.schedules] == ["0 0 1 1 *"]
    assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"
    with _client(env) as client:
        for r in client.read_flow_runs():
            if r.state_name not in ("Completed", "Failed", "Crashed", "Cancelled"):
                client.delete_flow_run(r.id)
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        pair = [run_deployment(DEPLOYMENT, timeout=0, as_subflow=False) for _ in range(2)]
    worker = subprocess.Popen([sys.executable, "-m", "components.pipeline.cli", "worker", "--project", str(root)],
                              env=env, stdout=open(tmp_path / "worker2.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        ids = {r.id for r in pair}
        runs = _wait(env, lambda rs: all(r.state_name in ("Completed", "Cancelled", "Failed", "Crashed")
                                         for r in rs if r.id in ids), 600, "the pair did not finish")
        assert sorted(r.state_name for r in runs if r.id in ids) == ["Cancelled", "Completed"]
    finally:
        from components.pipeline.cli import _stop_groups

        _stop_groups([worker])
    worker.wait()
    assert worker.returncode in (0, -signal.SIGTERM, -signal.SIGKILL)
