"""Checkpoints of the trainers, all the libraries' (rag.training.hf_trainer, rag.training.checkpoints):
a run killed after a checkpoint resumes from the last complete one and ends with the weights and
loss curve of a run never interrupted; a checkpoint saved for other inputs is not resumed, and one
left half-written is deleted. Retriever (a tiny BERT with dropout, so torch's random state must be
restored too), LoRA generator (a tiny GPT-2) and reranker."""

import shutil
from pathlib import Path

import pytest
import torch

from rag.training.checkpoints import Checkpointing, checkpoint_summary
from rag.training.retriever import RetrievalTrainingExample, train_contrastive
from tests.rag.test_training_generator import EXAMPLES as GENERATOR_EXAMPLES
from tests.rag.test_training_generator import tiny_base  # noqa: F401 (a fixture)
from tests.rag.test_training_retriever import TRAIN, build_tiny_retriever

EXAMPLES: list[RetrievalTrainingExample] = TRAIN[:10]  # batches of 4: 3 steps an epoch, the last one short


class Killed(Exception):
    """Stands for the worker being killed: raised from the progress callback after a step."""


@pytest.fixture(scope="module")
def tiny_retriever_with_dropout(tmp_path_factory) -> Path:
    return build_tiny_retriever(tmp_path_factory.mktemp("tiny-retriever-dropout"), dropout=0.1)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from sentence_transformers import SentenceTransformer

    return {name: tensor.detach().clone() for name, tensor in SentenceTransformer(str(folder), device="cpu").state_dict().items()}


def _train(model: Path, output: Path, *, checkpointing=None, kill_after: int | None = None, learning_rate=1e-3, **extra):
    def progress(fraction, metrics):
        if metrics["step"] == kill_after:
            raise Killed

    return train_contrastive(
        base_model_path=model, examples=EXAMPLES, output_path=output, epochs=2, batch_size=4, learning_rate=learning_rate,
        warmup_ratio=0.2, seed=3, device="cpu", progress=progress, checkpointing=checkpointing, **extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("every", "resumed_at"),
    [(2, 4), (3, 3)],  # step 4 is inside the second epoch; step 3 ends the first
    ids=["mid-epoch", "at-an-epoch-end"],
)
def test_a_run_killed_after_a_checkpoint_resumes_there_and_ends_as_if_never_interrupted(
    tiny_retriever_with_dropout: Path, tmp_path: Path, every: int, resumed_at: int
):
    uninterrupted = _train(tiny_retriever_with_dropout, tmp_path / "whole")
    messages: list[str] = []
    checkpointing = Checkpointing(folder=tmp_path / "resumed" / "checkpoint", every=every, log=messages.append)

    with pytest.raises(Killed):
        _train(tiny_retriever_with_dropout, tmp_path / "resumed", checkpointing=checkpointing, kill_after=5)
    assert checkpoint_summary(checkpointing.folder) == {"step": resumed_at, "total_steps": 6, "path": f"checkpoint-{resumed_at}"}
    resumed = _train(tiny_retriever_with_dropout, tmp_path / "resumed", checkpointing=checkpointing)

    assert resumed.resumed_from_step == resumed_at and resumed.parameters["resumed_from_step"] == resumed_at
    assert messages == [f"resumed from the checkpoint at step {resumed_at} of 6"]
    assert [point["step"] for point in resumed.training_curve] == [1, 2, 3, 4, 5, 6]
    assert [p["loss"] for p in resumed.training_curve] == pytest.approx([p["loss"] for p in uninterrupted.training_curve], rel=1e-6)
    expected = _weights(tmp_path / "whole" / "encoder")
    for name, tensor in _weights(tmp_path / "resumed" / "encoder").items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert not checkpointing.folder.exists()  # the checkpoint is not part of the model
    assert uninterrupted.parameters["resumed_from_step"] == 0


def test_a_resume_that_lost_torch_s_random_state_would_end_elsewhere(
    tiny_retriever_with_dropout: Path, tmp_path: Path, monkeypatch
):
    """The check above can fail: dropout draws from torch's generator, so a resume that did not
    restore it (the trainer's rng_state.pth) ends with other weights."""
    from transformers import Trainer

    uninterrupted = _train(tiny_retriever_with_dropout, tmp_path / "whole")
    checkpointing = Checkpointing(folder=tmp_path / "resumed" / "checkpoint", every=2)
    with pytest.raises(Killed):
        _train(tiny_retriever_with_dropout, tmp_path / "resumed", checkpointing=checkpointing, kill_after=5)
    monkeypatch.setattr(Trainer, "_load_rng_state", lambda self, checkpoint: None)
    torch.manual_seed(12345)

    resumed = _train(tiny_retriever_with_dropout, tmp_path / "resumed", checkpointing=checkpointing)

    assert resumed.resumed_from_step == 4
    assert resumed.training_curve[:4] == uninterrupted.training_curve[:4]
    assert resumed.training_curve[4]["loss"] != pytest.approx(uninterrupted.training_curve[4]["loss"], rel=1e-6)


def test_a_checkpoint_saved_for_other_settings_is_not_resumed(tiny_retriever_with_dropout: Path, tmp_path: Path):
    messages: list[str] = []
    checkpointing = Checkpointing(folder=tmp_path / "run" / "checkpoint", every=2, log=messages.append)
    with pytest.raises(Killed):
        _train(tiny_retriever_with_dropout, tmp_path / "run", checkpointing=checkpointing, kill_after=3, learning_rate=1e-3)

    other = _train(tiny_retriever_with_dropout, tmp_path / "run", checkpointing=checkpointing, learning_rate=2e-3)
    fresh = _train(tiny_retriever_with_dropout, tmp_path / "fresh", learning_rate=2e-3)

    assert other.resumed_from_step == 0
    assert messages == ["the checkpoint at step 2 was saved for other inputs or settings; training from the first step"]
    assert [p["loss"] for p in other.training_curve] == pytest.approx([p["loss"] for p in fresh.training_curve], rel=1e-6)


def test_a_checkpoint_a_killed_worker_left_half_written_is_deleted_and_the_one_before_resumed(
    tiny_retriever_with_dropout: Path, tmp_path: Path
):
    """The trainer writes a checkpoint's trainer_state.json last: a checkpoint-N folder without one
    (the worker died while saving it) is not resumed; the complete checkpoint before it is."""
    uninterrupted = _train(tiny_retriever_with_dropout, tmp_path / "whole")
    messages: list[str] = []
    checkpointing = Checkpointing(folder=tmp_path / "run" / "checkpoint", every=2, log=messages.append)
    with pytest.raises(Killed):
        _train(tiny_retriever_with_dropout, tmp_path / "run", checkpointing=checkpointing, kill_after=5)
    half_written = checkpointing.folder / "checkpoint-6"
    shutil.copytree(checkpointing.folder / "checkpoint-4", half_written)
    (half_written / "trainer_state.json").unlink()

    resumed = _train(tiny_retriever_with_dropout, tmp_path / "run", checkpointing=checkpointing)

    assert messages == [
        "the checkpoint at step 6 is incomplete (a worker stopped while saving it); it is deleted",
        "resumed from the checkpoint at step 4 of 6",
    ]
    assert resumed.resumed_from_step == 4 and resumed.steps == 6
    assert [p["loss"] for p in resumed.training_curve] == pytest.approx([p["loss"] for p in uninterrupted.training_curve], rel=1e-6)


def test_checkpoint_every_must_not_be_negative(tmp_path: Path):
    with pytest.raises(ValueError, match="checkpoint_every must be 0 or more, got -1"):
        Checkpointing(folder=tmp_path, every=-1)
    assert checkpoint_summary(tmp_path) is None


def test_a_killed_lora_run_resumes_from_its_checkpoint_with_the_same_adapter(tiny_base: Path, tmp_path: Path):  # noqa: F811
    from safetensors.torch import load_file

    from rag.training.generator import build_radit_examples, train_lora

    def train(output: Path, checkpointing=None, kill_after=None):
        def progress(fraction, metrics):
            if metrics["step"] == kill_after:
                raise Killed

        return train_lora(
            base_model_path=tiny_base, pairs=build_radit_examples(GENERATOR_EXAMPLES), output_path=output, epochs=2,
            learning_rate=1e-2, lora_dropout=0.1, batch_size=3, seed=2, device="cpu", progress=progress,
            checkpointing=checkpointing,
        )  # fmt: skip

    uninterrupted = train(tmp_path / "whole")
    checkpointing = Checkpointing(folder=tmp_path / "resumed" / "checkpoint", every=3)
    with pytest.raises(Killed):
        train(tmp_path / "resumed", checkpointing=checkpointing, kill_after=4)
    resumed = train(tmp_path / "resumed", checkpointing=checkpointing)

    assert (uninterrupted.steps, resumed.steps, resumed.resumed_from_step) == (6, 6, 3)
    assert [p["loss"] for p in resumed.training_curve] == pytest.approx([p["loss"] for p in uninterrupted.training_curve], rel=1e-6)
    expected = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    adapter = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert adapter.keys() == expected.keys()
    for name, tensor in adapter.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert not checkpointing.folder.exists()


def test_a_killed_reranker_run_goes_on_from_the_library_trainer_s_checkpoint(tiny_retriever_with_dropout: Path, tmp_path: Path):
    """The reranker trains on CrossEncoderTrainer, whose own checkpoints serve the same way."""
    from safetensors.torch import load_file

    from rag.training.reranker import train_reranker
    from tests.rag.test_training_reranker import EXAMPLES as RERANKER_EXAMPLES

    bert = tiny_retriever_with_dropout.parent / "bert"  # a plain BERT: CrossEncoder adds a fresh head

    def train(output: Path, checkpointing=None, kill_after=None, seed=4):
        def progress(fraction, metrics):
            if metrics["step"] == kill_after:
                raise Killed

        return train_reranker(
            base_model_path=bert, examples=RERANKER_EXAMPLES[:4], output_path=output, epochs=2, batch_size=4,
            learning_rate=1e-3, seed=seed, max_length=64, device="cpu", progress=progress, checkpointing=checkpointing,
        )  # fmt: skip

    uninterrupted = train(tmp_path / "whole")
    messages: list[str] = []
    checkpointing = Checkpointing(folder=tmp_path / "resumed" / "checkpoint", every=3, log=messages.append)
    with pytest.raises(Killed):
        train(tmp_path / "resumed", checkpointing=checkpointing, kill_after=5)
    assert checkpoint_summary(checkpointing.folder) == {"step": 3, "total_steps": uninterrupted.steps, "path": "checkpoint-3"}
    resumed = train(tmp_path / "resumed", checkpointing=checkpointing)

    assert messages == [f"resumed from the checkpoint at step 3 of {uninterrupted.steps}"]
    assert resumed.parameters["resumed_from_step"] == 3 and uninterrupted.parameters["resumed_from_step"] == 0
    assert [p["step"] for p in resumed.training_curve] == list(range(1, uninterrupted.steps + 1))
    assert [p["loss"] for p in resumed.training_curve] == pytest.approx([p["loss"] for p in uninterrupted.training_curve], rel=1e-5)
    expected = load_file(tmp_path / "whole" / "model.safetensors")
    for name, tensor in load_file(tmp_path / "resumed" / "model.safetensors").items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not checkpointing.folder.exists()

    # Another seed is another run: its checkpoint folder is not resumed.
    with pytest.raises(Killed):
        train(tmp_path / "other", checkpointing=Checkpointing(folder=tmp_path / "other" / "checkpoint", every=3), kill_after=4)
    messages.clear()
    other = train(tmp_path / "other", seed=5,
                  checkpointing=Checkpointing(folder=tmp_path / "other" / "checkpoint", every=3, log=messages.append))  # fmt: skip
    assert other.parameters["resumed_from_step"] == 0
    assert messages == ["the checkpoint at step 3 was saved for other inputs or settings; training from the first step"]


def test_lora_gradient_accumulation_takes_the_steps_of_the_whole_batch(tiny_base: Path, tmp_path: Path):  # noqa: F811
    """Batches of 2 accumulated twice make the optimiser steps of batches of 4: the loss is divided
    by the answer tokens of both, so the adapter is the same (on a copy of the tiny GPT-2 without
    dropout, whose masks would differ with the batch's shape)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from rag.training.generator import build_radit_examples, train_lora

    base = tmp_path / "no-dropout"
    model = GPT2LMHeadModel.from_pretrained(tiny_base)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
    model.save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(base)

    def train(output: Path, batch_size: int, accumulation: int):
        return train_lora(
            base_model_path=base, pairs=build_radit_examples(GENERATOR_EXAMPLES), output_path=output, epochs=2,
            learning_rate=1e-2, batch_size=batch_size, gradient_accumulation_steps=accumulation, seed=2, device="cpu",
        )  # fmt: skip

    whole = train(tmp_path / "whole", 4, 1)
    accumulated = train(tmp_path / "accumulated", 2, 2)
    small = train(tmp_path / "small", 2, 1)

    assert (whole.steps, accumulated.steps, small.steps) == (4, 4, 8)
    assert accumulated.parameters["gradient_accumulation_steps"] == 2
    expected = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    adapter = load_file(tmp_path / "accumulated" / "adapter_model.safetensors")
    for name, tensor in adapter.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # ...which batches of 2 stepped one at a time are not.
    different = load_file(tmp_path / "small" / "adapter_model.safetensors")
    assert any(not torch.allclose(different[name], expected[name], rtol=1e-4, atol=1e-6) for name in expected)
