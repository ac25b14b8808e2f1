"""403, 404 and 500 pages in the product's layout, with DEBUG off (as pytest-django runs)."""

from django.conf import settings
from django.test import RequestFactory
from django.views.defaults import server_error


def test_a_missing_page_is_a_404_in_the_layout_with_a_way_back(admin_client):
    assert settings.DEBUG is False
    response = admin_client.get("/kbs/no-such-kb/")
    html = response.content.decode()
    assert response.status_code == 404
    assert 'id="error-page" data-status="404"' in html and 'class="brand"' in html and 'href="/"' in html


def test_a_forbidden_page_is_a_403_that_says_why(client, django_user_model, knowledge_base):
    user = django_user_model.objects.create_user("stranger", password="pw-stranger-123")
    client.force_login(user)
    response = client.get(f"/kbs/{knowledge_base.slug}/settings/")
    html = response.content.decode()
    assert response.status_code in (403, 404)  # a non-member may not even learn the knowledge base exists
    assert f'data-status="{response.status_code}"' in html and 'class="brand"' in html


def test_an_expired_form_is_a_403_that_explains_the_csrf_failure(django_user_model):
    from django.test import Client

    user = django_user_model.objects.create_user("carol", password="pw-carol-123")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/logout/")
    assert response.status_code == 403
    assert "This form expired" in response.content.decode()


def test_a_server_error_renders_the_layout_without_a_request_context():
    response = server_error(RequestFactory().get("/"))
    html = response.content.decode()
    assert response.status_code == 500
    assert 'data-status="500"' in html and 'class="brand"' in html and "Something went wrong" in html
