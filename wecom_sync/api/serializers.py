"""Serializers of the API. Every field is listed by name: a secret can never slip in with a new model field."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from ..fields import EncryptedTextField
from ..health import SourceHealth, source_health
from ..models import CallbackEvent, SyncRun, SyncRunChange, SyncSource

#: The encrypted fields of a source; the API says only whether each is set.
SECRET_FIELDS = SyncSource.SECRET_FIELDS


class RunSummarySerializer(serializers.ModelSerializer):
    """A run in a few fields, as shown inside a source."""

    class Meta:
        model = SyncRun
        fields = ["id", "kind", "status", "created_at", "finished_at"]
        read_only_fields = fields


class SourceSerializer(serializers.ModelSerializer):
    """A source: its settings (never a secret, only whether each is set), status and health."""

    secrets_set = serializers.SerializerMethodField(
        help_text=_("For each of the four secrets, whether it is stored (the values are never returned).")
    )
    secrets_readable = serializers.SerializerMethodField(
        help_text=_("Whether the stored secrets decrypt with the configured keys; if not, they must be entered "
                    "again.")
    )
    callback_url = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField(help_text=_('"ok", "attention" or "disabled".'))
    health = serializers.SerializerMethodField()
    last_run = serializers.SerializerMethodField()
    running_run = serializers.IntegerField(source="lock_run_id", read_only=True, allow_null=True)

    class Meta:
        model = SyncSource
        fields = [
            "id", "name", "slug", "corp_id", "agent_id", "api_base_url", "enabled", "root_department_id",
            "fetch_strategy", "sync_interval_minutes", "removal_policy", "removal_threshold_count",
            "removal_threshold_percent", "login_enabled", "last_synced_at", "callback_url", "secrets_set",
            "secrets_readable", "status", "health", "last_run", "running_run", "created_at", "updated_at",
        ]
        read_only_fields = fields

    def _health(self, obj: SyncSource) -> SourceHealth:
        cache = self.context.setdefault("_health", {})  # type: ignore[attr-defined]  # DRF's context is a dict
        if obj.pk not in cache:
            cache[obj.pk] = source_health(obj)
        return cache[obj.pk]

    def get_secrets_set(self, obj: SyncSource) -> dict[str, bool]:
        # From the stored ciphertext: a source whose secrets cannot be decrypted still lists.
        fields = {name: obj._meta.get_field(name) for name in SECRET_FIELDS}
        return {name: isinstance(field, EncryptedTextField) and field.is_set(obj) for name, field in fields.items()}

    def get_secrets_readable(self, obj: SyncSource) -> bool:
        return obj.secrets_readable

    def get_callback_url(self, obj: SyncSource) -> str:
        return obj.get_callback_url(self.context.get("request"))

    def get_status(self, obj: SyncSource) -> str:
        if not obj.enabled:
            return "disabled"
        return "ok" if self._health(obj).ok else "attention"

    def get_health(self, obj: SyncSource) -> dict[str, Any]:
        data = self._health(obj).as_dict()
        for key in ("slug", "name", "enabled"):
            data.pop(key)
        return data

    def get_last_run(self, obj: SyncSource) -> dict[str, Any] | None:
        run = obj.runs.order_by("-created_at", "-id").first()
        return RunSummarySerializer(run).data if run is not None else None


class RunSerializer(serializers.ModelSerializer):
    """A sync run: status, counters, progress and decision."""

    source: serializers.SlugRelatedField = serializers.SlugRelatedField(  # type: ignore[assignment]
        slug_field="slug", read_only=True)
    progress = serializers.SerializerMethodField()
    requested_by = serializers.SerializerMethodField()
    decided_by = serializers.SerializerMethodField()
    changes_count = serializers.SerializerMethodField()

    class Meta:
        model = SyncRun
        fields = [
            "id", "source", "kind", "trigger", "status", "force", "counters", "progress", "snapshot_complete",
            "message", "created_at", "started_at", "finished_at", "heartbeat_at", "task_id", "requested_by",
            "decided_by", "decided_at", "changes_count",
        ]
        read_only_fields = fields

    def get_progress(self, obj: SyncRun) -> dict[str, int]:
        return {"done": obj.progress_done, "total": obj.progress_total}

    def get_requested_by(self, obj: SyncRun) -> str | None:
        return obj.requested_by.get_username() if obj.requested_by is not None else None

    def get_decided_by(self, obj: SyncRun) -> str | None:
        return obj.decided_by.get_username() if obj.decided_by is not None else None

    def get_changes_count(self, obj: SyncRun) -> int:
        return obj.changes.count()


class RunChangeSerializer(serializers.ModelSerializer):
    """What a run did, or plans to do, to one object."""

    class Meta:
        model = SyncRunChange
        fields = ["id", "object_type", "external_id", "display_name", "action", "fields", "error", "applied",
                  "created_at"]
        read_only_fields = fields


class EventSerializer(serializers.ModelSerializer):
    """A callback event of the inbox."""

    source: serializers.SlugRelatedField = serializers.SlugRelatedField(  # type: ignore[assignment]
        slug_field="slug", read_only=True)

    class Meta:
        model = CallbackEvent
        fields = ["id", "source", "received_at", "event", "change_type", "object_id", "create_time", "status",
                  "attempts", "last_error", "next_attempt_at", "processed_at", "run"]
        read_only_fields = fields


class EventDetailSerializer(EventSerializer):
    """A callback event with its decrypted fields."""

    class Meta(EventSerializer.Meta):
        fields = [*EventSerializer.Meta.fields, "payload"]
        read_only_fields = fields


class SyncRequestSerializer(serializers.Serializer):
    """The body of ``POST sources/<slug>/sync/``."""

    dry_run = serializers.BooleanField(
        default=False, help_text=_("Plan only: store the changes, apply none.")
    )
