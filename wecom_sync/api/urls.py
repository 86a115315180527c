"""URLs of the API, included by ``wecom_sync.urls`` under ``api/`` (names in the ``wecom_sync`` namespace)."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from .schema import SchemaView
from .views import ApiRootView, EventViewSet, HealthView, RunViewSet, SourceViewSet

router = SimpleRouter()
router.register("sources", SourceViewSet, basename="api-source")
router.register("runs", RunViewSet, basename="api-run")
router.register("events", EventViewSet, basename="api-event")

#: The endpoints described by the OpenAPI schema.
api_urlpatterns = [
    path("", ApiRootView.as_view(), name="api-root"),
    *router.urls,
    path("health/", HealthView.as_view(), name="api-health"),
]

urlpatterns = [
    *api_urlpatterns,
    path("schema/", SchemaView.as_view(), name="api-schema"),
]
