"""Fixtures and helpers shared by the training tests."""

import json
import threading
from http.server import ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Group

from curation.models import Membership
from curation.services.labels import LabelInput, label_submit
from knowledge.models import Conversation, RetrievedPassage, Turn
from knowledge.services.turns import turn_ask
from tests.rag.conftest import JsonReplyHandler
from training.models import Component, DatasetSnapshot, SnapshotExample
from training.services import evaluation as evaluation_module
from training.services.versions import model_version_register
from training.services.webhook_signatures import WebhookVerificationError, webhook_verify


@pytest.fixture
def curator(db, django_user_model, knowledge_base):
    """A curator who is a member of the test knowledge base."""
    user = django_user_model.objects.create_user("alice", password="pw-alice-123")
    user.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=knowledge_base, user=user)
    return user


def passage(text, document_id="", title="", chunk_id=None):
    return {"text": text, "document_id": document_id, "chunk_id": chunk_id, "title": title}


def make_snapshot(knowledge_base, examples) -> DatasetSnapshot:
    """A snapshot with the given examples: dicts of SnapshotExample fields (split defaults to held-out)."""
    rows = [SnapshotExample(**{"split": "heldout", **example}) for example in examples]
    snapshot = DatasetSnapshot.objects.create(
        knowledge_base=knowledge_base,
        example_count=len(rows),
        train_count=sum(r.split == "train" for r in rows),
        heldout_count=sum(r.split == "heldout" for r in rows),
    )
    for row in rows:
        row.snapshot = snapshot
    SnapshotExample.objects.bulk_create(rows)
    return snapshot


def retriever_version(knowledge_base, name, *, space=None, snapshot=None, **fields):
    return model_version_register(
        knowledge_base=knowledge_base, component=Component.RETRIEVER, artifact_folder=None, name=name,
        embedding_space=space or knowledge_base.embedding_spaces.get(retriever_version="base"),
        query_model_reference="base:all-MiniLM-L6-v2", snapshot=snapshot, **fields,
    )


def generator_version(knowledge_base, name, *, backend="extractive", model="", snapshot=None):
    return model_version_register(
        knowledge_base=knowledge_base, component=Component.GENERATOR, artifact_folder=None, name=name,
        generator_backend=backend, generator_model=model, snapshot=snapshot,
    )


def fake_rankings(monkeypatch, rankings):
    """Patch the document ranking: rankings[retriever name][query] -> document ids, best first."""
    calls = []

    def ranked_documents(*, retriever, query):
        calls.append((retriever.name, query))
        return [{"id": d, "title": f"title {d}", "score": 0.0} for d in rankings[retriever.name].get(query, [])]

    monkeypatch.setattr(evaluation_module, "ranked_documents", ranked_documents)
    return calls


QUESTIONS = [
    ("Which enzyme do statins inhibit?", "d-statins", "Statins inhibit HMG-CoA reductase.", "Statins inhibit HMG-CoA reductase"),
    ("Does vitamin D prevent hip fractures?", "d-vitd", "Daily vitamin D reduced hip fractures by a fifth.", ""),
    ("What does sleep do to memory?", "d-sleep", "Deep sleep consolidates new memories.", ""),
    ("Why does coffee make people alert?", "d-coffee", "Caffeine blocks adenosine receptors.", "Caffeine blocks adenosine receptors"),
]


def label_questions(knowledge_base, curator) -> None:
    """Ask each question, then judge the passage of its document relevant and the rest not."""
    for query, document, answer, rationale in QUESTIONS:
        turn = turn_ask(knowledge_base=knowledge_base, query=query, k=4)
        judgments = {
            p.pk: "relevant" if p.source_id == document else "not_relevant" for p in turn.passages.all()
        }
        label_submit(
            turn=turn, curator=curator,
            data=LabelInput(passages=judgments, answer_rating="wrong", gold_answer=answer, rationale=rationale),
        )  # fmt: skip


# A conversation of three served turns (the app sent a system message first): a question, a
# follow-up that serving rewrote well, and one it rewrote badly and a curator corrected.
SYSTEM_MESSAGE = {"role": "system", "content": "You are the clinic's assistant."}
CORRECTED_QUERY = "Does vitamin D increase calcium absorption?"
CONVERSATION = [
    # (question, rewritten query, served answer, passage source id, passage text, gold answer)
    ("Does vitamin D prevent hip fractures?", "", "Yes, by a fifth [1].", "d-vitd",
     "In elderly adults, daily vitamin D reduced the rate of hip fractures by a fifth.",
     "Yes: daily vitamin D cut hip fractures by a fifth in elderly adults."),
    ("And in children?", "Does vitamin D prevent hip fractures in children?", "I could not find it.", "d-vitd",
     "In elderly adults, daily vitamin D reduced the rate of hip fractures by a fifth.",
     "The study covered elderly adults only."),
    ("What about calcium?", "vitamin D calcium", "Calcium matters [1].", "d-calcium",
     "Vitamin D supplementation increases calcium absorption in the gut.",
     "Yes, vitamin D increases calcium absorption in the gut."),
]  # fmt: skip


def conversation_turns(knowledge_base, curator) -> list[Turn]:
    """The CONVERSATION's turns, made with the ORM as serving stores them (each turn's history is
    the system message and the exchanges before it), each labelled by `curator`: its passage
    relevant and the gold answer; the last one's rewrite called wrong, with CORRECTED_QUERY."""
    conversation = Conversation.objects.create(
        knowledge_base=knowledge_base, external_id="c-clinic", system_prompt=SYSTEM_MESSAGE["content"], turn_count=3
    )
    history = [SYSTEM_MESSAGE]
    turns = []
    for position, (question, rewritten, answer, source_id, text, gold) in enumerate(CONVERSATION):
        turn = Turn.objects.create(
            knowledge_base=knowledge_base, source=Turn.Source.SERVED, conversation=conversation, position=position,
            query=question, rewritten_query=rewritten, history=list(history), answer=answer,
        )  # fmt: skip
        passage = RetrievedPassage.objects.create(turn=turn, rank=1, score=0.8, source_id=source_id, text=text)
        corrected = CORRECTED_QUERY if position == len(CONVERSATION) - 1 else ""
        label_submit(
            turn=turn, curator=curator,
            data=LabelInput(passages={passage.pk: "relevant"}, answer_rating="wrong", gold_answer=gold,
                            rewrite_wrong=bool(corrected), corrected_query=corrected),
        )  # fmt: skip
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        turns.append(turn)
    return turns


class Receiver:
    """A local HTTP server that verifies each request's signature and answers from a script."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list[int] = []  # status codes to answer, in turn; 200 when none are left
        self.secret = ""
        receiver = self

        class Handler(JsonReplyHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    webhook_verify(secret=receiver.secret, headers=dict(self.headers), body=body)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                headers = {name.lower(): value for name, value in self.headers.items()}  # names are case-insensitive
                receiver.requests.append({"headers": headers, "body": body, "verified": verified, "path": self.path})
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.reply_raw(status, json.dumps({"ok": status < 300}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ragloop"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
