"""Data model of wecom_sync (shared/DESIGN.md §3)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models, router, transaction
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from .conf import app_settings
from .fields import RAW_SAVING, EncryptedTextField, Sealed
from .sync.snapshot import normalize_userid

DEFAULT_API_BASE_URL = "https://qyapi.weixin.qq.com"
#: What the admin, the run log and the rotation command say when a source's secrets do not decrypt.
SECRETS_UNREADABLE_MESSAGE = _("stored secrets cannot be decrypted with the configured keys: enter them again")


class SyncSource(models.Model):
    """One WeCom organisation (Corp ID) whose directory is mirrored into this site."""

    class FetchStrategy(models.TextChoices):
        AUTO = "auto", _("Automatic (contact-sync ids when its secret is set, else the app)")
        APP = "app", _("App secret: department list, then members per department")
        CONTACT_SYNC = "contact_sync", _("Contact-sync secret for ids, app secret for details")

    class RemovalPolicy(models.TextChoices):
        DEACTIVATE = "deactivate", _("Deactivate the Django user (recommended)")
        DELETE = "delete", _("Delete the Django user")
        IGNORE = "ignore", _("Leave the Django user as it is")

    name = models.CharField(
        _("name"), max_length=100, help_text=_("A label for this directory, e.g. the company name.")
    )
    slug = models.SlugField(
        _("slug"),
        max_length=64,
        unique=True,
        help_text=_("Short identifier used in the callback URL. Changing it changes the callback URL."),
    )
    corp_id = models.CharField(
        _("Corp ID"),
        max_length=64,
        help_text=_("The enterprise ID (企业ID) from My Company → Company Information in the WeCom console."),
    )
    agent_id = models.BigIntegerField(
        _("AgentId"),
        null=True,
        blank=True,
        help_text=_("The AgentId of the self-built app whose Secret is entered below."),
    )
    secret = EncryptedTextField(
        _("Secret"),
        blank=True,
        help_text=_("The self-built app's Secret; the app's visible range must cover the synced departments."),
    )
    contact_sync_secret = EncryptedTextField(
        _("contact-sync secret"),
        blank=True,
        help_text=_("Optional: the Secret of Contacts Sync (通讯录同步), used to enumerate department and member ids."),
    )
    token = EncryptedTextField(
        pgettext_lazy("WeCom console term", "Token"),
        blank=True,
        help_text=_("The callback Token (up to 32 letters and digits)."),
    )
    encoding_aes_key = EncryptedTextField(
        _("EncodingAESKey"), blank=True, help_text=_("The callback EncodingAESKey (43 letters and digits).")
    )
    api_base_url = models.URLField(
        _("API base URL"),
        default=DEFAULT_API_BASE_URL,
        help_text=_("Leave as is unless you use a private deployment, a proxy or the bundled simulator."),
    )
    enabled = models.BooleanField(
        _("enabled"), default=True, help_text=_("Disabled sources are not synced and refuse callbacks.")
    )
    root_department_id = models.PositiveBigIntegerField(
        _("root department id"), default=1, help_text=_("Only this department and its subtree are synced.")
    )
    fetch_strategy = models.CharField(
        _("fetch strategy"), max_length=20, choices=FetchStrategy.choices, default=FetchStrategy.AUTO
    )
    sync_interval_minutes = models.PositiveIntegerField(
        _("sync interval (minutes)"),
        default=0,
        help_text=_("Run a full sync this often; 0 means only on demand and through callbacks."),
    )
    removal_policy = models.CharField(
        _("removal policy"),
        max_length=20,
        choices=RemovalPolicy.choices,
        default=RemovalPolicy.DEACTIVATE,
        help_text=_("What happens to the Django user of a member who is no longer in the directory."),
    )
    removal_threshold_count = models.PositiveIntegerField(
        _("removal threshold (users)"),
        default=50,
        help_text=_("A run that would remove more users than this is held for approval."),
    )
    removal_threshold_percent = models.PositiveSmallIntegerField(
        _("removal threshold (%)"),
        default=20,
        help_text=_("A run that would remove more than this share of the synced users is held for approval."),
    )
    login_enabled = models.BooleanField(
        _("sign in with WeCom"),
        default=False,
        help_text=_("Let this source's members sign in to the site with WeCom (a button on the login page)."),
    )
    login_agent_id = models.BigIntegerField(
        _("AgentId for sign-in"),
        null=True,
        blank=True,
        help_text=_("The AgentId used for sign-in, if it differs from the AgentId above."),
    )
    login_silent_in_client = models.BooleanField(
        _("silent sign-in inside WeCom"),
        default=True,
        help_text=_("Inside the WeCom client, sign members in without showing a QR code."),
    )
    last_synced_at = models.DateTimeField(_("last synced at"), null=True, blank=True, editable=False)
    lock_run = models.ForeignKey(
        "SyncRun",
        verbose_name=_("running sync"),
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=_("The run holding this source's lock, if any."),
    )
    locked_at = models.DateTimeField(_("locked at"), null=True, blank=True, editable=False)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("sync source")
        verbose_name_plural = _("sync sources")
        ordering = ["name"]
        permissions = [
            ("run_sync", _("Can start, approve and retry syncs")),
            ("send_message", _("Can send WeCom app messages")),
        ]

    def __str__(self) -> str:
        return self.name

    SECRET_FIELDS = ("secret", "contact_sync_secret", "token", "encoding_aes_key")

    def save(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Save; a new row is inserted first and its secrets written next, so their ciphertext binds to its pk."""
        pending: dict[str, Any] = {}
        if self.pk is None and not kwargs.get("update_fields"):
            pending = {name: self.__dict__.get(name) for name in self.SECRET_FIELDS}
            pending = {k: v for k, v in pending.items() if v and not isinstance(v, Sealed)}
        if not pending:
            super().save(*args, **kwargs)
            return
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            for name in pending:
                self.__dict__[name] = ""
            super().save(*args, **kwargs)
            self.__dict__.update(pending)
            super().save(using=using, update_fields=list(pending))

    def _save_table(self, raw: bool = False, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        # A raw save (loaddata) writes the fixture's ciphertexts unchanged: no decryption, so a fixture from
        # a site with other keys still loads (its source then says its secrets must be entered again).
        if not raw:
            return super()._save_table(raw, *args, **kwargs)  # type: ignore[misc]  # private in Django's stubs
        self.__dict__[RAW_SAVING] = True
        try:
            return super()._save_table(raw, *args, **kwargs)  # type: ignore[misc]
        finally:
            self.__dict__.pop(RAW_SAVING, None)

    @property
    def secrets_readable(self) -> bool:
        """Whether every stored secret decrypts with the configured keys."""
        fields = [self._meta.get_field(name) for name in self.SECRET_FIELDS]
        return all(isinstance(f, EncryptedTextField) and f.is_readable(self) for f in fields)

    def get_callback_path(self) -> str:
        """Return the path of this source's callback endpoint."""
        return reverse("wecom_sync:callback", kwargs={"slug": self.slug})

    def get_callback_url(self, request=None) -> str:  # noqa: ANN001 - HttpRequest or None
        """Return the callback URL to paste into the WeCom console, absolute whenever possible."""
        path = self.get_callback_path()
        if request is not None:
            return request.build_absolute_uri(path)
        base = app_settings.CALLBACK_BASE_URL
        return f"{base}{path}" if base else path

    @property
    def effective_fetch_strategy(self) -> str:
        """The strategy actually used: AUTO resolves on whether a contact-sync secret is set."""
        if self.fetch_strategy == self.FetchStrategy.AUTO:
            return self.FetchStrategy.CONTACT_SYNC if self.contact_sync_secret else self.FetchStrategy.APP
        return self.fetch_strategy


class ExternalDepartment(models.Model):
    """A WeCom department mirrored locally; the department tree of the site."""

    source = models.ForeignKey(
        SyncSource, verbose_name=_("source"), on_delete=models.CASCADE, related_name="departments"
    )
    department_id = models.PositiveBigIntegerField(_("WeCom department id"))
    parent = models.ForeignKey(
        "self",
        verbose_name=_("parent"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        help_text=_("The local parent; a department whose parent is outside the synced scope hangs under the root."),
    )
    remote_parent_id = models.PositiveBigIntegerField(
        _("WeCom parent id"), null=True, blank=True, help_text=_("The parent id as WeCom reports it.")
    )
    name = models.CharField(_("name"), max_length=255, blank=True)
    name_en = models.CharField(_("English name"), max_length=255, blank=True)
    order = models.BigIntegerField(_("order"), default=0, help_text=_("Position among siblings; larger first."))
    leaders = models.JSONField(_("leaders"), default=list, blank=True, help_text=_("userids of the leaders."))
    raw = models.JSONField(_("raw payload"), default=dict, blank=True)
    digest = models.CharField(_("payload digest"), max_length=64, blank=True)
    group = models.OneToOneField(
        "auth.Group",
        verbose_name=_("mirrored group"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="wecom_department",
        help_text=_("The Django group this source created for the department, if groups are mirrored."),
    )
    is_removed = models.BooleanField(_("removed"), default=False)
    removed_at = models.DateTimeField(_("removed at"), null=True, blank=True)
    last_seen_at = models.DateTimeField(
        _("last confirmed at"),
        null=True,
        blank=True,
        help_text=_("When WeCom last confirmed this object exists (a sync or event that read it)."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("WeCom department")
        verbose_name_plural = _("WeCom departments")
        ordering = ["source", "-order", "department_id"]
        constraints = [
            models.UniqueConstraint(fields=["source", "department_id"], name="wecom_sync_dept_unique_per_source"),
        ]
        indexes = [models.Index(fields=["source", "is_removed"], name="wecom_sync_dept_src_removed")]

    def __str__(self) -> str:
        return f"{self.name or '?'} ({self.department_id})"


class ExternalUser(models.Model):
    """A WeCom member mirrored locally, linked to a Django user."""

    class Status(models.IntegerChoices):
        ACTIVE = 1, _("activated")
        DISABLED = 2, _("disabled")
        NOT_ACTIVATED = 4, _("not activated")
        EXITED = 5, _("left the company")

    class AccountOrigin(models.TextChoices):
        CREATED = "created", _("created by the sync")
        LINKED = "linked", _("existing account linked by the adapter")
        MANUAL = "manual", _("linked by an admin")

    source = models.ForeignKey(SyncSource, verbose_name=_("source"), on_delete=models.CASCADE, related_name="users")
    userid = models.CharField(_("userid"), max_length=64, help_text=_("The WeCom userid, in WeCom's case."))
    userid_key = models.CharField(
        _("userid key"),
        max_length=64,
        editable=False,
        help_text=_("The userid in lower case; userids are case-insensitive."),
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("Django user"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="wecom_accounts",
    )
    account_origin = models.CharField(
        _("account origin"),
        max_length=16,
        choices=AccountOrigin.choices,
        default=AccountOrigin.CREATED,
        help_text=_(
            "How the Django account came to be mapped. The sync owns only the accounts it created: it never "
            "changes the login or email of a linked or manual account, and never deletes it."
        ),
    )
    name = models.CharField(_("name"), max_length=255, blank=True)
    status = models.PositiveSmallIntegerField(_("WeCom status"), choices=Status.choices, default=Status.ACTIVE)
    raw = models.JSONField(_("raw payload"), default=dict, blank=True)
    digest = models.CharField(_("payload digest"), max_length=64, blank=True)
    is_removed = models.BooleanField(_("removed"), default=False)
    removed_at = models.DateTimeField(_("removed at"), null=True, blank=True)
    last_seen_at = models.DateTimeField(
        _("last confirmed at"),
        null=True,
        blank=True,
        help_text=_("When WeCom last confirmed this object exists (a sync or event that read it)."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("WeCom user")
        verbose_name_plural = _("WeCom users")
        ordering = ["source", "userid_key"]
        constraints = [
            models.UniqueConstraint(fields=["source", "userid_key"], name="wecom_sync_user_unique_per_source"),
            models.UniqueConstraint(
                fields=["source", "user"],
                condition=models.Q(user__isnull=False),
                name="wecom_sync_user_one_account_per_source",
            ),
        ]
        indexes = [models.Index(fields=["source", "is_removed"], name="wecom_sync_user_src_removed")]

    def __str__(self) -> str:
        return f"{self.name or self.userid} ({self.userid})"

    def save(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.userid_key = normalize_userid(self.userid)
        super().save(*args, **kwargs)


class ExternalMembership(models.Model):
    """A WeCom member's place in a WeCom department."""

    user = models.ForeignKey(
        ExternalUser, verbose_name=_("WeCom user"), on_delete=models.CASCADE, related_name="memberships"
    )
    department = models.ForeignKey(
        ExternalDepartment, verbose_name=_("WeCom department"), on_delete=models.CASCADE, related_name="memberships"
    )
    is_leader = models.BooleanField(_("leader"), default=False)
    order = models.BigIntegerField(_("order"), default=0)
    is_main = models.BooleanField(_("main department"), default=False)

    class Meta:
        verbose_name = _("WeCom membership")
        verbose_name_plural = _("WeCom memberships")
        constraints = [
            models.UniqueConstraint(fields=["user", "department"], name="wecom_sync_membership_unique"),
        ]

    def __str__(self) -> str:
        return _("%(user)s in %(department)s") % {"user": self.user_id, "department": self.department_id}


class ExternalTag(models.Model):
    """A WeCom tag (标签) mirrored locally, optionally as a Django group."""

    source = models.ForeignKey(SyncSource, verbose_name=_("source"), on_delete=models.CASCADE, related_name="tags")
    tag_id = models.PositiveBigIntegerField(_("WeCom tag id"))
    name = models.CharField(_("name"), max_length=255, blank=True)
    users = models.ManyToManyField(
        ExternalUser, verbose_name=_("members"), blank=True, related_name="tags",
        help_text=_("Members the tag lists by name."),
    )
    departments = models.ManyToManyField(
        ExternalDepartment, verbose_name=_("departments"), blank=True, related_name="tags",
        help_text=_("Departments the tag lists; each stands for all its members."),
    )
    raw = models.JSONField(_("raw payload"), default=dict, blank=True)
    digest = models.CharField(_("payload digest"), max_length=64, blank=True)
    group = models.OneToOneField(
        "auth.Group",
        verbose_name=_("mirrored group"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="wecom_tag",
        help_text=_("The Django group this source created for the tag, if tags are mirrored."),
    )
    synced_members = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        verbose_name=_("group members added by the sync"),
        blank=True,
        related_name="+",
        help_text=_(
            "Django users the sync put into the mirrored group. Only they are taken out when they leave the "
            "tag; members added to the group by hand stay."
        ),
    )
    is_removed = models.BooleanField(_("removed"), default=False)
    removed_at = models.DateTimeField(_("removed at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("WeCom tag")
        verbose_name_plural = _("WeCom tags")
        ordering = ["source", "tag_id"]
        constraints = [
            models.UniqueConstraint(fields=["source", "tag_id"], name="wecom_sync_tag_unique_per_source"),
        ]

    def __str__(self) -> str:
        return f"{self.name or '?'} ({self.tag_id})"


class SyncRun(models.Model):
    """One full sync, dry run or batch of callback events, and its log."""

    class Kind(models.TextChoices):
        FULL = "full", _("full sync")
        DRY_RUN = "dry_run", _("dry run")
        EVENTS = "events", _("callback events")

    class Trigger(models.TextChoices):
        MANUAL = "manual", _("admin")
        SCHEDULE = "schedule", _("schedule")
        COMMAND = "command", _("management command")
        API = "api", _("API")
        CALLBACK = "callback", _("callback")
        RETRY = "retry", _("retry")
        LOGIN = "login", _("sign-in with WeCom")

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        SUCCEEDED = "succeeded", _("succeeded")
        PARTIAL = "partial", _("partial")
        FAILED = "failed", _("failed")
        HELD = "held", _("held for approval")
        CANCELLED = "cancelled", _("cancelled")
        REJECTED = "rejected", _("rejected")

    FINISHED = (Status.SUCCEEDED, Status.PARTIAL, Status.FAILED, Status.CANCELLED, Status.REJECTED)

    source = models.ForeignKey(SyncSource, verbose_name=_("source"), on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices, default=Kind.FULL)
    trigger = models.CharField(_("trigger"), max_length=16, choices=Trigger.choices, default=Trigger.API)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.QUEUED)
    force = models.BooleanField(_("forced"), default=False, help_text=_("Removal thresholds were bypassed."))
    created_at = models.DateTimeField(_("queued at"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(_("last heartbeat"), null=True, blank=True)
    counters = models.JSONField(_("counters"), default=dict, blank=True)
    progress_done = models.PositiveIntegerField(_("progress done"), default=0)
    progress_total = models.PositiveIntegerField(_("progress total"), default=0)
    snapshot_complete = models.BooleanField(_("snapshot complete"), null=True, blank=True)
    message = models.TextField(_("message"), blank=True)
    task_id = models.CharField(_("Celery task id"), max_length=255, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("requested by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("approved or rejected by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_at = models.DateTimeField(_("approved or rejected at"), null=True, blank=True)

    class Meta:
        verbose_name = _("sync run")
        verbose_name_plural = _("sync runs")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["source", "status"], name="wecom_sync_run_src_status"),
            models.Index(fields=["status", "heartbeat_at"], name="wecom_sync_run_status_hb"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.get_status_display()})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def duration(self):  # noqa: ANN201 - timedelta | None
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class SyncRunChange(models.Model):
    """What a run did, or plans to do, to one object. Unchanged objects get no row."""

    class ObjectType(models.TextChoices):
        USER = "user", pgettext_lazy("sync change object type", "user")
        DEPARTMENT = "department", _("department")
        MEMBERSHIP = "membership", _("membership")
        TAG = "tag", _("tag")
        EVENT = "event", _("callback event")

    class Action(models.TextChoices):
        CREATED = "created", _("created")
        UPDATED = "updated", _("updated")
        MOVED = "moved", _("moved")
        DEACTIVATED = "deactivated", _("deactivated")
        REACTIVATED = "reactivated", _("reactivated")
        REMOVED = "removed", _("removed")
        DELETED = "deleted", _("deleted")
        FAILED = "failed", _("failed")
        SKIPPED = "skipped", _("skipped")

    run = models.ForeignKey(SyncRun, verbose_name=_("run"), on_delete=models.CASCADE, related_name="changes")
    object_type = models.CharField(_("object type"), max_length=16, choices=ObjectType.choices)
    external_id = models.CharField(_("WeCom id"), max_length=64, help_text=_("userid or department id."))
    display_name = models.CharField(_("name"), max_length=255, blank=True)
    action = models.CharField(_("action"), max_length=16, choices=Action.choices)
    fields = models.JSONField(_("changed fields"), default=dict, blank=True, help_text=_("field: [old, new]."))
    error = models.TextField(_("error"), blank=True)
    applied = models.BooleanField(
        _("applied"), default=True, help_text=_("False for a dry run's plan or a held run's pending removals.")
    )
    created_at = models.DateTimeField(_("recorded at"), auto_now_add=True)

    class Meta:
        verbose_name = _("sync run change")
        verbose_name_plural = _("sync run changes")
        ordering = ["run", "id"]
        indexes = [models.Index(fields=["run", "action"], name="wecom_sync_change_run_action")]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.get_object_type_display()} {self.external_id}"


class CallbackEvent(models.Model):
    """The durable inbox of contact-change callbacks: stored before acknowledged, applied once."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        APPLIED = "applied", _("applied")
        FAILED = "failed", _("failed")
        IGNORED = "ignored", _("ignored")

    source = models.ForeignKey(SyncSource, verbose_name=_("source"), on_delete=models.CASCADE, related_name="events")
    received_at = models.DateTimeField(_("received at"), auto_now_add=True)
    dedupe_key = models.CharField(_("dedupe key"), max_length=255, help_text=_("Identical deliveries share it."))
    event = models.CharField(_("event"), max_length=64, blank=True)
    change_type = models.CharField(_("change type"), max_length=64, blank=True)
    object_id = models.CharField(
        _("object id"), max_length=64, blank=True, help_text=_("UserID, department Id or TagId.")
    )
    create_time = models.BigIntegerField(_("WeCom CreateTime"), default=0)
    payload = models.JSONField(_("payload"), default=dict, blank=True, help_text=_("The decrypted event fields."))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    next_attempt_at = models.DateTimeField(_("next attempt at"), null=True, blank=True)
    processed_at = models.DateTimeField(_("processed at"), null=True, blank=True)
    run = models.ForeignKey(
        SyncRun, verbose_name=_("run"), null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )

    class Meta:
        verbose_name = _("callback event")
        verbose_name_plural = _("callback events")
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["source", "dedupe_key"], name="wecom_sync_event_dedupe"),
        ]
        indexes = [
            models.Index(fields=["status", "received_at"], name="wecom_sync_event_status_recv"),
            models.Index(fields=["source", "object_id"], name="wecom_sync_event_src_object"),
        ]

    def __str__(self) -> str:
        return f"{self.change_type or self.event} {self.object_id} ({self.get_status_display()})"
