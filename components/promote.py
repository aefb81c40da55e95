"""Promotion: the gate that moves ``@champion`` (the model in use) to ``@candidate``.

Not a DVC stage: it decides about the registry and produces no file DVC should cache. The flow
runs it after a whole-pipeline run (``promote.auto``), ``subjectflow promote`` by hand.

The gate compares the candidate with the champion **on the same benchmark rows**: both versions'
per-row scores (logged by the register stage, named by their ``bench.scores_uri`` tag) go through
the benchmark's paired bootstrap (``benchmark.report.compare``). It promotes only if

- Overall SC of candidate - champion has its 95% interval's low end above ``promote.margins.SC``,
- Overall SA's and AES's low ends are not below ``-margins.SA`` and ``-margins.AES``.

With no champion yet the candidate must reach ``promote.floors`` (its Overall scores). Two
versions scored by other benchmarks (``versions.BENCH_IDENTITY``: the rows, the judge set's files
and name, the scoring settings and code) are not compared: when the candidate was scored by the
project's benchmark as it is today, the champion is first scored on it too (``rescore.py``,
``promote.rescore``); otherwise the gate refuses and says which differs.

A version rolled back is never promoted again by the gate (only by hand), so the next nightly
run does not undo a rollback.

Every decision (promoted or not, each number it used, the previous champion) goes on the
candidate version's ``promotion.*`` tags, into an MLflow run (the flow's, or a ``promote`` run)
and, inside a Prefect run, into a Markdown artifact. ``--version N`` promotes by hand (the gate
still reports what it would have decided); ``--rollback`` moves ``@champion`` back to the
version it replaced. Promotions never race: deciding and moving the alias happen under one lock
(a file lock beside a local MLflow store, a Prefect global concurrency limit for a remote one),
with the champion re-read inside it.
"""
from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .benchmark.report import compare
from .config import Params
from .pipeline.versions import BENCH_IDENTITY, SCORES_URI_TAG

DIMENSIONS = ("SC", "SA", "AES")
LIMIT_NAME = "subjectflow-promotion"


class PromotionError(RuntimeError):
    """A promotion that cannot be decided: no candidate, no such version, nothing to roll back to."""


@dataclass
class Decision:
    """What the gate decided and everything it used."""

    model_name: str
    action: str  # gate | manual | rollback
    version: int | None  # the version the decision is about (the candidate; rollback: the restored one)
    champion_before: int | None
    champion_after: int | None
    promoted: bool
    verdict: str  # promoted | refused | unchanged | rolled back
    reasons: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)  # one per rule: dimension, value, bound, passed
    comparison: list[dict] = field(default_factory=list)  # the paired bootstrap, every subset and dimension
    benchmark: dict = field(default_factory=dict)
    time: str = ""

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def markdown(self) -> str:
        """The decision as a reviewer reads it."""
        subject = f"version {self.version}" if self.version is not None else "no version"
        lines = [f"# Promotion of {self.model_name} {subject}: {self.verdict}", "",
                 f"- action: {self.action}", f"- champion before: {_v(self.champion_before)}",
                 f"- champion after: {_v(self.champion_after)}", f"- decided: {self.time}"]
        lines += [f"- {r}" for r in self.reasons]
        if self.benchmark:
            lines += ["", "Benchmark: " + ", ".join(f"{k} `{v}`" for k, v in self.benchmark.items())]
        if self.checks:
            lines += ["", "Rules: floor.X: Overall X >= bound; X.better: the interval's low end > bound; "
                      "X.not_worse: the low end >= bound.", "",
                      "| rule | value | bound | passed |", "|---|---|---|---|"]
            lines += [f"| {c['rule']} | {c['value']:+.4f} | {c['bound']:+.4f} | {'yes' if c['passed'] else 'no'} |"
                      for c in self.checks]
        if self.comparison:
            lines += ["", "candidate - champion, paired bootstrap 95% intervals:", "",
                      "| subset | dimension | rows | difference | low | high |", "|---|---|---|---|---|---|"]
            lines += [f"| {c['subset']} | {c['dimension']} | {c['samples']} | {c['difference']:+.4f} | "
                      f"{c['low']:+.4f} | {c['high']:+.4f} |" for c in self.comparison]
        return "\n".join(lines) + "\n"

    def tags(self) -> dict[str, str]:
        """The ``promotion.*`` tags of the version the decision is about."""
        out = {"promotion.verdict": self.verdict, "promotion.action": self.action, "promotion.time": self.time,
               "promotion.champion_before": _v(self.champion_before),
               "promotion.reasons": " | ".join(self.reasons)[:4900]}
        for c in self.checks:
            out[f"promotion.check.{c['rule']}"] = f"{c['value']:+.4f} vs {c['bound']:+.4f}: " + \
                ("passed" if c["passed"] else "failed")
        for c in self.comparison:
            if c["subset"] == "Overall":
                for k in ("difference", "low", "high"):
                    out[f"promotion.Overall.{c['dimension']}.{k}"] = f"{c[k]:.4f}"
        return out


def _v(version: int | None) -> str:
    return "none" if version is None else str(version)


# --- reading the registry -----------------------------------------------------------------------

# What the registry answers when a model or an alias does not exist; any other error (the server
# down, a timeout) is raised, never read as "no champion".
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def aliased(client, name: str, alias: str):
    """The version ``alias`` points at, None when it points nowhere."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in MISSING:
            return None
        raise


def existing_version(client, name: str, version: int | str):
    """Version ``version`` of ``name``; PromotionError when the registry has no such version."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if e.error_code in MISSING:
            raise PromotionError(f"{name} has no version {version}") from None
        raise


def version_rows(version) -> pd.DataFrame:
    """A version's per-row benchmark scores (the register stage logged them)."""
    import mlflow

    uri = version.tags.get(SCORES_URI_TAG)
    if not uri:
        raise PromotionError(f"version {version.version} has no {SCORES_URI_TAG} tag: register it again "
                             "(`subjectflow stage register --force`) so its per-row scores are logged")
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_csv(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))


def overall(version) -> dict[str, float]:
    """A version's Overall benchmark scores, from its tags."""
    return {d: float(version.tags.get(f"bench.Overall.{d}", "nan")) for d in DIMENSIONS}


# --- the gate -----------------------------------------------------------------------------------

def gate(params: Params, candidate, champion) -> tuple[bool, list[str], list[dict], list[dict]]:
    """(passed, reasons, checks, comparison) for ``candidate`` against ``champion`` (None: the
    floors)."""
    cfg = params.promote
    if champion is None:
        scores = overall(candidate)
        checks = [{"rule": f"floor.{d}", "value": scores[d], "bound": getattr(cfg.floors, d),
                   "passed": bool(scores[d] >= getattr(cfg.floors, d))} for d in DIMENSIONS]
        unscored = [d for d in DIMENSIONS if not math.isfinite(scores[d])]
        failed = [d for d, c in zip(DIMENSIONS, checks) if not c["passed"] and d not in unscored]
        reason = "no champion yet: the candidate's Overall scores against promote.floors" + \
            (f"; below the floor in {', '.join(failed)}" if failed else "") + \
            (f"; no Overall score in {', '.join(unscored)} (its bench.Overall tags)" if unscored else "")
        return not (failed or unscored), [reason], checks, []
    differs = [k for k in BENCH_IDENTITY if candidate.tags.get(k) != champion.tags.get(k)]
    if differs:
        detail = "; ".join(f"{k}: candidate {candidate.tags.get(k, 'missing')}, champion {champion.tags.get(k, 'missing')}"
                           for k in differs)
        how = ("the champion is scored on the project's benchmark first only when the candidate was scored on it, "
               "and this one was not: run the pipeline so evaluate and register score it today"
               if cfg.rescore else "promote.rescore is off: turn it on to score the champion on the project's benchmark")
        return False, [f"not comparable: the two versions were scored by other benchmarks ({detail}); {how}; "
                       "or promote by hand with --version"], [], []
    rows = pd.concat([version_rows(candidate).assign(generator="candidate"),
                      version_rows(champion).assign(generator="champion")])
    subsets = sorted(rows["subset"].unique())
    try:
        table = compare(rows, "champion", "candidate", subsets, cfg.resamples, cfg.seed)
    except ValueError as e:
        return False, [f"not comparable: {e}"], [], []
    comparison = table.drop(columns=["baseline", "candidate"]).round(6).to_dict(orient="records")
    low = {r["dimension"]: r["low"] for r in comparison if r["subset"] == "Overall"}
    checks = [{"rule": "SC.better", "value": low["SC"], "bound": cfg.margins.SC,
               "passed": bool(low["SC"] > cfg.margins.SC)}]
    checks += [{"rule": f"{d}.not_worse", "value": low[d], "bound": -getattr(cfg.margins, d),
                "passed": bool(low[d] >= -getattr(cfg.margins, d))} for d in ("SA", "AES")]
    failed = [c["rule"] for c in checks if not c["passed"]]
    reason = "candidate - champion on the same benchmark rows, Overall 95% intervals against promote.margins" + \
        (f"; failed: {', '.join(failed)}" if failed else "")
    return not failed, [reason], checks, comparison


# --- the lock -----------------------------------------------------------------------------------

def _local_store(uri: str) -> Path | None:
    """The file or folder of a local MLflow store, None for a server."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme.startswith("sqlite"):
        return Path(uri.split(":///", 1)[1])
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


@contextlib.contextmanager
def promotion_lock(tracking_uri: str, timeout: float):
    """Held while a promotion decides and moves the alias. A local store: a file lock beside
    it (every process that can reach the store can reach the lock). A tracking server: the
    Prefect global concurrency limit ``subjectflow-promotion`` (limit 1, created when missing),
    which every worker of the team's Prefect server shares."""
    store = _local_store(tracking_uri)
    if store is not None:
        from filelock import FileLock, Timeout

        lock = store.with_name(store.name + ".promotion.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock), timeout=timeout):
                yield
        except Timeout:
            raise PromotionError(f"another promotion held {lock} for {timeout:.0f}s; try again") from None
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # an ephemeral server per process would give every promotion its own lock
        raise PromotionError(f"the MLflow store {tracking_uri} is a server: promotions lock through the team's "
                             "Prefect server, and PREFECT_API_URL is not set")
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(LIMIT_NAME)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another promotion made it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=LIMIT_NAME, limit=1))
            limit = client.read_global_concurrency_limit_by_name(LIMIT_NAME)
    if limit.limit != 1 or not limit.active:
        raise PromotionError(f"the Prefect concurrency limit {LIMIT_NAME!r} must be active with limit 1 to keep "
                             f"promotions apart (it is {'active' if limit.active else 'inactive'}, limit {limit.limit}); "
                             f"`prefect gcl update {LIMIT_NAME} --limit 1 --enable`")
    try:
        with concurrency(LIMIT_NAME, occupy=1, timeout_seconds=timeout, strict=True):
            yield
    except TimeoutError:
        raise PromotionError(f"another promotion held the Prefect concurrency limit {LIMIT_NAME!r} for "
                             f"{timeout:.0f}s; try again") from None


# --- promoting ----------------------------------------------------------------------------------

def decide(params: Params, client, version: int | None = None, rollback: bool = False) -> Decision:
    """Decide and move the alias (call under ``promotion_lock``): the gate on ``@candidate`` (or
    on ``version``, promoted whatever the gate says), or a rollback."""
    name, alias = params.register_.model_name, params.promote.alias
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    champion = aliased(client, name, alias)
    before = int(champion.version) if champion else None
    if rollback:
        if champion is None:
            raise PromotionError(f"{name} has no @{alias}: nothing to roll back")
        previous = champion.tags.get("promotion.champion_before", "none")
        if previous == "none":
            raise PromotionError(f"@{alias} is version {before}, the first champion: there is no previous one")
        try:
            existing_version(client, name, previous)
        except PromotionError:
            raise PromotionError(f"@{alias} replaced version {previous}, which is no longer in the registry: "
                                 "promote a version by hand with --version") from None
        client.set_registered_model_alias(name, alias, previous)
        client.set_model_version_tag(name, str(before), "promotion.rolled_back", f"to {previous} at {now}")
        return Decision(name, "rollback", int(previous), before, int(previous), True, "rolled back",
                        [f"@{alias} moved back from version {before} to version {previous}, the champion it replaced"],
                        time=now)
    if version is not None:
        candidate = existing_version(client, name, version)
        action = "manual"
    else:
        candidate = aliased(client, name, params.register_.alias)
        if candidate is None:
            raise PromotionError(f"{name} has no @{params.register_.alias}: run the pipeline (its register stage) first")
        action = "gate"
    number = int(candidate.version)
    bench = {k: candidate.tags.get(k, "missing") for k in BENCH_IDENTITY}
    if before == number:
        return Decision(name, action, number, before, before, False, "unchanged",
                        [f"version {number} already is @{alias}"], benchmark=bench, time=now)
    rolled_back = candidate.tags.get("promotion.rolled_back")
    if rolled_back and action == "gate":  # a rollback is a decision the next gate run must not undo
        passed, reasons, checks, comparison = False, [
            f"version {number} was rolled back ({rolled_back}): the gate does not promote it again; "
            "promote it by hand with --version"], [], []
    elif action == "manual":  # by hand: the gate only reports, and its errors do not stop the promotion
        try:
            passed, reasons, checks, comparison = gate(params, candidate, champion)
        except PromotionError as e:
            passed, reasons, checks, comparison = False, [f"the gate could not decide: {e}"], [], []
        reasons.append(f"promoted by hand; the gate would have {'promoted' if passed else 'refused'} it")
    else:
        passed, reasons, checks, comparison = gate(params, candidate, champion)
    promote = passed or action == "manual"
    if promote:
        client.set_registered_model_alias(name, alias, str(number))
        if rolled_back:
            client.delete_model_version_tag(name, str(number), "promotion.rolled_back")
    decision = Decision(name, action, number, before, number if promote else before, promote,
                        "promoted" if promote else "refused", reasons, checks, comparison, bench, now)
    for k, v in decision.tags().items():
        client.set_model_version_tag(name, str(number), k, v)
    return decision


def promote(params: Params, root: Path, version: int | None = None, rollback: bool = False) -> Decision:
    """Decide under the lock, then record the decision in MLflow (the active run, or a new
    ``promote`` run) and, inside a Prefect run, as a Markdown artifact."""
    import mlflow

    from .pipeline import tracking

    tracking.setup(root, params)
    client = mlflow.MlflowClient()
    if params.promote.rescore and not rollback:
        from .rescore import rescore_champion

        rescore_champion(params, root, client, version)
    with promotion_lock(mlflow.get_tracking_uri(), params.promote.lock_timeout_seconds):
        decision = decide(params, client, version, rollback)
    record(decision)
    return decision


def record(decision: Decision) -> None:
    """The decision in MLflow and, inside a Prefect run, as the artifact ``promotion``."""
    import mlflow

    opened = contextlib.nullcontext(mlflow.active_run()) if mlflow.active_run() else \
        mlflow.start_run(run_name=f"promote-{decision.action}", tags={"kind": "promote"})
    with opened:
        mlflow.log_dict(decision.as_dict(), "promotion/decision.json")
        mlflow.log_text(decision.markdown(), "promotion/decision.md")
        mlflow.set_tags({"promotion.verdict": decision.verdict, "promotion.version": _v(decision.version),
                         "promotion.champion_before": _v(decision.champion_before),
                         "promotion.champion_after": _v(decision.champion_after)})
    with contextlib.suppress(ImportError):
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() or TaskRunContext.get():
            from prefect.artifacts import create_markdown_artifact

            create_markdown_artifact(decision.markdown(), key="promotion",
                                     description=f"{decision.model_name}: {decision.verdict}")
