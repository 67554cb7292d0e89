"""What Slurm says about a driver's jobs: one ``sacct`` call per poll, ``squeue`` when accounting does not answer.

``sacct`` (Slurm's accounting database, slurmdbd) knows every job's final state; without accounting it exits 1
("Slurm accounting storage is disabled"), and when slurmdbd is down it fails or lags. The controller (``squeue``)
knows every job that is pending or running, and ended ones for ``MinJobAge`` (300 s by default). So a job is:

- alive while either source says it is pending, running, requeued, completing or suspended;
- ended with the state ``sacct`` or ``squeue`` gives once it left those states, or when the controller no longer
  knows it at all (``GONE``: it ended more than ``MinJobAge`` ago and accounting has no record of it);
- ``UNKNOWN`` (counted as alive) only while neither command answers, e.g. the controller itself is down.

Jobs pending for a reason that waiting does not resolve (``PartitionConfig``, ``BadConstraints``, a partition that is
down, …) are reported once, naming the flag that usually causes it.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)

# Job states in which a job still has work to do (Slurm's squeue/sacct state names).
ALIVE_STATES = frozenset(
    {
        "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
        "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
    }
)  # fmt: skip
GONE = "GONE"  # the controller no longer knows the job and accounting has no record: it ended long ago
UNKNOWN = "UNKNOWN"  # neither sacct nor squeue answered
# Pending reasons that no amount of waiting resolves, with the --slurm-* flag that usually causes them.
HOPELESS_REASONS = {
    "PartitionConfig": "--slurm-cpus, --slurm-gpus or --slurm-mem (more than any node of the partition has)",
    "PartitionNodeLimit": "--slurm-cpus or --slurm-gpus (more than the partition's per-node limit)",
    "PartitionTimeLimit": "--slurm-time (longer than the partition's MaxTime)",
    "BadConstraints": "--slurm-cpus, --slurm-gpus or --slurm-mem (no node has that combination)",
    "InvalidQOS": "the account's QOS (ask the cluster's administrators)",
    "InvalidAccount": "the account (ask the cluster's administrators)",
    "PartitionDown": "--slurm-partition (the partition is down)",
    "PartitionInactive": "--slurm-partition (the partition is inactive)",
}
_TIMEOUT_S = 60  # a scheduler command slower than this counts as not answering


def expand_job_ids(field: str) -> list[str]:
    """Job ids of one ``sacct``/``squeue`` JobID field: ``5_[1-3%2]`` → ``5_1, 5_2, 5_3``; ``7`` → ``7``."""
    from submitit.slurm.slurm import read_job_id

    ids = []
    for parts in read_job_id(field):
        if len(parts) == 1:
            ids.append(parts[0])
        else:
            first, last = int(parts[1]), int(parts[-1])
            ids += [f"{parts[0]}_{index}" for index in range(first, last + 1)]
    return ids


def _run(command: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 1, "", str(exc))


class SlurmQueue:
    """States of a set of Slurm job ids, refreshed with one ``sacct`` (and at most one ``squeue``) per call."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self._warned: set[str] = set()

    def refresh(self, job_ids: Iterable[str]) -> None:
        """Ask Slurm about ``job_ids`` (array tasks like ``5_0``, or plain ids) and store their states."""
        wanted = {str(job_id) for job_id in job_ids}
        if not wanted:
            return
        mains = sorted({job_id.split("_")[0] for job_id in wanted})
        states = self._sacct(mains)
        unsure = {job_id for job_id in wanted if states.get(job_id, "PENDING") == "PENDING"}
        if unsure:  # not in accounting (yet, or at all), or pending: the controller knows more
            queued = self._squeue(sorted({job_id.split("_")[0] for job_id in unsure}))
            for job_id in unsure:
                if queued is None:
                    states.setdefault(job_id, UNKNOWN)
                elif job_id in queued:
                    states[job_id] = queued[job_id]
                elif job_id not in states:
                    states[job_id] = GONE
        self.states.update({job_id: states[job_id] for job_id in wanted})
        self._report_hopeless(wanted)

    def state(self, job_id: str) -> str:
        """The last known state (``RUNNING``, ``COMPLETED``, ``CANCELLED``, …, ``GONE`` or ``UNKNOWN``)."""
        return self.states.get(str(job_id), UNKNOWN)

    def alive(self, job_id: str) -> bool:
        """Whether the job may still run (an unknown state counts as alive: never settle on a guess)."""
        state = self.state(job_id)
        return state == UNKNOWN or state in ALIVE_STATES

    def _sacct(self, mains: list[str]) -> dict[str, str]:
        proc = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(mains)])
        if proc is None or proc.returncode != 0:
            message = (proc.stderr or proc.stdout).strip().splitlines()[-1:] if proc is not None else []
            self._warn_once(
                "sacct",
                "sacct does not answer (%s); using squeue instead, which forgets a job some minutes after it ends "
                "(Slurm's MinJobAge); enable Slurm accounting (slurmdbd) for exact final states",
                message[0] if message else "no output",
            )
            return {}
        states: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            field, _, state = line.partition("|")
            if field.strip():
                for job_id in expand_job_ids(field.strip()):
                    states[job_id] = state.split()[0] if state.split() else UNKNOWN
        return states

    def _squeue(self, mains: list[str]) -> dict[str, str] | None:
        """``{job id: state}`` from the controller; ``{}`` when it knows none of them; ``None`` when it fails."""
        proc = _run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T|%r", "-j", ",".join(mains)])
        if proc is None:
            return None
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:  # none of them is known any more
                return {}
            self._warn_once("squeue", "squeue does not answer either (%s); waiting", proc.stderr.strip()[:200])
            return None
        states: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            fields = line.split("|")
            if len(fields) == 3:
                for job_id in expand_job_ids(fields[0].strip()):
                    states[job_id] = fields[1].strip()
                    self.reasons[job_id] = fields[2].strip()
        return states

    def _report_hopeless(self, job_ids: set[str]) -> None:
        for job_id in sorted(job_ids):
            reason = self.reasons.get(job_id, "")
            if self.state(job_id) == "PENDING" and reason in HOPELESS_REASONS:
                self._warn_once(
                    f"reason:{reason}",
                    "slurm job %s stays pending (Slurm reason %s) and will not start as things are; check %s, "
                    "or cancel the jobs (scancel), fix that and continue with --resume",
                    job_id,
                    reason,
                    HOPELESS_REASONS[reason],
                )

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)
