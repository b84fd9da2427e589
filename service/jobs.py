"""Running one claimed job: curate → train → evaluate, each stage in its own child process.

A stage runs as ``python -m service.jobs SPEC`` so that cancelling it is terminating a process, and a
crash in torch or Beam cannot take the worker down. Stage results are files, so a job taken over by
another worker continues where it stopped: curation is skipped when the dataset's manifest exists,
training resumes from its last checkpoint (the trainer does this on the same run folder and config),
evaluation runs again. While a stage runs, the worker renews its lease, records progress and checks
for a cancel; the child dies with the worker (``PR_SET_PDEATHSIG``), and a lock on the job folder,
shared with the child, keeps a second worker out until both are gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from schemas import Manifest, storage
from scoring.progress import quiet_library_bars
from service.datasets import Layout, PathError, confined, list_artifacts, scored_dataset_id
from service.model_specs import resolve_job_model
from service.settings import Settings
from service.store import Claim, JobStore, LeaseLost
from trainer.runs import is_trained, read_json, training_progress

log = logging.getLogger(__name__)

SPAN = {"curating": (0.0, 0.3), "training": (0.3, 0.9), "evaluating": (0.9, 1.0), "publishing": (0.99, 1.0)}
STATUS = {"publishing": "evaluating"}  # a stage's job status, where it is not the stage's own name
LOCK_WAIT_S = 60.0


class StageFailed(Exception):
    """A stage process ended without success; the message is the job's error."""


class Stop(Exception):
    """The job must not go on here: ``outcome`` says why (cancelled, lost, released)."""

    def __init__(self, outcome: str):
        super().__init__(outcome)
        self.outcome = outcome


class JobRunner:
    """Runs one claimed job to a terminal status, or gives it up when the claim is lost or released."""

    def __init__(self, store: JobStore, settings: Settings, layout: Layout, claim: Claim, stop: threading.Event):
        self.store, self.settings, self.layout, self.claim, self.stop = store, settings, layout, claim, stop
        self.job = claim.job
        self.job_dir = layout.job_dir(claim.job_id)
        self.run_dir = layout.run_dir(claim.job_id)
        self.logs = self.job_dir / "logs"
        self._next_beat = 0.0
        self._checkpoint_seen = 0

    def run(self) -> str:
        """Returns the outcome: succeeded, failed, cancelled, lost (lease) or released (worker stops)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.job_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock(lock_fd)
            return self._stages(lock_fd)
        except Stop as stop:
            return self._stopped(stop.outcome)
        except LeaseLost:
            return self._stopped("lost")
        except StageFailed as e:
            return self._end("failed", f"job failed: {e}", error=str(e))
        finally:
            os.close(lock_fd)

    # --- the stages ------------------------------------------------------------------------------
    def _stages(self, lock_fd: int) -> str:
        params = self.job["params"]
        source = self.store.get_dataset(dataset_id=self.job["dataset_id"])
        input_path = self._input(source)
        if params.get("output_url"):
            self._check_output(params["output_url"])  # before hours of training, and again to publish
        from pydantic import ValidationError

        from pipeline.config import CurateConfig

        try:
            config_hash = CurateConfig.model_validate(params["curate"]).config_hash()
        except ValidationError as e:  # settings stored by an older Beacon that this one no longer takes
            raise StageFailed(f"the job's curate settings are no longer valid: {e}") from None
        scored_id = scored_dataset_id(source["id"], config_hash)
        dataset_dir = self.layout.dataset_dir(scored_id)
        base = {"job_id": self.claim.job_id, "dataset_dir": str(dataset_dir), "run_dir": str(self.run_dir),
                "data_root": str(self.layout.root), "scored_dataset_id": scored_id}

        if Manifest.exists_in(dataset_dir):
            self.store.add_event(job_id=self.claim.job_id, kind="skipped",
                                 message=f"curation skipped: dataset {scored_id} is already curated")
        else:
            self._stage("curating", {**base, "input": str(input_path),
                                     "curate": self._models_resolved(params["curate"], ("model", "encoder"))},
                        lock_fd)
        try:
            manifest = Manifest.read(dataset_dir)
        except (OSError, ValueError) as e:
            raise StageFailed(f"the curated dataset {scored_id} is unreadable: {e}") from None
        self.store.insert_dataset(
            id=scored_id, kind="scored", name=f"{source['name']} (curated)", format="parquet",
            path=dataset_dir.relative_to(self.layout.root).as_posix(), rows=manifest.counts.scored,
            source_dataset_id=source["id"], config_hash=config_hash, job_id=self.claim.job_id)
        self.store.update_job(self.claim, scored_dataset_id=scored_id)

        if is_trained(self.run_dir):
            self.store.add_event(job_id=self.claim.job_id, kind="skipped",
                                 message="training skipped: the run already reached its last step")
        else:
            train = self._models_resolved(params["train"], ("model",))
            if train.get("replay") is not None:  # checked at submission: relative to imports/
                try:
                    train["replay"] = str(confined(self.layout.imports, train["replay"]))
                except PathError as e:
                    raise StageFailed(f"the job's replay file is unusable: {e}") from None
            self._stage("training", {**base, "train": train}, lock_fd)
        self._stage("evaluating", {**base, "eval": params["eval"]}, lock_fd)
        if params.get("output_url"):
            self._publish(params["output_url"], base, lock_fd)

        metrics = json.loads((self.run_dir / "metrics.json").read_text())
        return self._end("succeeded", "job succeeded", metrics=metrics)

    def _input(self, source: dict[str, Any]) -> str:
        """Where the curation reads the job's dataset: a file under the data root, or an object-store URL
        (still allowed now: the operator may have narrowed BEACON_OBJECT_STORE_PREFIXES since)."""
        path = source["path"]
        if storage.is_url(path):
            if not self.settings.allows_url(path):
                raise StageFailed(f"the input dataset {source['id']} ({path}) is no longer under an allowed "
                                  "object-store prefix (BEACON_OBJECT_STORE_PREFIXES)")
            return path
        try:
            return str(self.layout.resolve(path))
        except PathError as e:
            raise StageFailed(f"the input dataset {source['id']} is unusable: {e}") from None

    def _check_output(self, output_url: str) -> None:
        if not self.settings.allows_url(output_url):
            raise StageFailed(f"the job's output_url {output_url} is no longer under an allowed object-store "
                              "prefix (BEACON_OBJECT_STORE_PREFIXES)")

    def _publish(self, output_url: str, base: dict[str, Any], lock_fd: int) -> None:
        self._check_output(output_url)
        target = storage.join(output_url, self.claim.job_id)
        self._stage("publishing", {**base, "publish_to": target}, lock_fd)
        self.store.add_event(job_id=self.claim.job_id, kind="published",
                             message=f"published to {target}/ (dataset/, run/)", data={"url": target})

    def _models_resolved(self, section: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        """The section with ``models/<name>`` specs turned into the folder the worker loads."""
        try:
            return {**section, **{k: resolve_job_model(section[k], self.layout) for k in keys
                                  if section.get(k) is not None}}
        except PathError as e:
            raise StageFailed(f"the job's model is unusable: {e}") from None

    def _stage(self, stage: str, spec: dict[str, Any], lock_fd: int) -> None:
        start, _ = SPAN[stage]
        self.store.update_job(self.claim, status=STATUS.get(stage, stage), stage=stage, progress=start)
        started = time.monotonic()
        spec_path = self.job_dir / f"{stage}.spec.json"
        result_path = self.job_dir / f"{stage}.result.json"
        result_path.unlink(missing_ok=True)
        spec_path.write_text(json.dumps({**spec, "stage": stage, "parent_pid": os.getpid(),
                                         "result": str(result_path)}))
        with open(self.logs / f"{stage}.log", "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.jobs", str(spec_path)], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock_fd,))
        self.store.add_event(job_id=self.claim.job_id, kind="stage", message=f"{stage} started (pid {proc.pid})",
                             data={"stage": stage, "pid": proc.pid})
        try:
            code = self._watch(proc, stage)
        finally:
            if proc.poll() is None:
                self._terminate(proc)
        result = read_json(result_path)
        if code != 0 or not result or not result.get("ok"):
            raise StageFailed(f"{stage} failed: {self._error(stage, code, result)}")
        if stage == "training":
            self._progress(stage)  # the last checkpoint may have landed after the last heartbeat
        self.store.add_event(job_id=self.claim.job_id, kind="stage_done",
                             message=f"{stage} done in {time.monotonic() - started:.1f} s",
                             data={"stage": stage, "seconds": round(time.monotonic() - started, 3)})

    def _watch(self, proc: subprocess.Popen, stage: str) -> int:
        """Waits for the stage process while keeping the lease; raises Stop on cancel, loss or stop."""
        while True:
            try:
                return proc.wait(timeout=self.settings.cancel_check_seconds)
            except subprocess.TimeoutExpired:
                pass
            if self.stop.is_set():
                raise Stop("released")
            if time.monotonic() >= self._next_beat:
                cancel = self.store.heartbeat(self.claim, lease_seconds=self.settings.lease_seconds,
                                              progress=self._progress(stage))
                self._next_beat = time.monotonic() + self.settings.heartbeat_every
            else:
                cancel = self.store.cancel_requested(self.claim)
            if cancel:
                raise Stop("cancelled")

    def _progress(self, stage: str) -> float:
        start, end = SPAN[stage]
        if stage != "training":
            return start
        step, total = training_progress(self.run_dir)
        progress = round(start + (end - start) * (step / total if total else 0.0), 4)
        if step > self._checkpoint_seen and total:
            self._checkpoint_seen = step
            self.store.add_event(job_id=self.claim.job_id, kind="checkpoint",
                                 message=f"checkpoint at step {step} of {total}",
                                 data={"step": step, "max_steps": total, "progress": progress})
        return progress

    # --- endings ---------------------------------------------------------------------------------
    def _end(self, status: str, message: str, *, error: str | None = None, metrics: dict | None = None) -> str:
        try:
            self.store.finish_job(self.claim, status=status, message=message, error=error, metrics=metrics,
                                  artifacts=list_artifacts(self.job_dir))
        except LeaseLost:
            return self._stopped("lost")
        log.info("job %s %s%s", self.claim.job_id, status, f": {error}" if error else "")
        return status

    def _stopped(self, outcome: str) -> str:
        if outcome == "cancelled":
            return self._end("cancelled", "job cancelled")
        if outcome == "released":
            self.store.release_job(self.claim, reason="the worker is stopping; the job goes back to the queue")
        else:
            log.warning("job %s: lost the lease; another worker has it now", self.claim.job_id)
        return outcome

    def _terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM to the stage's process group, SIGKILL after the grace period."""
        for sig, wait in ((signal.SIGTERM, self.settings.cancel_grace_seconds), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _lock(self, fd: int) -> None:
        """The job folder's lock; held by an old stage process that has not died yet, wait for it."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                raise Stop("released")
            if self.stop.wait(1.0):
                raise Stop("released")
            self.store.heartbeat(self.claim, lease_seconds=self.settings.lease_seconds)

    def _error(self, stage: str, code: int, result: dict | None) -> str:
        if result and result.get("error"):
            return result["error"]
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the {stage} process was killed by {name} (out of memory?)"
        tail = _tail(self.logs / f"{stage}.log")
        return f"the {stage} process exited with code {code}" + (f": {tail}" if tail else "")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_bytes()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[-800:]


# --- the stage process ------------------------------------------------------------------------------

def _die_with_parent(parent_pid: int) -> None:
    """The stage ends when its worker does, even by SIGKILL: a job never runs twice at once."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere than Linux, and for the race before prctl took effect
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _curate(spec: dict[str, Any]) -> dict[str, Any]:
    import shutil

    from pipeline.config import CurateConfig
    from pipeline.run import curate

    out = Path(spec["dataset_dir"])
    out.parent.mkdir(parents=True, exist_ok=True)
    # Two jobs may curate the same upload with the same config: one does it, the other reuses it.
    with open(out.parent / f".{out.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not Manifest.exists_in(out):
            for pattern in (f".{out.name}.staging-*", f".{out.name}.interference-*"):
                for stale in out.parent.glob(pattern):
                    shutil.rmtree(stale, ignore_errors=True)  # left by a killed curation
            curate([spec["input"]], str(out), CurateConfig.model_validate(spec["curate"]), overwrite=True)
    _warm_stats(spec)
    return {"dataset_dir": str(out)}


def _warm_stats(spec: dict[str, Any]) -> None:
    """Computes the dataset's stats now, so the API's first request for them is a cached read."""
    from service.datasets import dataset_stats, scored_files

    layout = Layout(Path(spec["data_root"]))
    dataset = {"id": spec["scored_dataset_id"],
               "path": Path(spec["dataset_dir"]).relative_to(layout.root).as_posix()}
    try:
        dataset_stats(layout, dataset, scored_files(layout, dataset, None), threads=2)
    except Exception:  # noqa: BLE001 - the API computes them on demand instead
        log.warning("could not precompute stats of %s", dataset["id"], exc_info=True)


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict

    from trainer.config import TrainConfig
    from trainer.train import train

    return asdict(train(spec["dataset_dir"], spec["run_dir"], TrainConfig.model_validate(spec["train"])))


def _evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    from trainer.config import EvalConfig
    from trainer.evaluate import evaluate

    evaluate(spec["run_dir"], EvalConfig.model_validate(spec["eval"]))
    return {"metrics": str(Path(spec["run_dir"]) / "metrics.json")}


def _publish(spec: dict[str, Any]) -> dict[str, Any]:
    from service.publish import publish_outputs

    target = spec["publish_to"]
    storage.check_location(target, "the job's output")
    return publish_outputs(Path(spec["dataset_dir"]), Path(spec["run_dir"]), target, job_id=spec["job_id"])


STAGE_FUNCTIONS = {"curating": _curate, "training": _train, "evaluating": _evaluate, "publishing": _publish}


def main(argv: list[str] | None = None) -> int:
    """``python -m service.jobs SPEC``: run one stage; the outcome goes to the spec's result file."""
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    _die_with_parent(int(spec["parent_pid"]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_library_bars()  # the stage log is a file: progress as lines (scoring.progress)
    result_path = Path(spec["result"])
    try:
        result = STAGE_FUNCTIONS[spec["stage"]](spec)
    except Exception as e:  # noqa: BLE001 - any failure is the job's error, with its traceback in the log
        log.exception("%s failed", spec["stage"])
        _write_result(result_path, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    _write_result(result_path, {"ok": True, "result": result})
    return 0


def _write_result(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
