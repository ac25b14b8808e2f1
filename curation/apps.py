from django.apps import AppConfig


class CurationConfig(AppConfig):
    name = "curation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from curation import receivers  # noqa: F401  (connects the signal receivers)

        # API tokens are worth no more than their user's rights now: the same rule as the
        # pages (admins every knowledge base, curators those they are members of).
        from curation.permissions import knowledge_bases_for, user_can_curate
        from knowledge.services.tokens import user_access_rule_register

        user_access_rule_register(may_use=user_can_curate, usable=knowledge_bases_for)
