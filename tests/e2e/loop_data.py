"""A small knowledge base the base retriever cannot answer and a little curation can: each
internal document is asked about by a project codename it never mentions. Curated labels teach
the codenames; held-out phrasings of them show whether a candidate learned. Written for these
tests (no outside data)."""

CODENAMES = [
    "Bluefin", "Kestrel", "Marigold", "Obsidian", "Juniper", "Tarragon",
    "Wolfram", "Zephyr", "Halcyon", "Larkspur", "Cobalt", "Fennel",
]  # fmt: skip

DOCUMENTS = [
    {"_id": "doc-payroll", "title": "Payroll taxes", "text": "Quarterly payroll tax filings are prepared by the finance team and submitted before the fifteenth of the following month."},
    {"_id": "doc-cooling", "title": "Data centre cooling", "text": "The data centre keeps its racks below twenty-seven degrees with chilled water loops and hot aisle containment."},
    {"_id": "doc-refunds", "title": "Customer refunds", "text": "Customers may return unused items within thirty days; the refund goes back to the original card within a week."},
    {"_id": "doc-passwords", "title": "Password resets", "text": "Staff reset forgotten passwords at the self-service portal after confirming a code sent to their phone."},
    {"_id": "doc-shipping", "title": "Shipping delays", "text": "Parcels held at customs are released once the import declaration and the duty payment have been checked."},
    {"_id": "doc-vacation", "title": "Vacation policy", "text": "Employees accrue two days of paid leave per month and may carry up to five unused days into the next year."},
    {"_id": "doc-laptops", "title": "Laptop procurement", "text": "New laptops are ordered through the equipment catalogue and arrive imaged with the standard software."},
    {"_id": "doc-parking", "title": "Office parking", "text": "Parking permits for the garage are issued monthly and electric vehicle bays are reserved for charging."},
    {"_id": "doc-badges", "title": "Security badges", "text": "Lost access badges must be reported at reception, where a temporary badge is printed for the day."},
    {"_id": "doc-expenses", "title": "Expense reports", "text": "Travel expenses are claimed with scanned receipts and approved by the line manager within ten days."},
    {"_id": "doc-onboarding", "title": "Onboarding checklist", "text": "During the first week a new hire meets a buddy, completes safety training and sets up their accounts."},
    {"_id": "doc-printers", "title": "Printer maintenance", "text": "Printers report low toner to the helpdesk, which replaces cartridges and clears paper jams on request."},
]  # fmt: skip

TEMPLATES = [
    "what is {c}", "tell me about {c}", "explain {c}", "{c} overview", "details of {c}", "how does {c} work",
    "{c} summary", "who handles {c}", "describe {c}", "{c} in short", "what should I know about {c}", "{c} basics",
    "give me the gist of {c}", "{c} rules", "where do I read about {c}", "the {c} process",
]  # fmt: skip


def query_for(template: str, codename: str) -> str:
    return template.format(c=f"project {codename}")


def codename_queries() -> list[tuple[str, str]]:
    """(query, document id) for every phrasing of every codename."""
    return [(query_for(t, c), DOCUMENTS[i]["_id"]) for i, c in enumerate(CODENAMES) for t in TEMPLATES]
