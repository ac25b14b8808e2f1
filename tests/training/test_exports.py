"""Dataset exports of a snapshot: the records of each format on a small case, the files written,
the CLI and the admin download."""

import io
import json
import zipfile

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from curation.models import Membership
from knowledge.errors import InvalidInput
from knowledge.models import Chunk, Document
from rag.generation import SYSTEM_PROMPT, ContextPassage, build_prompt
from training.models import DatasetSnapshot
from training.services.exports import dataset_export, raft_random_pool
from training.services.snapshots import dataset_snapshot_create

from .conftest import CONVERSATION, conversation_turns, make_snapshot, passage

R1 = passage("Statins inhibit HMG-CoA reductase.", "d1", title="Statins")
N1 = passage("Coffee blocks adenosine receptors.", "d2", title="Coffee")
U1 = passage("Vitamin D helps calcium absorption.", "d3")
R2 = passage("Deep sleep consolidates memories.", "d4", title="Sleep")
R3 = passage("Caffeine increases alertness.", "d5", title="Caffeine")
N3 = passage("Moderate coffee is not linked to mortality.", "d6")
POOL_TEXTS = [f"pool chunk number {i}" for i in range(6)]


@pytest.fixture
def snapshot(knowledge_base):
    document = Document.objects.create(knowledge_base=knowledge_base, external_id="pool-doc", title="Pool", text="x", content_hash="h")
    for order, text in enumerate([*POOL_TEXTS, R1["text"]]):  # the relevant text is never a distractor
        Chunk.objects.create(document=document, knowledge_base=knowledge_base, order=order, text=text, token_count=4)
    return make_snapshot(knowledge_base, [
        {"example_id": "e1", "split": "train", "query": "Which enzyme do statins inhibit?", "gold_answer": "HMG-CoA reductase.",
         "relevant": [R1], "irrelevant": [N1], "retrieved": [R1, N1, U1]},
        {"example_id": "e2", "split": "train", "query": "What does sleep do?", "relevant": [R2], "retrieved": [R2]},
        {"example_id": "e3", "split": "heldout", "query": "What does caffeine do?", "gold_answer": "It increases alertness.",
         "relevant": [R3], "irrelevant": [N3], "retrieved": [R3, N3]},
    ])


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_openai_export_of_the_train_split(snapshot, tmp_path):
    summary = dataset_export(snapshot=snapshot, format="openai", output=tmp_path / "openai.jsonl")
    context = [ContextPassage(text=p["text"], title=p["title"], source_id=p["document_id"]) for p in (R1, N1, U1)]
    assert records(tmp_path / "openai.jsonl") == [{"messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": build_prompt(query="Which enzyme do statins inhibit?", passages=context)},
        {"role": "assistant", "content": "HMG-CoA reductase."},
    ]}]
    assert summary == {
        "knowledge_base": "test-kb", "snapshot": snapshot.pk, "format": "openai", "split": "train", "examples": 2,
        "records": 1, "skipped": {"no_gold_answer": 1},
        "output": str(tmp_path / "openai.jsonl"), "files": [str(tmp_path / "openai.jsonl")],
    }
    # options reach rag.datasets; the held-out split holds the other example
    dataset_export(snapshot=snapshot, format="openai", split="heldout", output=tmp_path / "h.jsonl", max_passages=1, system_prompt="S")
    [record] = records(tmp_path / "h.jsonl")
    assert record["messages"][0]["content"] == "S"
    assert record["messages"][1]["content"] == build_prompt(
        query="What does caffeine do?", passages=[ContextPassage(text=R3["text"], title="Caffeine", source_id="d5")]
    )


def test_openai_export_of_a_conversation_replays_it_as_serving_does_within_the_history_budget(
    knowledge_base, curator, tmp_path, settings
):
    first, children, calcium = conversation_turns(knowledge_base, curator)
    snapshot = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=0.0)

    dataset_export(snapshot=snapshot, format="openai", output=tmp_path / "chat.jsonl")

    by_question = {record["messages"][-2]["content"]: record["messages"] for record in records(tmp_path / "chat.jsonl")}
    assert len(by_question) == 3

    def asked(question, source_id, text):
        return {"role": "user", "content": build_prompt(query=question, passages=[ContextPassage(text=text, source_id=source_id)])}

    children_asked = asked(*(CONVERSATION[1][i] for i in (0, 3, 4)))
    assert "Query: And in children?\n" in children_asked["content"]  # the user's words, not the rewrite
    assert by_question[children_asked["content"]] == [
        {"role": "system", "content": SYSTEM_PROMPT},  # the serving prompt; the app's system message is not sent
        {"role": "user", "content": "Does vitamin D prevent hip fractures?"},
        {"role": "assistant", "content": "Yes, by a fifth [1]."},
        children_asked,
        {"role": "assistant", "content": "The study covered elderly adults only."},
    ]
    first_asked = asked(*(CONVERSATION[0][i] for i in (0, 3, 4)))
    assert by_question[first_asked["content"]] == [
        {"role": "system", "content": SYSTEM_PROMPT}, first_asked, {"role": "assistant", "content": CONVERSATION[0][5]},
    ]  # fmt: skip

    # 8 words hold the last exchange ("And in children?" 3 + "I could not find it." 5), not the first as well
    summary = dataset_export(snapshot=snapshot, format="openai", output=tmp_path / "short.jsonl", max_history_words=8)
    assert summary["records"] == 3
    calcium_asked = asked(*(CONVERSATION[2][i] for i in (0, 3, 4)))
    [calcium_record] = [r["messages"] for r in records(tmp_path / "short.jsonl") if r["messages"][-2] == calcium_asked]
    assert [m["content"] for m in calcium_record[1:-2]] == ["And in children?", "I could not find it."]
    with pytest.raises(InvalidInput, match="max_history_words must be 0 or more"):
        dataset_export(snapshot=snapshot, format="openai", output=tmp_path / "bad.jsonl", max_history_words=-1)

    # the retriever formats keep the self-contained query (the curator's correction here)
    dataset_export(snapshot=snapshot, format="pairs", output=tmp_path / "pairs.jsonl")
    anchors = {r["anchor"] for r in records(tmp_path / "pairs.jsonl")}
    assert anchors == {first.query, children.rewritten_query, "Does vitamin D increase calcium absorption?"}

    call_command("export_dataset", "test-kb", "--format", "openai", "--max-history-words", "0", "--output", str(tmp_path / "none.jsonl"))
    assert all(len(r["messages"]) == 3 for r in records(tmp_path / "none.jsonl"))
    # without the option, the budget is what serving shows the generator
    settings.RAGLOOP_CHAT_HISTORY_TOKENS = 8
    dataset_export(snapshot=snapshot, format="openai", output=tmp_path / "served.jsonl")
    assert records(tmp_path / "served.jsonl") == records(tmp_path / "short.jsonl")


def test_triplets_and_pairs_exports(snapshot, tmp_path):
    summary = dataset_export(snapshot=snapshot, format="triplets", split="all", output=tmp_path / "t.jsonl")
    assert records(tmp_path / "t.jsonl") == [
        {"anchor": "Which enzyme do statins inhibit?", "positive": R1["text"], "negative": N1["text"]},
        {"anchor": "What does caffeine do?", "positive": R3["text"], "negative": N3["text"]},
    ]
    assert summary["skipped"] == {"no_hard_negative": 1} and summary["examples"] == 3
    dataset_export(snapshot=snapshot, format="pairs", output=tmp_path / "p.jsonl")
    assert records(tmp_path / "p.jsonl") == [
        {"anchor": "Which enzyme do statins inhibit?", "positive": R1["text"]},
        {"anchor": "What does sleep do?", "positive": R2["text"]},
    ]


def test_raft_export_tops_distractors_up_with_random_chunks_of_the_knowledge_base(snapshot, tmp_path):
    summary = dataset_export(snapshot=snapshot, format="raft", output=tmp_path / "raft.jsonl",
                             distractors=2, oracle_probability=1.0, seed=7)
    [record] = records(tmp_path / "raft.jsonl")
    oracle = "Statins\n" + R1["text"]
    assert record["id"] == "e1" and record["answer"] == "HMG-CoA reductase."
    assert record["oracle_context"] == oracle and record["oracle_in_context"] is True
    assert record["cot_answer"] == "<ANSWER>: HMG-CoA reductase."
    assert len(record["context"]) == 3
    assert oracle in record["context"] and "Coffee\n" + N1["text"] in record["context"]
    [drawn] = [d for d in record["context"] if d not in (oracle, "Coffee\n" + N1["text"])]
    assert drawn in {f"Pool\n{text}" for text in POOL_TEXTS}
    assert record["instruction"].endswith("Which enzyme do statins inhibit?")
    assert summary["skipped"] == {"no_gold_answer": 1}
    # seeded: the same file again
    first = (tmp_path / "raft.jsonl").read_bytes()
    dataset_export(snapshot=snapshot, format="raft", output=tmp_path / "raft.jsonl", distractors=2, oracle_probability=1.0, seed=7)
    assert (tmp_path / "raft.jsonl").read_bytes() == first


def test_the_raft_pool_is_a_seeded_sample_of_the_knowledge_base(snapshot, knowledge_base):
    pool = raft_random_pool(knowledge_base=knowledge_base, seed=3, size=4)
    assert len(pool) == 4 and pool == raft_random_pool(knowledge_base=knowledge_base, seed=3, size=4)
    assert {p.text for p in pool} <= {*POOL_TEXTS, R1["text"]}
    assert all(p.document_id == "pool-doc" and p.title == "Pool" and p.chunk_id for p in pool)
    assert len(raft_random_pool(knowledge_base=knowledge_base, size=100)) == 7


def test_beir_export_is_a_folder(snapshot, tmp_path):
    summary = dataset_export(snapshot=snapshot, format="beir", split="all", output=tmp_path / "beir")
    assert records(tmp_path / "beir" / "corpus.jsonl") == [
        {"_id": "d1", "title": "Statins", "text": R1["text"]},
        {"_id": "d2", "title": "Coffee", "text": N1["text"]},
        {"_id": "d3", "title": "", "text": U1["text"]},
        {"_id": "d4", "title": "Sleep", "text": R2["text"]},
        {"_id": "d5", "title": "Caffeine", "text": R3["text"]},
        {"_id": "d6", "title": "", "text": N3["text"]},
    ]
    assert records(tmp_path / "beir" / "queries.jsonl") == [
        {"_id": "e1", "text": "Which enzyme do statins inhibit?"},
        {"_id": "e2", "text": "What does sleep do?"},
        {"_id": "e3", "text": "What does caffeine do?"},
    ]
    assert (tmp_path / "beir" / "qrels" / "test.tsv").read_text() == (
        "query-id\tcorpus-id\tscore\ne1\td1\t1\ne1\td2\t0\ne2\td4\t1\ne3\td5\t1\ne3\td6\t0\n"
    )
    assert (summary["records"], summary["corpus"], summary["qrels"]) == (3, 6, 5)
    assert sorted(p.name for p in (tmp_path / "beir").iterdir()) == ["corpus.jsonl", "qrels", "queries.jsonl"]


@pytest.mark.parametrize("arguments, message", [
    ({"format": "csv"}, "Unknown export format 'csv'"),
    ({"format": "openai", "split": "dev"}, "Unknown split 'dev'"),
    ({"format": "openai", "distractors": 2}, "does not take distractors"),
    ({"format": "raft", "oracle_probability": 2.0}, "oracle_probability must be between 0 and 1"),
    ({"format": "raft", "seed": "abc"}, "seed must be a whole number"),
    ({"format": "triplets", "max_negatives_per_positive": 0}, "at least 1"),
])
def test_bad_exports_are_refused_and_write_nothing(snapshot, tmp_path, arguments, message):
    with pytest.raises(InvalidInput, match=message):
        dataset_export(snapshot=snapshot, output=tmp_path / "out.jsonl", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_bad_output_paths(snapshot, tmp_path):
    with pytest.raises(InvalidInput, match="is a folder"):
        dataset_export(snapshot=snapshot, format="openai", output=tmp_path)
    with pytest.raises(InvalidInput, match="no such folder"):
        dataset_export(snapshot=snapshot, format="openai", output=tmp_path / "missing" / "x.jsonl")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="is a file"):
        dataset_export(snapshot=snapshot, format="beir", output=tmp_path / "file")


# --- CLI -------------------------------------------------------------------------------------


def test_export_dataset_command(snapshot, tmp_path, capsys):
    call_command("export_dataset", "test-kb", "--format", "triplets", "--output", str(tmp_path / "t.jsonl"), "--json")
    summary = json.loads(capsys.readouterr().out)
    assert (summary["snapshot"], summary["records"], summary["split"]) == (snapshot.pk, 1, "train")
    call_command("export_dataset", "test-kb", "--format", "raft", "--snapshot", str(snapshot.pk), "--split", "all",
                 "--distractors", "1", "--oracle-probability", "0", "--output", str(tmp_path / "r.jsonl"))
    assert "2 raft records" in capsys.readouterr().out
    assert all(r["oracle_in_context"] is False and len(r["context"]) == 2 for r in records(tmp_path / "r.jsonl"))
    call_command("export_dataset", "test-kb", "--format", "beir", "--output", str(tmp_path / "beir"))
    assert (tmp_path / "beir" / "qrels" / "test.tsv").exists()


@pytest.mark.parametrize("arguments, message", [
    (["nope", "--format", "openai"], "not found"),
    (["test-kb", "--format", "csv"], "Unknown export format"),
    (["test-kb", "--format", "openai", "--snapshot", "999999"], "not found"),
    (["test-kb", "--format", "openai", "--seed", "3"], "does not take seed"),
    (["test-kb", "--format", "openai", "--split", "dev"], "Unknown split"),
])
def test_export_dataset_command_errors_exit_2(snapshot, tmp_path, arguments, message):
    with pytest.raises(CommandError, match=message) as error:
        call_command("export_dataset", *arguments, "--output", str(tmp_path / "x.jsonl"))
    assert error.value.returncode == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_export_dataset_new_snapshots_the_labels_first(knowledge_base, tmp_path):
    # no curated turns: "new" fails with the snapshot service's message, and a bad format is
    # refused before any snapshot is attempted
    with pytest.raises(CommandError, match="no curated turns") as error:
        call_command("export_dataset", "test-kb", "--format", "openai", "--snapshot", "new", "--output", str(tmp_path / "x"))
    assert error.value.returncode == 2
    with pytest.raises(CommandError, match="no dataset snapshot"):
        call_command("export_dataset", "test-kb", "--format", "openai", "--output", str(tmp_path / "x"))
    assert not DatasetSnapshot.objects.exists()


# --- download --------------------------------------------------------------------------------


@pytest.fixture
def curator_client(client, django_user_model, knowledge_base):
    user = django_user_model.objects.create_user("cur", password="pw-cur-123")
    user.groups.add(Group.objects.get(name="curator"))
    client.force_login(user)
    client.curator = user
    return client


def test_admins_download_exports(client, admin_user, snapshot):
    client.force_login(admin_user)
    response = client.get(f"/kbs/test-kb/snapshots/{snapshot.pk}/export/triplets.jsonl?split=all")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="test-kb-snapshot-{snapshot.pk}-all-triplets.jsonl"'
    assert [json.loads(line) for line in response.content.decode().splitlines()][0]["negative"] == N1["text"]
    response = client.get(f"/kbs/test-kb/snapshots/{snapshot.pk}/export/beir.zip")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    stem = f"test-kb-snapshot-{snapshot.pk}-train-beir"
    assert sorted(archive.namelist()) == [f"{stem}/corpus.jsonl", f"{stem}/qrels/test.tsv", f"{stem}/queries.jsonl"]
    assert archive.read(f"{stem}/qrels/test.tsv").decode().splitlines()[1:] == ["e1\td1\t1", "e1\td2\t0", "e2\td4\t1"]
    assert client.get(f"/kbs/test-kb/snapshots/{snapshot.pk}/export/csv.jsonl").status_code == 404
    assert client.get(f"/kbs/test-kb/snapshots/{snapshot.pk}/export/beir.jsonl").status_code == 404
    assert client.get(f"/kbs/test-kb/snapshots/{snapshot.pk + 100}/export/openai.jsonl").status_code == 404
    assert client.get(f"/kbs/test-kb/snapshots/{snapshot.pk}/export/openai.jsonl?split=dev").status_code == 400


def test_curators_cannot_download_exports(curator_client, knowledge_base, snapshot):
    url = f"/kbs/test-kb/snapshots/{snapshot.pk}/export/openai.jsonl"
    assert curator_client.get(url).status_code == 404  # not a member: no such knowledge base
    Membership.objects.create(knowledge_base=knowledge_base, user=curator_client.curator)
    assert curator_client.get(url).status_code == 403
