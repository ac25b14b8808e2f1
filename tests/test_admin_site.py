"""The Django admin registers every product model so an operator can look things up, read-only
where a change would bypass a service."""

import pytest
from django.apps import apps
from django.contrib import admin

PRODUCT_APPS = ("knowledge", "curation", "training")
# Registered with their own admin: changes there go through the product's services.
EDITABLE = {"training.RetrainingPolicy", "training.WebhookEndpoint", "training.WebhookMessage", "training.WebhookAttempt"}


def product_models():
    return [model for app in PRODUCT_APPS for model in apps.get_app_config(app).get_models()]


def test_every_product_model_is_registered():
    missing = [model._meta.label for model in product_models() if not admin.site.is_registered(model)]
    assert missing == []


@pytest.mark.parametrize("label", sorted(m._meta.label for m in product_models() if m._meta.label not in EDITABLE))
def test_list_and_detail_pages_open_and_offer_no_change(label, admin_client, embedded_knowledge_base, api_token):
    model = apps.get_model(label)
    info = model._meta.app_label, model._meta.model_name
    listing = admin_client.get(f"/admin/{info[0]}/{info[1]}/")
    assert listing.status_code == 200, label
    assert admin_client.get(f"/admin/{info[0]}/{info[1]}/add/").status_code == 403
    row = model.objects.first()
    if row is not None:
        detail = admin_client.get(f"/admin/{info[0]}/{info[1]}/{row.pk}/change/")
        assert detail.status_code == 200
        html = detail.content.decode()
        assert 'name="_save"' not in html  # view-only: no save button
        if label == "knowledge.ApiToken":
            assert row.key_hash not in html
        assert admin_client.post(f"/admin/{info[0]}/{info[1]}/{row.pk}/delete/", {"post": "yes"}).status_code == 403
        assert model.objects.filter(pk=row.pk).exists()
