"""Failure tags: each knowledge base's small set of tags a curator puts on a turn ("retrieval
miss", "answer not grounded"), created with the defaults, and kept by admins: add, rename,
retire (a retired tag stays on the labels that carry it) and restore. Slugs never change:
exports carry them and training reads them (docs/failure-tags.md)."""

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.text import slugify

from curation.models import DEFAULT_FAILURE_TAGS, FailureTag
from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase

MAX_NAME = 100
MAX_SLUG = 50


def failure_tags_create_defaults(*, knowledge_base: KnowledgeBase) -> list[FailureTag]:
    """Give the knowledge base the default tags it lacks (idempotent); returns its tags."""
    FailureTag.objects.bulk_create(
        [
            FailureTag(knowledge_base=knowledge_base, slug=slug, name=name, position=position)
            for position, (slug, name) in enumerate(DEFAULT_FAILURE_TAGS)
        ],
        ignore_conflicts=True,
    )
    return list(FailureTag.objects.filter(knowledge_base=knowledge_base))


def _name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("A failure tag needs a name.")
    name = " ".join(name.split())
    if "\x00" in name or len(name) > MAX_NAME:
        raise InvalidInput(f"A failure tag's name must be at most {MAX_NAME} characters of text.")
    return name


def failure_tag_create(*, knowledge_base: KnowledgeBase, name: str, slug: str = "") -> FailureTag:
    """Add a tag at the end of the knowledge base's picker; the slug defaults to the name's."""
    name = _name(name)
    slug = slugify(slug or name)[:MAX_SLUG].strip("-")
    if not slug:
        raise InvalidInput(f"Cannot make a slug of {name!r}: give one of letters, digits and dashes.")
    with transaction.atomic():
        position = (FailureTag.objects.filter(knowledge_base=knowledge_base).aggregate(last=Max("position"))["last"] or 0) + 1
        try:
            with transaction.atomic():
                return FailureTag.objects.create(knowledge_base=knowledge_base, slug=slug, name=name, position=position)
        except IntegrityError:
            raise InvalidInput(f"Knowledge base {knowledge_base.slug!r} already has a failure tag {slug!r}.") from None


def failure_tag_for(*, knowledge_base: KnowledgeBase, slug: str) -> FailureTag:
    tag = FailureTag.objects.filter(knowledge_base=knowledge_base, slug=slug).first()
    if tag is None:
        raise InvalidInput(f"Knowledge base {knowledge_base.slug!r} has no failure tag {slug!r}.")
    return tag


def failure_tag_rename(*, tag: FailureTag, name: str) -> FailureTag:
    """A new name only: the slug stays, so exports and the training rule keep meaning the same."""
    tag.name = _name(name)
    tag.save(update_fields=["name"])
    return tag


def failure_tag_retire(*, tag: FailureTag) -> FailureTag:
    """Stop offering the tag; labels that carry it keep it (and it still counts there)."""
    if tag.retired_at is None:
        tag.retired_at = timezone.now()
        tag.save(update_fields=["retired_at"])
    return tag


def failure_tag_restore(*, tag: FailureTag) -> FailureTag:
    if tag.retired_at is not None:
        tag.retired_at = None
        tag.save(update_fields=["retired_at"])
    return tag


def failure_tags_resolve(
    *,
    knowledge_base: KnowledgeBase,
    slugs,
    allowed_retired: frozenset[str] = frozenset(),
    any_retired: bool = False,
    where: str = "failure_tags",
) -> list[FailureTag]:
    """The knowledge base's tags named by `slugs` (a list of slug strings), in picker order.

    InvalidInput names the first slug that is not one of this knowledge base's tags (another
    knowledge base's tag is unknown here), or a retired tag not in `allowed_retired` (the
    ones the label already carried: a retired tag stays, but is not put on anew; `any_retired`
    for an import, whose file may carry old labels' retired tags)."""
    if slugs in (None, ""):
        return []
    if not isinstance(slugs, (list, tuple)) or not all(isinstance(slug, str) for slug in slugs):
        raise InvalidInput(f"{where} must be a list of tag slugs.")
    wanted = list(dict.fromkeys(slugs))
    if not wanted:
        return []
    found = {tag.slug: tag for tag in FailureTag.objects.filter(knowledge_base=knowledge_base, slug__in=wanted)}
    for slug in wanted:
        tag = found.get(slug)
        if tag is None:
            known = ", ".join(
                FailureTag.objects.filter(knowledge_base=knowledge_base, retired_at__isnull=True).values_list("slug", flat=True)
            )
            raise InvalidInput(f"{where}: {slug[:60]!r} is not a failure tag of {knowledge_base.slug!r} (known: {known}).")
        if tag.retired and not any_retired and slug not in allowed_retired:
            raise InvalidInput(f"{where}: the failure tag {slug!r} is retired; it stays on old labels only.")
    return sorted(found.values(), key=lambda tag: (tag.position, tag.pk))
