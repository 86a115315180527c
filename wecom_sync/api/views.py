"""Views of the API: thin, each parses input, calls one service function and reports."""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import QuerySet
from django.urls import reverse
from django.utils.translation import gettext as _
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import events, services
from ..audit import record_action
from ..health import check_sources
from ..models import CallbackEvent, SyncRun, SyncRunChange, SyncSource
from . import serializers
from .pagination import WeComSyncPagination
from .permissions import RUN_SYNC, VIEW_EVENT, VIEW_RUN, VIEW_SOURCE, HasActionPermissions
from .schema import WeComSyncAutoSchema

logger = logging.getLogger(__name__)


class Conflict(APIException):
    """HTTP 409: the object is not in a state that allows the operation."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = _("The object is not in a state that allows this operation.")
    default_code = "conflict"


def choice_filter(queryset: QuerySet, request: Request, param: str, choices: Any, field: str | None = None) -> QuerySet:
    """Filter ``queryset`` by the query parameter ``param`` when given; an unknown value is a 400."""
    value = request.query_params.get(param)
    if not value:
        return queryset
    if value not in choices.values:
        raise ValidationError({param: [_("Unknown value %(value)r; one of: %(choices)s.") % {
            "value": value, "choices": ", ".join(choices.values)}]})
    return queryset.filter(**{field or param: value})


class ReadOnlyApiViewSet(viewsets.ReadOnlyModelViewSet):
    """What every view set of the API shares: read-only, permissions per action, paged lists."""

    permission_classes = [HasActionPermissions]
    pagination_class = WeComSyncPagination


class SourceViewSet(ReadOnlyApiViewSet):
    """WeCom sources: settings (never secrets), status and health; ``sync`` starts a full sync or dry run."""

    queryset = SyncSource.objects.all().order_by("name", "pk")
    serializer_class = serializers.SourceSerializer
    lookup_field = "slug"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"
    required_permissions = {"list": (VIEW_SOURCE,), "retrieve": (VIEW_SOURCE,), "sync": (RUN_SYNC,)}
    schema = WeComSyncAutoSchema(operation_id_base="Source", tags=["sources"])

    def get_serializer_class(self) -> type:
        if getattr(self, "action", None) == "sync":
            return serializers.SyncRequestSerializer
        return super().get_serializer_class()

    @action(detail=True, methods=["post"])
    def sync(self, request: Request, slug: str | None = None) -> Response:
        """Start a full sync (or, with ``{"dry_run": true}``, a dry run) in the background; 202 with the run."""
        source = self.get_object()
        body = serializers.SyncRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if not source.enabled:
            raise Conflict(_("This source is disabled; enable it first."))
        run = services.enqueue_full_sync(
            source, dry_run=body.validated_data["dry_run"], trigger=SyncRun.Trigger.API, requested_by=request.user
        )
        logger.info("wecom_sync.api.sync_started", extra={"run_id": run.pk, "source_id": source.pk})
        if run.status != SyncRun.Status.FAILED:  # recorded as the admin records it, once the run is queued
            message = (_("Started a dry run (run #%(run)s).") if run.kind == SyncRun.Kind.DRY_RUN
                       else _("Started a sync (run #%(run)s).")) % {"run": run.pk}
            record_action(request.user, source, message)
        data = serializers.RunSerializer(run, context=self.get_serializer_context()).data
        location = request.build_absolute_uri(reverse("wecom_sync:api-run-detail", kwargs={"pk": run.pk}))
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": location})


class RunViewSet(ReadOnlyApiViewSet):
    """Sync runs with counters; ``changes`` pages through what a run did; held runs are approved or rejected.

    Filters: ``?source=<slug>``, ``?status=``, ``?kind=``.
    """

    serializer_class = serializers.RunSerializer
    lookup_value_regex = r"[0-9]+"
    required_permissions = {
        "list": (VIEW_RUN,), "retrieve": (VIEW_RUN,), "changes": (VIEW_RUN,),
        "approve": (RUN_SYNC,), "reject": (RUN_SYNC,),
    }
    schema = WeComSyncAutoSchema(operation_id_base="Run", tags=["runs"])

    def get_queryset(self) -> QuerySet:
        queryset = SyncRun.objects.select_related("source", "requested_by", "decided_by").order_by("-created_at", "-id")
        if self.action != "list":
            return queryset
        slug = self.request.query_params.get("source")
        if slug:
            queryset = queryset.filter(source__slug=slug)
        queryset = choice_filter(queryset, self.request, "status", SyncRun.Status)
        return choice_filter(queryset, self.request, "kind", SyncRun.Kind)

    def get_serializer_class(self) -> type:
        if getattr(self, "action", None) == "changes":
            return serializers.RunChangeSerializer
        return super().get_serializer_class()

    @action(detail=True, methods=["get"])
    def changes(self, request: Request, pk: str | None = None) -> Response:
        """The run's changes, paged; filters ``?action=``, ``?object_type=``, ``?applied=true|false``."""
        run = self.get_object()
        queryset = run.changes.order_by("id")
        queryset = choice_filter(queryset, request, "action", SyncRunChange.Action)
        queryset = choice_filter(queryset, request, "object_type", SyncRunChange.ObjectType)
        applied = request.query_params.get("applied")
        if applied:
            if applied.lower() not in ("true", "false"):
                raise ValidationError({"applied": [_('Use "true" or "false".')]})
            queryset = queryset.filter(applied=applied.lower() == "true")
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(serializers.RunChangeSerializer(page, many=True).data)

    def _decide(self, request: Request, decide: Any, message: str) -> Response:
        run = self.get_object()
        try:
            run = decide(run, user=request.user)
        except services.RunStateError as exc:
            raise Conflict(str(exc)) from exc
        record_action(request.user, run, message)
        run = self.get_queryset().get(pk=run.pk)
        return Response(serializers.RunSerializer(run, context=self.get_serializer_context()).data)

    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        """Apply the removals a held run is waiting for; 409 when the run is not held."""
        return self._decide(request, services.approve_run, _("Approved the held removals."))

    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        """Close a held run as rejected, removing nobody; 409 when the run is not held."""
        return self._decide(request, services.reject_run, _("Rejected the held removals."))


class EventViewSet(ReadOnlyApiViewSet):
    """The callback inbox; ``reprocess`` resets an event and queues it again.

    Filters: ``?source=<slug>``, ``?status=``, ``?change_type=``.
    """

    lookup_value_regex = r"[0-9]+"
    required_permissions = {"list": (VIEW_EVENT,), "retrieve": (VIEW_EVENT,), "reprocess": (RUN_SYNC,)}
    schema = WeComSyncAutoSchema(operation_id_base="Event", tags=["events"])

    def get_queryset(self) -> QuerySet:
        queryset = CallbackEvent.objects.select_related("source").order_by("-received_at", "-id")
        if self.action != "list":
            return queryset
        slug = self.request.query_params.get("source")
        if slug:
            queryset = queryset.filter(source__slug=slug)
        change_type = self.request.query_params.get("change_type")
        if change_type:
            queryset = queryset.filter(change_type=change_type)
        return choice_filter(queryset, self.request, "status", CallbackEvent.Status)

    def get_serializer_class(self) -> type:
        if getattr(self, "action", None) == "retrieve":
            return serializers.EventDetailSerializer
        return serializers.EventSerializer

    @action(detail=True, methods=["post"])
    def reprocess(self, request: Request, pk: str | None = None) -> Response:
        """Reset the event to pending and queue it again; 202 with the event, without its decrypted payload."""
        event = self.get_object()
        events.reprocess_events([event.pk])
        record_action(request.user, event, _("Reprocessed."))
        event.refresh_from_db()
        # run_sync alone may reprocess, not read: the payload (names, mobiles, emails) needs view_callbackevent.
        return Response(serializers.EventSerializer(event).data, status=status.HTTP_202_ACCEPTED)


class HealthView(APIView):
    """The health of every source, as ``manage.py wecom_sync_status --json``: 200 when all are ok, else 503."""

    permission_classes = [HasActionPermissions]
    required_permissions = {"default": (VIEW_SOURCE,)}
    schema = WeComSyncAutoSchema(operation_id_base="Health", tags=["health"])

    def get(self, request: Request) -> Response:
        report = check_sources()
        code = status.HTTP_200_OK if report.ok else status.HTTP_503_SERVICE_UNAVAILABLE
        return Response(report.as_dict(), status=code)


class ApiRootView(APIView):
    """``GET api/``: links to the lists of the API, for any signed-in user."""

    permission_classes = [IsAuthenticated]
    schema = None

    def get(self, request: Request) -> Response:
        names = {"sources": "api-source-list", "runs": "api-run-list", "events": "api-event-list",
                 "health": "api-health", "schema": "api-schema"}
        return Response({key: request.build_absolute_uri(reverse(f"wecom_sync:{name}")) for key, name in names.items()})
