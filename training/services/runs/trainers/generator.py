"""Generator trainer adapters: a LoRA adapter on a local causal LM, trained RA-DIT or RAFT
style, and an OpenAI fine-tuning job.

Every mode trains on what serving hands the generator: a follow-up's question as the user
asked it after the conversation's earlier messages (within serving's history budget, and
`max_history_tokens` of the model's tokenizer for LoRA or `max_history_words` for openai),
not the self-contained rewrite that retrieval used.

The OpenAI trainer writes the uploaded file's id and the job's id onto the run
(TrainingRun.remote_state) as soon as each exists; a later execution of the same run (after
its worker died) follows that job instead of starting a second, paid one."""

import json
import os
from pathlib import Path

from django.conf import settings
from django.db import transaction

from knowledge.artifact_store import artifact_relative_path
from knowledge.errors import InvalidInput
from knowledge.models import Chunk, KnowledgeBase
from training.models import TrainingRun
from training.services.runs import inputs
from training.services.runs.shared import Reporter, Trained, run_checkpointing
from training.services.snapshots import history_as_served


def _train_adapter(*, run: TrainingRun, folder: Path, reporter: Reporter, pairs, method: str) -> Trained:
    from rag.training import generator as generator_training

    parameters = run.parameters
    reporter.phase(f"training a LoRA adapter ({method}) on {len(pairs)} prompt/answer pairs", low=0.0, high=0.95)
    result = generator_training.train_lora(
        base_model_path=parameters["base_model"],
        pairs=pairs,
        output_path=folder,
        mode=method,
        epochs=parameters["epochs"],
        learning_rate=parameters["learning_rate"],
        warmup_ratio=parameters["warmup_ratio"],
        lora_r=parameters["lora_r"],
        lora_alpha=parameters["lora_alpha"],
        lora_dropout=parameters["lora_dropout"],
        batch_size=parameters["batch_size"],
        # A run queued before the parameter existed takes the default.
        gradient_accumulation_steps=parameters.get("gradient_accumulation_steps", 1),
        max_length=parameters["max_length"],
        # A run queued before the parameter existed takes the default.
        max_history_tokens=parameters.get("max_history_tokens", generator_training.DEFAULT_MAX_HISTORY_TOKENS),
        seed=parameters["seed"],
        device=parameters.get("device"),
        progress=reporter.progress,
        should_stop=reporter.should_stop,
        checkpointing=run_checkpointing(run=run, folder=folder, reporter=reporter),
    )
    fields = {
        "generator_backend": KnowledgeBase.GeneratorBackend.HF,
        "generator_model": parameters["base_model"],
        # Relative to the artifacts folder, as model references: serving resolves it through the
        # artifact store (knowledge.services.turns.generator_for), on whichever machine it runs.
        "generator_adapter_path": artifact_relative_path(path=folder),
    }
    return Trained(folder, fields, result.parameters, result.training_curve)


def train_lora_radit(*, run: TrainingRun, folder: Path, reporter: Reporter) -> Trained:
    from rag.training import generator as generator_training

    top_k = run.parameters["top_k"]
    examples = []
    # Examples tagged "answer not grounded" or "answer incomplete" are repeated (inputs.weighted).
    for example in inputs.weighted(run, inputs.train_examples(run)):
        if not example.gold_answer.strip():
            continue
        # The chunks retrieved when the turn was served (frozen in the snapshot), plus any
        # relevant passage a curator attached that the retriever missed.
        passages = [p.text for p in example.retrieved[:top_k]]
        seen = {inputs.text_key(text) for text in passages}
        passages += [p.text for p in example.relevant if inputs.text_key(p.text) not in seen]
        examples.append(
            generator_training.GeneratorTrainingExample(
                query=example.user_question, answer=example.gold_answer.strip(), passages=passages,
                history=history_as_served(example.history),
            )  # fmt: skip
        )
    if not examples:
        raise InvalidInput("No training example has a gold answer.")
    pairs = generator_training.build_radit_examples(examples)
    return _train_adapter(run=run, folder=folder, reporter=reporter, pairs=pairs, method="radit")


def train_lora_raft(*, run: TrainingRun, folder: Path, reporter: Reporter) -> Trained:
    from rag.datasets import LabeledPassage, export_raft
    from rag.training import generator as generator_training

    parameters = run.parameters
    # Random distractors come from the corpus; a fixed slice keeps the run repeatable.
    pool = [
        LabeledPassage(text=text, document_id=external_id, chunk_id=pk, title=title)
        for pk, text, external_id, title in Chunk.objects.filter(knowledge_base_id=run.knowledge_base_id)
        .order_by("pk")
        .values_list("pk", "text", "document__external_id", "document__title")[:5000]
    ]
    records = export_raft(
        inputs.weighted(run, inputs.train_examples(run)),
        distractors=parameters["distractors"],
        oracle_probability=parameters["oracle_probability"],
        seed=parameters["seed"],
        random_pool=pool,
    )
    if not records.records:
        raise InvalidInput(f"No training example could become a RAFT record (left out: {records.skipped}).")
    examples = [
        generator_training.GeneratorTrainingExample(
            query=record["question"], answer=record["answer"], passages=record["context"], cot_answer=record["cot_answer"],
            history=history_as_served(record["history"]),
        )
        for record in records
    ]
    pairs = generator_training.build_raft_examples(examples)
    return _train_adapter(run=run, folder=folder, reporter=reporter, pairs=pairs, method="raft")


def _remote_state_record(run: TrainingRun, **values) -> None:
    """Merge `values` into the run's remote state, committed at once (the trainer runs outside a transaction)."""
    with transaction.atomic():
        row = TrainingRun.objects.select_for_update().only("remote_state").get(pk=run.pk)
        row.remote_state = {**row.remote_state, **values}
        row.save(update_fields=["remote_state"])
    run.remote_state = row.remote_state


def openai_retry_policy():
    from rag.training.openai_jobs import RetryPolicy

    return RetryPolicy(
        max_attempts=int(settings.RAGLOOP_OPENAI_RETRY_ATTEMPTS),
        max_total_wait=float(settings.RAGLOOP_OPENAI_RETRY_MAX_WAIT_SECONDS),
    )


def train_openai(*, run: TrainingRun, folder: Path, reporter: Reporter) -> Trained:
    from rag.datasets import export_openai
    from rag.training import openai_jobs

    parameters = run.parameters
    export = export_openai(
        inputs.weighted(run, inputs.train_examples(run)),
        max_passages=parameters["max_passages"],
        # A run queued before the parameter existed shows what serving shows.
        max_history_words=parameters.get("max_history_words", settings.RAGLOOP_CHAT_HISTORY_TOKENS),
    )
    if not export.records:
        raise InvalidInput(f"No training example could become an OpenAI chat record (left out: {export.skipped}).")
    folder.mkdir(parents=True, exist_ok=True)
    jsonl_path = folder / "training.jsonl"
    jsonl_path.write_text("".join(json.dumps(record) + "\n" for record in export.records), encoding="utf-8")
    api_key = os.environ.get("OPENAI_API_KEY", "")
    retry = openai_retry_policy()
    remote = run.remote_state or {}
    if remote.get("job_id"):
        # An earlier execution of this run started the job and its worker died: follow that job.
        base_url, file_id, job_id = remote["base_url"], remote.get("training_file", ""), remote["job_id"]
        reporter.phase(f"re-attached to fine-tuning job {job_id} (training file {file_id}); waiting for it", low=0.05, high=0.95)
    else:
        base_url = parameters.get("base_url") or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        reporter.phase(f"uploading {len(export.records)} chat examples to {base_url}", low=0.0, high=0.05)
        file_id = openai_jobs.upload_training_file(base_url=base_url, api_key=api_key, jsonl_path=jsonl_path, retry=retry)
        _remote_state_record(run, base_url=base_url, training_file=file_id)
        hyperparameters = {
            key: parameters[name]
            for name, key in (("epochs", "n_epochs"), ("batch_size", "batch_size"), ("learning_rate_multiplier", "learning_rate_multiplier"))
            if name in parameters
        }
        job = openai_jobs.create_fine_tuning_job(
            base_url=base_url,
            api_key=api_key,
            training_file=file_id,
            model=parameters["model"],
            suffix=parameters.get("suffix") or f"ragloop-{run.knowledge_base.slug}"[:40],
            hyperparameters=hyperparameters or None,
            seed=parameters["seed"],
            retry=retry,
        )
        job_id = job["id"]
        _remote_state_record(run, job_id=job_id)
        reporter.phase(f"fine-tuning job {job_id} created (training file {file_id}); waiting for it", low=0.05, high=0.95)
    final = openai_jobs.wait_for_job(
        base_url=base_url,
        api_key=api_key,
        job_id=job_id,
        poll_seconds=parameters["poll_seconds"],
        timeout=parameters.get("timeout_seconds"),
        should_stop=reporter.should_stop,
        progress=reporter.progress,
        retry=retry,
    )
    (folder / "job.json").write_text(json.dumps(final, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if final["status"] != "succeeded":
        detail = final.get("error") or "no details"
        raise openai_jobs.FineTuningError(f"fine-tuning job {job_id} {final['status']}: {detail}")
    fine_tuned_model = final.get("fine_tuned_model")
    if not isinstance(fine_tuned_model, str) or not fine_tuned_model:
        raise openai_jobs.FineTuningError(f"fine-tuning job {job_id} succeeded without a fine_tuned_model name")
    fields = {"generator_backend": KnowledgeBase.GeneratorBackend.OPENAI, "generator_model": fine_tuned_model}
    trainer_parameters = {
        "method": "openai",
        "base_url": base_url,
        "job_id": job_id,
        "training_file": file_id,
        "examples": len(export.records),
        "skipped": export.skipped,
        "trained_tokens": final.get("trained_tokens"),
    }
    return Trained(folder, fields, trainer_parameters, reporter.curve)
