"""Training runs: one row per training of a knowledge base's retriever or generator.

`training_run_start` validates the request, freezes a dataset snapshot and queues the row;
`training_run_execute` (the `training` queue's Celery task) is the engine that moves it:
it builds the training inputs from the snapshot's train split, calls a trainer in rag.training,
and registers the result as a candidate model version with its lineage. The UI and the CLI
only read the row: status, progress, heartbeat, log and error.

One run per knowledge base and component at a time, guarded twice: `training_run_start`
refuses a second queued or running run (Conflict), and `training_run_execute` holds a Postgres
session advisory lock on (knowledge base, component) for the whole training. A run whose
lock is held by another process stays queued and its task retries later (see
training.tasks): the holder is either a live run, which ends, or a run the sweeper failed
while its process was still going, which sees that at its next step and stops.

A redelivered task message finds its run finished or running and does nothing; a run's row
never goes back from running to queued, so a run is trained at most once. A killed worker
leaves its run running with a stale heartbeat; `training_runs_fail_stalled` (beat, every
minute) marks it failed, and then a new run can start.

Outputs go to artifacts_root()/<kb slug>/<component>/<run id>/, written once, then
checksummed by model_version_register. Nothing here touches CUDA at import time: models
load inside the trainers, which run only inside the task.

Where things are (imports run one way: engine -> lifecycle, trainers; lifecycle -> parameters;
trainers -> inputs; all of them -> shared; only this __init__ imports engine):
- parameters: the parameter schema, each mode's defaults, and the checks made before a run
  is queued (MODES, MODE_PARAMETERS).
- lifecycle: the row's life outside the engine: start (and enqueue), cancel, fail a run that
  waited too long for its lock, sweep stalled runs (stall_seconds, the heartbeat check).
- engine: training_run_execute and its Outcome, the component lock, registering the
  candidate version, code_revision, run_output_folder, and TRAINERS (mode -> adapter).
- shared: Reporter (progress, heartbeat, log, stop check) and Trained (what an adapter
  returns), used by the engine, the inputs and the trainers.
- inputs: training inputs from the snapshot: train examples, the live retriever and its
  top-k chunks, mined negatives, passages judged as whole documents turned into chunks.
- trainers.retriever (contrastive, LSR) and trainers.generator (LoRA RA-DIT, LoRA RAFT,
  OpenAI): one adapter per mode, from the inputs to a trainer in rag.training.
"""

from training.services.runs.engine import (
    TRAINERS,
    WAITING_FOR_LOCK,
    Outcome,
    code_revision,
    retriever_candidates_evaluate_when_ready,
    run_output_folder,
    training_run_execute,
)
from training.services.runs.lifecycle import (
    stall_seconds,
    training_run_cancel,
    training_run_fail_waiting,
    training_run_start,
    training_runs_fail_stalled,
)
from training.services.runs.parameters import (
    GENERATOR_MODES,
    LABEL_FREE_MODES,
    MODE_PARAMETERS,
    MODES,
    PARAMETERS,
    RETRIEVER_MODES,
)

__all__ = [
    "GENERATOR_MODES",
    "LABEL_FREE_MODES",
    "MODES",
    "MODE_PARAMETERS",
    "PARAMETERS",
    "RETRIEVER_MODES",
    "TRAINERS",
    "WAITING_FOR_LOCK",
    "Outcome",
    "code_revision",
    "retriever_candidates_evaluate_when_ready",
    "run_output_folder",
    "stall_seconds",
    "training_run_cancel",
    "training_run_execute",
    "training_run_fail_waiting",
    "training_run_start",
    "training_runs_fail_stalled",
]
