"""The admin side of curation: agreement figures from real labels, adjudication of disputes,
the dashboard's figures and query count, guidelines, settings and members, and who may see
which page."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from curation.models import Adjudication, Label, Membership, TurnHold
from curation.selectors import (
    CuratorProgress,
    curator_progress,
    guidelines_html,
    knowledge_base_agreement,
    knowledge_base_dashboard,
    turn_final_judgment,
    turn_final_judgments,
)
from curation.services.adjudication import adjudication_record
from curation.services.labels import LabelInput, label_submit
from curation.services.queue import knowledge_base_overlap_set
from knowledge.errors import InvalidInput
from knowledge.models import Chunk, Document, KnowledgeBase, Turn
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest

R, P, N = "relevant", "partly", "not_relevant"
XSS = '<script>alert("x")</script>'


@pytest.fixture
def curators(db, django_user_model, knowledge_base):
    group = Group.objects.get(name="curator")
    users = []
    for name in ("alice", "bob", "carol"):
        user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
        user.groups.add(group)
        Membership.objects.create(knowledge_base=knowledge_base, user=user)
        users.append(user)
    return users


def make_turns(knowledge_base, names, passages=2) -> dict[str, Turn]:
    records = [
        TurnRecord(external_id=name, query=f"query {name}", answer=f"answer {name}",
                   passages=[PassageRecord(text=f"passage {i} of {name}", score=0.9 - i / 10) for i in range(passages)])
        for name in names
    ]
    created = turns_ingest(knowledge_base=knowledge_base, records=records).created
    return {name: Turn.objects.get(pk=pk) for name, pk in created.items()}


def passage_ids(turn) -> list[int]:
    return list(turn.passages.order_by("rank").values_list("pk", flat=True))


def judge(turn, curator, relevances=(), rating="", gold="", attached=None, skipped=False) -> Label:
    """relevances: one per passage in rank order (None = not judged)."""
    passages = {pid: rel for pid, rel in zip(passage_ids(turn), relevances) if rel}
    if skipped:
        return label_submit(turn=turn, curator=curator, data=LabelInput(skipped=True, skip_reason="unclear"))
    return label_submit(turn=turn, curator=curator, data=LabelInput(
        passages=passages, answer_rating=rating, gold_answer=gold, attached=attached or {}))


def make_chunks(knowledge_base, count=2) -> list[Chunk]:
    document = Document.objects.create(knowledge_base=knowledge_base, external_id="doc", text="text", content_hash="h")
    return [Chunk.objects.create(document=document, knowledge_base=knowledge_base, order=i, text=f"chunk {i}", token_count=2)
            for i in range(count)]


# --- agreement ---------------------------------------------------------------------------


def test_pair_agreement_from_real_labels(admin_client, knowledge_base, curators):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=3)
    alice, bob, carol = curators
    t = make_turns(knowledge_base, ["t1", "t2", "t3", "t4"])
    judge(t["t1"], alice, [R, N], "correct")
    judge(t["t1"], bob, [R, N], "correct")
    judge(t["t1"], carol, [R, None], "correct")
    judge(t["t2"], alice, [R, N], "correct")
    judge(t["t2"], bob, [P, N], "wrong")
    judge(t["t2"], carol, skipped=True)  # a skip is not a judgment
    judge(t["t3"], alice, [P, R], "wrong")
    judge(t["t3"], bob, [P, N], "wrong")
    judge(t["t4"], carol, [R, R], "correct")  # nobody else judged t4
    result = knowledge_base_agreement(knowledge_base=knowledge_base)
    pairs = {(p.curator_a, p.curator_b): p for p in result.pairs}
    assert list(pairs) == [("alice", "bob"), ("alice", "carol"), ("bob", "carol")]

    # alice x bob, passages (rows alice, columns bob):
    #        R  P  N
    #    R   1  1  1     alice R3 P1 N2, bob R1 P2 N3, 6 items, 4 agreed
    #    P   0  1  0     p_o = 4/6, p_e = (3*1 + 1*2 + 2*3) / 36 = 11/36
    #    N   0  0  2     kappa = (24/36 - 11/36) / (25/36) = 13/25 = 0.52
    ab = pairs[("alice", "bob")]
    assert (ab.passages.items, ab.passages.agreed) == (6, 4)
    assert ab.passages.kappa == pytest.approx(0.52)
    # answers: (correct, correct), (correct, wrong), (wrong, wrong): alice c2 w1, bob c1 w2
    # p_o = 2/3, p_e = (2*1 + 1*2) / 9 = 4/9, kappa = (6/9 - 4/9) / (5/9) = 0.4
    assert (ab.answers.items, ab.answers.agreed) == (3, 2)
    assert ab.answers.kappa == pytest.approx(0.4)
    # carol shares one item with each (t1 passage 0: R/R; t1 rating: correct/correct):
    # a single shared category, p_e = 1, reported as 1.0
    for pair in ("alice", "carol"), ("bob", "carol"):
        assert pairs[pair].passages.items == 1 and pairs[pair].passages.kappa == 1.0
        assert pairs[pair].answers.items == 1 and pairs[pair].answers.kappa == 1.0
    # knowledge base: items summed, kappa weighted by items
    assert (result.passages.items, result.passages.agreed) == (8, 6)
    assert result.passages.kappa == pytest.approx((0.52 * 6 + 1 + 1) / 8)
    assert (result.answers.items, result.answers.agreed) == (5, 4)
    assert result.answers.kappa == pytest.approx((0.4 * 3 + 1 + 1) / 5)

    page = admin_client.get("/kbs/test-kb/agreement/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "alice · bob" in html and "0.52" in html and "66.7%" in html and "0.64" in html


def test_agreement_page_without_overlap_says_so(admin_client, knowledge_base):
    page = admin_client.get("/kbs/test-kb/agreement/").content.decode()
    assert "No turn has been judged by two curators yet" in page


# --- adjudication ------------------------------------------------------------------------


@pytest.fixture
def dispute(knowledge_base, curators):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    alice, bob, _ = curators
    turn = make_turns(knowledge_base, ["d"], passages=3)["d"]
    judge(turn, alice, [R, N, None], "correct", gold="alice's answer")
    judge(turn, bob, [N, N, P], "wrong", gold=XSS)
    turn.refresh_from_db()
    assert turn.disputed
    return turn


def test_disputes_list_and_side_by_side_comparison(admin_client, dispute):
    listing = admin_client.get("/kbs/test-kb/disputes/")
    assert listing.status_code == 200
    assert f"/kbs/test-kb/disputes/{dispute.pk}/" in listing.content.decode()
    page = admin_client.get(f"/kbs/test-kb/disputes/{dispute.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "alice" in html and "bob" in html
    assert html.count(' differs"') == 2  # passage 1 and the answer rating
    assert XSS not in html and "&lt;script&gt;" in html  # bob's gold answer, escaped
    first, second, third = passage_ids(dispute)
    # the form starts from what the curators agree on: passage 2 not relevant, passage 3 partly
    assert f'name="passage-{second}"' in html


def test_adjudication_resolves_the_dispute(admin_client, admin_user, dispute):
    first, second, third = passage_ids(dispute)
    response = admin_client.post(f"/kbs/test-kb/disputes/{dispute.pk}/", {
        f"passage-{first}": R, f"passage-{second}": N, f"passage-{third}": "",
        "answer_rating": "partly", "gold_answer": "the final answer", "note": "passage 1 answers it",
    })
    assert response.status_code == 302 and response["Location"] == "/kbs/test-kb/disputes/"
    dispute.refresh_from_db()
    assert not dispute.disputed
    adjudication = Adjudication.objects.get(turn=dispute)
    assert adjudication.admin == admin_user
    assert adjudication.passage_relevance == {str(first): R, str(second): N}
    final = turn_final_judgment(dispute)
    assert final.source == "adjudication" and final.answer_rating == "partly" and final.gold_answer == "the final answer"
    assert final.retriever_ready and final.generator_ready
    assert f"/kbs/test-kb/disputes/{dispute.pk}/" not in admin_client.get("/kbs/test-kb/disputes/").content.decode().split("Recently adjudicated")[0]
    # alice editing her label (still disagreeing with bob) does not reopen the dispute
    label_submit(turn=dispute, curator=Label.objects.get(turn=dispute, curator__username="alice").curator,
                 data=LabelInput(passages={first: P}, answer_rating="partly"))
    dispute.refresh_from_db()
    assert not dispute.disputed
    # recording again replaces the judgment (one adjudication per turn)
    adjudication_record(turn=dispute, admin=admin_user, passage_relevance={first: P}, answer_rating="wrong")
    assert Adjudication.objects.get(turn=dispute).passage_relevance == {str(first): P}


def test_the_comparison_reads_as_words_with_one_key_per_curator(admin_client, dispute):
    import re

    html = admin_client.get(f"/kbs/test-kb/disputes/{dispute.pk}/").content.decode()
    first_row = html.split('data-rank="1"')[1].split("</tr>")[0]
    cells = re.findall(r'<td class="judgment[^"]*" data-label="(\w+)">(.*?)\s*(?:<button|</td>)', first_row, re.S)
    assert [(name, value.strip()) for name, value in cells] == [("alice", "relevant"), ("bob", "not relevant")]
    assert "not_relevant</td>" not in html and ">not relevant</option>" in html
    assert 'data-take="not_relevant" data-letter="b"' in first_row and 'data-take="relevant" data-letter="a"' in first_row
    assert "<th>A: alice</th>" in html and "<th>B: bob</th>" in html
    assert "<kbd>a</kbd> takes alice's, <kbd>b</kbd> takes bob's" in html
    assert "js/adjudicate.js" in html


def test_an_open_disagreement_is_named_by_rank_not_database_id(admin_client, dispute):
    first, second, third = passage_ids(dispute)
    response = admin_client.post(f"/kbs/test-kb/disputes/{dispute.pk}/", {
        f"passage-{second}": N, f"passage-{third}": P, "answer_rating": "partly"})
    assert response.status_code == 422
    assert "The curators disagree on passage #1: decide it." in response.content.decode()
    assert f"passage {first}" not in response.content.decode()
    response = admin_client.post(f"/kbs/test-kb/disputes/{dispute.pk}/", {f"passage-{second}": "very", "answer_rating": "partly"})
    assert "Passage #2: &#x27;very&#x27; is not one of relevant, partly, not relevant." in response.content.decode()


@pytest.mark.parametrize("form, message", [
    ({"passage-FOREIGN": R, "answer_rating": "correct"}, "do not belong to turn"),
    ({"passage-FIRST": "very", "answer_rating": "correct"}, "is not one of"),
    ({"passage-FIRST": R, "answer_rating": "excellent"}, "is not one of"),
    ({"passage-FIRST": R}, "disagree on the answer rating"),
    ({"answer_rating": "correct"}, "disagree on passage"),
    ({"passage-FIRST": "", "answer_rating": "", "gold_answer": "  "}, "The judgment is empty"),
    ({"passage-FIRST": R, "answer_rating": "correct", "note": "a\x00b"}, "NUL"),
])
def test_an_invalid_adjudication_writes_nothing(admin_client, knowledge_base, dispute, form, message):
    other = make_turns(knowledge_base, ["other"])["other"]
    first = passage_ids(dispute)[0]
    replace = {"FIRST": str(first), "FOREIGN": str(passage_ids(other)[0])}
    data = {}
    for key, value in form.items():
        for placeholder, real in replace.items():
            key = key.replace(placeholder, real)
        data[key] = value
    response = admin_client.post(f"/kbs/test-kb/disputes/{dispute.pk}/", data)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert Adjudication.objects.count() == 0
    dispute.refresh_from_db()
    assert dispute.disputed


def test_adjudication_service_refuses_a_passage_of_another_turn(admin_user, knowledge_base, dispute):
    other = make_turns(knowledge_base, ["other"])["other"]
    with pytest.raises(InvalidInput, match="do not belong"):
        adjudication_record(turn=dispute, admin=admin_user, passage_relevance={passage_ids(other)[0]: R}, answer_rating="correct")
    assert not Adjudication.objects.exists()


def test_a_turn_of_another_knowledge_base_is_not_found_under_this_one(admin_client, dispute):
    other_kb = KnowledgeBase.objects.create(slug="other", name="Other")
    assert admin_client.get(f"/kbs/{other_kb.slug}/disputes/{dispute.pk}/").status_code == 404


# --- dashboard and final judgments -------------------------------------------------------


@pytest.fixture
def curated(knowledge_base, curators, admin_user):
    """A small hand-made dataset (overlap 2); the expected figures are worked out per turn."""
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    alice, bob, _ = curators
    x, y = make_chunks(knowledge_base)
    t = make_turns(knowledge_base, list("ABCDEFGH"))
    # A: no label                                          pending
    # B: one label, relevant passage, rating, no gold     labelled, pending, retriever
    judge(t["B"], alice, [R, N], "correct", gold="")
    # C: two agreeing labels, bob's gold, alice attaches x  labelled, retriever (attached), generator
    judge(t["C"], alice, [N, None], "wrong", gold="", attached={x.pk: R})
    judge(t["C"], bob, [N, N], "wrong", gold="fixed answer")
    # D: two disagreeing labels                            labelled, disputed, nothing ready
    judge(t["D"], alice, [R, N], "correct", gold="g")
    judge(t["D"], bob, [N, N], "correct", gold="g")
    # E: disagreeing, adjudicated (no rating, gold)         labelled, adjudicated, retriever, generator
    judge(t["E"], alice, [R, None], "correct")
    judge(t["E"], bob, [N, None], "correct")
    adjudication_record(turn=t["E"], admin=admin_user, passage_relevance={passage_ids(t["E"])[1]: R,
                                                                          passage_ids(t["E"])[0]: N},
                        gold_answer="admin's answer")
    # F: skipped only                                      pending
    judge(t["F"], alice, skipped=True)
    # G: agree, but the attached chunk y conflicts, no gold labelled, nothing ready
    judge(t["G"], alice, [P, None], "correct", attached={y.pk: R})
    judge(t["G"], bob, [P, None], "correct", attached={y.pk: P})
    # H: one label, gold but no rating                     labelled, pending, nothing ready
    judge(t["H"], alice, [P, None], "", gold="some answer")
    return t


def test_dashboard_figures_on_a_small_dataset(curated, knowledge_base):
    figures = knowledge_base_dashboard(knowledge_base=knowledge_base)
    assert figures.turns == 8
    assert figures.labelled == 6  # B C D E G H
    assert figures.pending == 4  # A B F H
    assert (figures.complete, figures.partly_labelled, figures.unlabelled) == (4, 2, 2)  # C D E G; B H; A F
    assert figures.complete + figures.partly_labelled + figures.unlabelled == figures.turns
    assert figures.labelled == figures.partly_labelled + figures.complete
    assert figures.pending == figures.partly_labelled + figures.unlabelled
    assert figures.disputed == 1  # D
    assert figures.adjudicated == 1  # E
    assert figures.retriever_ready == 3  # B C E
    assert figures.generator_ready == 2  # C E
    assert figures.labels_per_day[-1] == (timezone.localdate(), 10)  # B1 C2 D2 E2 G2 H1
    assert sum(n for _, n in figures.labels_per_day) == 10
    assert [(c.username, c.submitted, c.skipped) for c in figures.curators] == [("alice", 6, 1), ("bob", 4, 0)]


def test_curator_progress_counts_what_each_curator_did_and_what_is_left_for_them(curated, knowledge_base, curators):
    alice, bob, carol = curators
    # alice labelled B C D E G H and skipped F: of the pending A B F H only A is left for her.
    assert curator_progress(knowledge_base=knowledge_base, curator=alice) == CuratorProgress(done_today=6, done=6, waiting=1)
    assert curator_progress(knowledge_base=knowledge_base, curator=bob) == CuratorProgress(done_today=4, done=4, waiting=4)
    # On the judging page the turn on screen is not "waiting": the last one reads 0.
    assert curator_progress(knowledge_base=knowledge_base, curator=bob, on_screen=curated["B"]).waiting == 3
    assert curator_progress(knowledge_base=knowledge_base, curator=alice, on_screen=curated["A"]).waiting == 0
    tomorrow = timezone.localdate() + timedelta(days=1)
    assert curator_progress(knowledge_base=knowledge_base, curator=alice, today=tomorrow).done_today == 0
    assert curator_progress(knowledge_base=knowledge_base, curator=carol) == CuratorProgress(done_today=0, done=0, waiting=4)


def test_the_judging_page_shows_the_curators_progress(curated, knowledge_base, curators, client):
    _, bob, _ = curators
    client.force_login(bob)
    page = client.get(f"/kbs/{knowledge_base.slug}/turns/{curated['B'].pk}/judge/").content.decode()
    assert "4 done today · 4 here · 3 more waiting" in page


def test_final_judgments_follow_the_documented_rules_and_match_the_dashboard(curated, knowledge_base):
    finals = turn_final_judgments(turns=Turn.objects.filter(knowledge_base=knowledge_base))
    by_name = {name: finals[turn.pk] for name, turn in curated.items()}
    assert {name: f.source for name, f in by_name.items()} == {
        "A": "none", "B": "single", "C": "agreement", "D": "disputed", "E": "adjudication",
        "F": "none", "G": "agreement", "H": "single",
    }
    c = by_name["C"]
    assert c.answer_rating == "wrong" and c.gold_answer == "fixed answer"
    assert set(c.passages.values()) == {N} and len(c.passages) == 2  # the union of both labels
    assert list(c.attached.values()) == [R]
    assert by_name["G"].attached == {}  # curators attached y with different relevances
    assert by_name["D"].passages == {} and not by_name["D"].is_final
    # the SQL counts of the dashboard and these Python rules agree
    figures = knowledge_base_dashboard(knowledge_base=knowledge_base)
    assert figures.retriever_ready == sum(f.retriever_ready for f in finals.values())
    assert figures.generator_ready == sum(f.generator_ready for f in finals.values())


def test_labels_per_day_covers_the_last_thirty_days(curated, knowledge_base):
    labels = list(Label.objects.filter(skipped=False).order_by("pk"))
    Label.objects.filter(pk=labels[0].pk).update(created_at=timezone.now() - timedelta(days=3))
    Label.objects.filter(pk=labels[1].pk).update(created_at=timezone.now() - timedelta(days=45))
    days = knowledge_base_dashboard(knowledge_base=knowledge_base).labels_per_day
    assert len(days) == 30
    counts = dict(days)
    today = timezone.localdate()
    assert counts[today] == 8 and counts[today - timedelta(days=3)] == 1
    assert sum(counts.values()) == 9  # the 45-day-old label is outside the chart


def test_dashboard_page_for_members_with_svg_chart(client, curated, curators):
    client.force_login(curators[1])
    page = client.get("/kbs/test-kb/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<svg class="chart bars"' in html and html.count('<rect class="bar"') == 30
    import re

    chart = html[html.index('<svg class="chart bars"'):html.index("</svg>")]
    ticks = re.findall(r'<text class="tick"[^>]*text-anchor="end">([^<]+)</text>', chart)
    assert ticks[0] == "0" and len(ticks) >= 3  # a y-axis from 0
    today = timezone.localdate()
    assert f"<title>{today:%a %-d %b}: " in chart  # the day's count on hover
    dates = re.findall(r'<text class="tick" x="([\d.]+)" y="[\d.]+" text-anchor="(?:start|middle|end)">(\d+ \w+)</text>', chart)
    xs = [float(x) for x, _ in dates]
    assert dates[-1][1] == f"{today:%-d %b}" and all(b - a >= 56 for a, b in zip(xs, xs[1:]))  # no two dates overlap
    assert 'id="ready-retriever">3<' in html and 'id="ready-generator">2<' in html
    assert "/kbs/test-kb/agreement/" not in html  # admin links are for admins
    assert "<script" not in html.split("<main>")[1]  # no chart library


def _grow(knowledge_base, curators, admin_user, size: int, prefix: str):
    alice, bob, _ = curators
    x, = make_chunks(knowledge_base, 1) if not Chunk.objects.exists() else (Chunk.objects.first(),)
    turns = make_turns(knowledge_base, [f"{prefix}{i}" for i in range(size)])
    for i, turn in enumerate(turns.values()):
        judge(turn, alice, [R, N], "correct", gold="g", attached={x.pk: R} if i % 3 == 0 else None)
        judge(turn, bob, [R if i % 2 else N, N], "correct" if i % 3 else "wrong", gold="h")
        if i % 4 == 0:
            turn.refresh_from_db()
            if turn.disputed:
                adjudication_record(turn=turn, admin=admin_user, passage_relevance={passage_ids(turn)[0]: R if i % 8 == 0 else N},
                                    answer_rating="correct", gold_answer="final")


def test_dashboard_readiness_matches_the_python_rules_on_varied_data(knowledge_base, curators, admin_user):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    _grow(knowledge_base, curators, admin_user, 12, "v")
    finals = turn_final_judgments(turns=Turn.objects.filter(knowledge_base=knowledge_base)).values()
    assert {f.source for f in finals} == {"agreement", "disputed", "adjudication"}
    figures = knowledge_base_dashboard(knowledge_base=knowledge_base)
    assert figures.retriever_ready == sum(f.retriever_ready for f in finals)
    assert figures.generator_ready == sum(f.generator_ready for f in finals)
    assert figures.disputed == sum(f.source == "disputed" for f in finals)


@pytest.mark.parametrize("url", ["/kbs/test-kb/dashboard/", "/kbs/test-kb/agreement/", "/kbs/test-kb/disputes/"])
def test_query_count_does_not_grow_with_the_data(admin_client, knowledge_base, curators, admin_user, url,
                                                 django_assert_max_num_queries):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    _grow(knowledge_base, curators, admin_user, 2, "small")
    admin_client.get(url)  # warm the session and caches
    with CaptureQueriesContext(connection) as small:
        assert admin_client.get(url).status_code == 200
    _grow(knowledge_base, curators, admin_user, 12, "large")
    with django_assert_max_num_queries(len(small.captured_queries)):
        assert admin_client.get(url).status_code == 200
    assert len(small.captured_queries) <= 12


# --- guidelines --------------------------------------------------------------------------


HOSTILE_MARKDOWN = f"""# Judging passages

Mark a passage **relevant** when it answers the question.

{XSS}
<img src="x" onerror="alert(1)">
[a link](javascript:alert(1))
"""


def test_guidelines_are_rendered_from_markdown_and_sanitised(admin_client, client, knowledge_base, curators):
    response = admin_client.post("/kbs/test-kb/guidelines/edit/", {"guidelines": HOSTILE_MARKDOWN})
    assert response.status_code == 302 and response["Location"] == "/kbs/test-kb/guidelines/"
    knowledge_base.refresh_from_db()
    assert knowledge_base.guidelines == HOSTILE_MARKDOWN
    client.force_login(curators[0])
    page = client.get("/kbs/test-kb/guidelines/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<h1>Judging passages</h1>" in html and "<strong>relevant</strong>" in html
    body = html.split('class="guidelines-body">')[1]
    assert "<script" not in body and "onerror" not in body and "javascript:" not in body
    assert "Edit the guidelines" not in html  # curators read, admins edit


def test_guidelines_preview_is_a_sanitised_fragment(admin_client, knowledge_base):
    response = admin_client.post("/kbs/test-kb/guidelines/preview/", {"guidelines": HOSTILE_MARKDOWN}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    assert "<h1>Judging passages</h1>" in response.content.decode()
    assert "<script" not in response.content.decode()
    assert guidelines_html("") == ""


def test_guidelines_too_long_are_refused(admin_client, knowledge_base):
    response = admin_client.post("/kbs/test-kb/guidelines/edit/", {"guidelines": "x" * 100_001})
    assert response.status_code == 422
    knowledge_base.refresh_from_db()
    assert knowledge_base.guidelines == ""


# --- settings and members ----------------------------------------------------------------


def test_settings_change_overlap_and_hold_minutes(admin_client, knowledge_base, curators):
    t = make_turns(knowledge_base, ["a"])
    judge(t["a"], curators[0], [R, N], "correct")
    assert not Turn.objects.get(pk=t["a"].pk).needs_labels
    response = admin_client.post("/kbs/test-kb/settings/", {"labels_per_turn": "2", "hold_minutes": "30"})
    assert response.status_code == 302
    knowledge_base.refresh_from_db()
    assert (knowledge_base.labels_per_turn, knowledge_base.hold_minutes) == (2, 30)
    assert Turn.objects.get(pk=t["a"].pk).needs_labels  # reopened for a second curator


@pytest.mark.parametrize("form", [
    {"labels_per_turn": "11", "hold_minutes": "30"},
    {"labels_per_turn": "2", "hold_minutes": "0"},
    {"labels_per_turn": "two", "hold_minutes": "30"},
])
def test_invalid_settings_change_nothing(admin_client, knowledge_base, form):
    response = admin_client.post("/kbs/test-kb/settings/", form)
    assert response.status_code == 422
    assert b'class="error"' in response.content
    knowledge_base.refresh_from_db()
    assert (knowledge_base.labels_per_turn, knowledge_base.hold_minutes) == (1, 15)


def test_members_are_added_and_removed(admin_client, knowledge_base, curators, django_user_model):
    alice = curators[0]
    newcomer = django_user_model.objects.create_user("dave", password="pw-dave-123")
    newcomer.groups.add(Group.objects.get(name="curator"))
    page = admin_client.get("/kbs/test-kb/settings/").content.decode()
    assert '<option value="dave">' in page and '<option value="alice">' not in page
    response = admin_client.post("/kbs/test-kb/settings/members/", {"username": "dave"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    assert Membership.objects.filter(knowledge_base=knowledge_base, user=newcomer).exists()
    assert 'id="members"' in response.content.decode()
    # removing frees the curator's held turns; labels stay
    turn = make_turns(knowledge_base, ["held"])["held"]
    TurnHold.objects.create(turn=turn, curator=alice, expires_at=timezone.now() + timedelta(minutes=5))
    response = admin_client.post(f"/kbs/test-kb/settings/members/{alice.pk}/remove/")
    assert response.status_code == 302
    assert not Membership.objects.filter(knowledge_base=knowledge_base, user=alice).exists()
    assert not TurnHold.objects.filter(curator=alice).exists()


def test_only_curators_can_become_members(admin_client, knowledge_base, django_user_model):
    django_user_model.objects.create_user("nobody", password="pw-nobody-123")
    response = admin_client.post("/kbs/test-kb/settings/members/", {"username": "nobody"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and "is not a curator" in response.content.decode()
    assert admin_client.post("/kbs/test-kb/settings/members/", {"username": "ghost"}).status_code == 404
    assert not Membership.objects.exists()


# --- permissions -------------------------------------------------------------------------

MEMBER_PAGES = ["/kbs/test-kb/dashboard/", "/kbs/test-kb/guidelines/"]
ADMIN_PAGES = [
    "/kbs/test-kb/agreement/",
    "/kbs/test-kb/disputes/",
    "/kbs/test-kb/disputes/{turn}/",
    "/kbs/test-kb/guidelines/edit/",
    "/kbs/test-kb/settings/",
]
ADMIN_POSTS = [
    "/kbs/test-kb/disputes/{turn}/",
    "/kbs/test-kb/guidelines/edit/",
    "/kbs/test-kb/guidelines/preview/",
    "/kbs/test-kb/settings/",
    "/kbs/test-kb/settings/members/",
    "/kbs/test-kb/settings/members/{user}/remove/",
]


def test_every_page_checks_membership_then_the_admin_role(client, admin_client, knowledge_base, curators, django_user_model):
    turn = make_turns(knowledge_base, ["p"])["p"]
    fill = {"turn": turn.pk, "user": curators[0].pk}
    outsider = django_user_model.objects.create_user("outsider", password="pw-outsider-123")
    outsider.groups.add(Group.objects.get(name="curator"))
    anonymous = client.__class__()
    member = client.__class__()
    member.force_login(curators[0])
    stranger = client.__class__()
    stranger.force_login(outsider)
    for url in [u.format(**fill) for u in MEMBER_PAGES + ADMIN_PAGES]:
        response = anonymous.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
        assert stranger.get(url).status_code == 404, url
        assert admin_client.get(url).status_code == 200, url
    for url in [u.format(**fill) for u in MEMBER_PAGES]:
        assert member.get(url).status_code == 200, url
    for url in [u.format(**fill) for u in ADMIN_PAGES]:
        assert member.get(url).status_code == 403, url
    for url in [u.format(**fill) for u in ADMIN_POSTS]:
        assert anonymous.post(url, {}).status_code == 302, url
        assert stranger.post(url, {}).status_code == 404, url
        assert member.post(url, {}).status_code == 403, url
    assert Membership.objects.filter(user=curators[0]).exists()  # the refused remove did nothing
    assert Adjudication.objects.count() == 0
    # a knowledge base that does not exist is a 404 for admins too
    assert admin_client.get("/kbs/nope/dashboard/").status_code == 404


def test_user_written_text_is_escaped_on_review_pages(admin_client, knowledge_base, curators):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(name=XSS)
    turn = turns_ingest(knowledge_base=knowledge_base, records=[
        TurnRecord(external_id="x", query=XSS, answer=XSS, passages=[PassageRecord(text=XSS, title=XSS)])
    ]).created["x"]
    turn = Turn.objects.get(pk=turn)
    judge(turn, curators[0], [R], "correct", gold=XSS)
    judge(turn, curators[1], [N], "wrong", gold=XSS)
    for url in ["/kbs/test-kb/dashboard/", "/kbs/test-kb/disputes/", f"/kbs/test-kb/disputes/{turn.pk}/",
                "/kbs/test-kb/agreement/", "/kbs/test-kb/settings/"]:
        assert XSS not in admin_client.get(url).content.decode(), url
