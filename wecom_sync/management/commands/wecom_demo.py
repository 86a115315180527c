"""The self-contained demo: the bundled WeCom simulator, a full sync and live callback events."""

from __future__ import annotations

import secrets
import shlex
import sys
import threading
import time
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler, get_internal_wsgi_application
from django.db import connection
from django.utils.translation import gettext as _

from ...crypto import generate_encoding_aes_key, generate_token
from ...models import CallbackEvent, ExternalDepartment, ExternalUser, SyncRun, SyncSource

#: The demo's own superuser in a site that already has users (never an existing account).
DEMO_LOGIN = "wecom_demo"


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        pass


class Command(BaseCommand):
    help = _("Run the demo: a simulated WeCom organisation, a full sync, then live encrypted callback events.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--users", type=int, default=2000, help=_("Members in the simulated organisation."))
        parser.add_argument("--departments", type=int, default=120, help=_("Departments in the organisation."))
        parser.add_argument("--seed", type=int, default=2024, help=_("Seed of the organisation generator."))
        parser.add_argument("--serve", action="store_true",
                            help=_("Keep the simulator and the admin running on --port until Ctrl+C."))
        parser.add_argument("--port", type=int, default=8000, help=_("Port of the admin with --serve."))
        parser.add_argument("--cleanup", action="store_true",
                            help=_("Remove the demo source, the accounts its sync created and the demo login."))

    def handle(self, *args: Any, **options: Any) -> None:
        from ...simulator import WeComSimulator, generate_organisation

        if options["cleanup"]:
            self.cleanup()
            return
        from ...conf import app_settings

        if not getattr(settings, "CELERY_TASK_ALWAYS_EAGER", False) and not app_settings.RUN_TASKS_IN_PROCESS:
            self.stdout.write(self.style.WARNING(
                _("Celery is not eager (CELERY_BROKER_URL is set): a worker must be running for events.")))
        self.step(_("Preparing the database"))
        call_command("migrate", interactive=False, verbosity=0)
        admin_user, admin_password = self.ensure_login()

        self.step(_("Generating a WeCom organisation of %(users)d members in %(departments)d departments")
                  % {"users": options["users"], "departments": options["departments"]})
        started = time.monotonic()
        org = generate_organisation(users=options["users"], departments=options["departments"],
                                    seed=options["seed"])
        self.stdout.write(_("  generated in %(s).2f s") % {"s": time.monotonic() - started})

        server, base_url = self.start_site(options["port"] if options["serve"] else 0)
        try:
            with WeComSimulator(org) as sim:
                source = self.ensure_source(sim)
                self.stdout.write(_("  simulator: %(url)s   callback URL: %(cb)s")
                                  % {"url": sim.base_url, "cb": base_url + source.get_callback_path()})

                self.step(_("Full sync"))
                call_command("wecom_sync", source.slug, stdout=self.stdout, stderr=self.stderr)
                self.report_counts(source)

                self.step(_("Live changes in WeCom, delivered as encrypted callbacks"))
                sim.set_callback(base_url + source.get_callback_path(), source.token, source.encoding_aes_key)
                self.live_changes(sim, source)
                self.send_demo_message(sim, source)

                self.step(_("Sign in with WeCom"))
                member = self.login_with_wecom(sim, source, base_url)

                self.step(_("Done"))
                self.stdout.write(_("Admin: log in as %(user)s / %(password)s") % {"user": admin_user,
                                                                                   "password": admin_password})
                if options["serve"]:
                    self.stdout.write(_("Open %(url)s/admin/ — Ctrl+C stops the demo.") % {"url": base_url})
                    self.stdout.write(_("Or click “Log in with WeCom” on the admin login page and pick %(member)s "
                                        "(a staff member) on the simulator's page.") % {"member": member})
                    self.wait_forever()
                else:
                    self.stdout.write(_("To explore in the admin with the simulator still running: %(command)s, "
                                        "then open http://127.0.0.1:8000/admin/") % {
                                            "command": self.own_command("--serve")})
        finally:
            server.shutdown()
            server.server_close()
            self.park_source()
        self.stdout.write(_("Remove the demo source and what it created with: %(command)s")
                          % {"command": self.own_command("--cleanup")})

    # -- steps ---------------------------------------------------------------------------------------
    def step(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n▶ {text}"))

    def own_command(self, *extra: str) -> str:
        """Return the command that runs this demo again, with this very Python (no venv to activate)."""
        script = sys.argv[0] if sys.argv and sys.argv[0].endswith("manage.py") else "manage.py"
        return shlex.join([sys.executable, script, "wecom_demo", *extra])

    def ensure_login(self) -> tuple[str, str]:
        """Return (username, password) of a superuser to explore the demo with.

        A fresh database gets admin / admin. A site that already has users keeps them untouched: the demo
        makes (or resets) its own login, DEMO_LOGIN, with a new random password, and says so.
        """
        User = get_user_model()  # noqa: N806 - Django idiom
        fresh_admin = User.objects.filter(username="admin").first()
        if fresh_admin is not None and fresh_admin.check_password("admin"):
            return "admin", "admin"
        if not User.objects.exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
            return "admin", "admin"
        password = secrets.token_urlsafe(12)
        demo = User.objects.filter(username=DEMO_LOGIN).first()
        if demo is None:
            demo = User.objects.create_superuser(DEMO_LOGIN, "", password)
        else:
            demo.is_active = demo.is_staff = demo.is_superuser = True
            demo.set_password(password)
            demo.save()
        self.stdout.write(self.style.WARNING(
            _("This site already has users: the demo uses its own login, %(user)s (its password is below; "
              "--cleanup removes it).") % {"user": DEMO_LOGIN}))
        return DEMO_LOGIN, password

    def park_source(self) -> None:
        """Disable the demo source once its simulator is gone, so nothing syncs against a dead port."""
        connection.close_if_unusable_or_obsolete()
        SyncSource.objects.filter(slug="demo").update(enabled=False)

    def cleanup(self) -> None:
        """Delete the demo source (runs, events and mirror rows go with it), the accounts its sync created
        and the demo login; accounts the demo only linked are kept."""
        User = get_user_model()  # noqa: N806 - Django idiom
        source = SyncSource.objects.filter(slug="demo").first()
        created = 0
        if source is not None:
            user_ids = list(ExternalUser.objects.filter(
                source=source, account_origin=ExternalUser.AccountOrigin.CREATED, user__isnull=False,
            ).values_list("user_id", flat=True))
            source.delete()
            for start in range(0, len(user_ids), 500):
                created += User.objects.filter(pk__in=user_ids[start:start + 500], is_superuser=False).delete()[1].get(
                    User._meta.label, 0)
        logins = User.objects.filter(username=DEMO_LOGIN).delete()[1].get(User._meta.label, 0)
        self.stdout.write(_("Removed the demo source: %(source)s; accounts its sync created: %(users)d; demo "
                            "login: %(logins)d.") % {"source": _("yes") if source else _("none found"),
                                                     "users": created, "logins": logins})

    def ensure_source(self, sim: Any) -> SyncSource:
        source = SyncSource.objects.filter(slug="demo").first() or SyncSource(slug="demo")
        source.name = _("Demo company (simulated)")
        source.corp_id = sim.corp_id
        source.agent_id = sim.agent_id
        source.secret = sim.app_secret
        source.contact_sync_secret = ""
        source.api_base_url = sim.base_url
        source.enabled = True
        if not source.token:
            source.token = generate_token()
            source.encoding_aes_key = generate_encoding_aes_key()
        source.save()
        return source

    def start_site(self, port: int) -> tuple[ThreadedWSGIServer, str]:
        """Serve this Django site on 127.0.0.1 in a thread, so WeCom's callbacks arrive over real HTTP."""
        try:
            server = ThreadedWSGIServer(("127.0.0.1", port), QuietHandler, allow_reuse_address=True)
        except OSError as exc:
            raise CommandError(_("Cannot listen on 127.0.0.1:%(port)d: %(error)s") % {"port": port, "error": exc}) \
                from exc
        app = get_internal_wsgi_application()
        if apps.is_installed("django.contrib.staticfiles"):
            app = StaticFilesHandler(app)  # the admin's CSS and JavaScript, whatever DEBUG says
        server.set_app(app)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    def report_counts(self, source: SyncSource) -> None:
        self.stdout.write(_("  local mirror: %(d)d departments, %(u)d members, %(a)d active Django users") % {
            "d": ExternalDepartment.objects.filter(source=source, is_removed=False).count(),
            "u": ExternalUser.objects.filter(source=source, is_removed=False).count(),
            "a": ExternalUser.objects.filter(source=source, is_removed=False, user__is_active=True).count(),
        })

    def live_changes(self, sim: Any, source: SyncSource) -> None:
        users = sorted(sim.org.users)
        some_dept = sorted(d for d in sim.org.departments if d != 1)[0]
        new_dept = max(sim.org.departments) + 1
        before = CallbackEvent.objects.filter(source=source).count()
        renamed_user_pk = ExternalUser.objects.get(source=source, userid_key=users[2].lower()).user_id
        # An active member leaves: a member already disabled would read as deactivated before any event.
        leaver = next(u for u in users[3:] if sim.org.users[u].get("status") == 1)
        changes = [
            (_("new department #%(id)d") % {"id": new_dept},
             lambda: sim.add_department({"id": new_dept, "name": "Demo Lab", "parentid": 1, "order": 1})),
            (_("new member demo.newcomer"),
             lambda: sim.add_user({"userid": "demo.newcomer", "name": "Demo Newcomer", "department": [new_dept],
                                   "main_department": new_dept, "status": 1, "email": "newcomer@example.com"})),
            (_("%(u)s renamed to “Renamed Member”") % {"u": users[0]},
             lambda: sim.update_user(users[0], name="Renamed Member")),
            (_("%(u)s moved to department #%(d)d") % {"u": users[1], "d": some_dept},
             lambda: sim.move_user(users[1], [some_dept], main_department=some_dept)),
            (_("userid %(old)s changed to %(new)s") % {"old": users[2], "new": users[2] + ".renamed"},
             lambda: sim.rename_userid(users[2], users[2] + ".renamed")),
            (_("%(u)s left the company") % {"u": leaver}, lambda: sim.delete_user(leaver)),
        ]
        for label, change in changes:
            change()
            self.stdout.write(f"  → {label}")
        # With eager Celery the events are applied before WeCom's request returns; give a worker a moment.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and CallbackEvent.objects.filter(
                source=source, status=CallbackEvent.Status.PENDING).exists():
            time.sleep(0.2)
        events = CallbackEvent.objects.filter(source=source).order_by("id")[before:]
        self.stdout.write(_("  %(n)d callbacks received:") % {"n": len(events)})
        for event in events:
            self.stdout.write(f"    {event.change_type:<16} {event.object_id:<24} {event.get_status_display()}")
        self.stdout.write(_("  what changed locally:"))
        checks = [
            (_("department “Demo Lab” exists"),
             ExternalDepartment.objects.filter(source=source, department_id=new_dept, is_removed=False).exists()),
            (_("demo.newcomer has a Django account"),
             ExternalUser.objects.filter(source=source, userid_key="demo.newcomer", user__isnull=False).exists()),
            (_("%(u)s is now “Renamed Member”") % {"u": users[0]},
             ExternalUser.objects.filter(source=source, userid_key=users[0].lower(), name="Renamed Member").exists()),
            (_("%(u)s is in department #%(d)d") % {"u": users[1], "d": some_dept},
             ExternalUser.objects.filter(source=source, userid_key=users[1].lower(),
                                         memberships__department__department_id=some_dept).exists()),
            (_("%(u)s kept the same Django account under its new userid") % {"u": users[2]},
             ExternalUser.objects.filter(source=source, userid_key=(users[2] + ".renamed").lower(),
                                         user_id=renamed_user_pk or 0).exists()
             and not ExternalUser.objects.filter(source=source, userid_key=users[2].lower()).exists()),
            (_("%(u)s was deactivated") % {"u": leaver},
             CallbackEvent.objects.filter(source=source, change_type="delete_user", object_id=leaver.lower(),
                                          status=CallbackEvent.Status.APPLIED).exists()
             and ExternalUser.objects.filter(source=source, userid_key=leaver.lower(), is_removed=True,
                                             user__is_active=False).exists()),
        ]
        for label, ok in checks:
            mark = self.style.SUCCESS("✔") if ok else self.style.ERROR("✘")
            self.stdout.write(f"    {mark} {label}")
        runs = SyncRun.objects.filter(source=source).count()
        self.stdout.write(_("  %(n)d runs logged for this source (admin → Sync runs).") % {"n": runs})
        if not all(ok for _label, ok in checks):
            raise CommandError(_("Some live changes were not applied; see the callback events in the admin."))

    def login_with_wecom(self, sim: Any, source: SyncSource, base_url: str) -> str:
        """Switch on Sign in with WeCom against the simulator and sign a member in to the admin over HTTP."""
        from urllib.parse import parse_qsl, urlsplit

        import requests

        from ...simulator.login import AUTHORIZE_PATH, CONFIRM_PATH, WEB_LOGIN_PATH

        # The simulator stands in for WeCom's pages: WECOM_SYNC is read on each access, so this takes effect now.
        settings.WECOM_SYNC = {**(getattr(settings, "WECOM_SYNC", None) or {}),
                               "OAUTH_AUTHORIZE_URL": sim.base_url + AUTHORIZE_PATH,
                               "WEB_LOGIN_URL": sim.base_url + WEB_LOGIN_PATH}
        source.login_enabled = True
        source.save(update_fields=["login_enabled"])
        ext = (ExternalUser.objects.filter(source=source, is_removed=False, status=1, user__is_active=True)
               .select_related("user").order_by("userid_key").first())
        if ext is None or ext.user is None:
            raise CommandError(_("No active member to sign in with."))
        ext.user.is_staff = True
        ext.user.save(update_fields=["is_staff"])
        with requests.Session() as browser:
            start = browser.get(f"{base_url}/wecom/login/{source.slug}/", params={"next": "/admin/"},
                                allow_redirects=False, timeout=30)
            wecom_page = start.headers.get("Location", "")
            shown = browser.get(wecom_page, timeout=30) if wecom_page.startswith(sim.base_url) else None
            form = dict(parse_qsl(urlsplit(wecom_page).query))
            form["userid"] = ext.userid  # the person picks themselves on the simulated QR page
            landed = browser.post(sim.base_url + CONFIRM_PATH, data=form, timeout=30)
        ok = (shown is not None and shown.status_code == 200 and landed.status_code == 200
              and urlsplit(landed.url).path == "/admin/" and 'id="user-tools"' in landed.text)
        mark = self.style.SUCCESS("✔") if ok else self.style.ERROR("✘")
        self.stdout.write(f"    {mark} " + _("%(member)s signed in with WeCom (web login) and reached the admin")
                          % {"member": ext.userid})
        if not ok:
            raise CommandError(_("Sign in with WeCom did not reach the admin; see docs/login.md."))
        return ext.userid

    def send_demo_message(self, sim: Any, source: SyncSource) -> None:
        """Send one app message to a synced member; the simulator's record says whether it arrived."""
        from ...messages import send_message

        self.step(_("An app message"))
        ext = (ExternalUser.objects.filter(source=source, is_removed=False, status=ExternalUser.Status.ACTIVE,
                                           user__isnull=False).select_related("user").order_by("userid_key").first())
        if ext is None or ext.user is None:
            raise CommandError(_("No synced member to send a message to."))
        sent = len(sim.messages)
        result = send_message(source, users=[ext.user], text=_("Hello from the wecom_sync demo."))
        ok = result.sent and any(ext.userid in m["recipients"] for m in sim.messages[sent:])
        mark = self.style.SUCCESS("✔") if ok else self.style.ERROR("✘")
        self.stdout.write(f"    {mark} " + _("message to %(user)s (%(userid)s) recorded by the simulator")
                          % {"user": ext.user.get_username(), "userid": ext.userid})
        if not ok:
            raise CommandError(_("The app message did not reach the simulator."))

    def wait_forever(self) -> None:
        import signal

        def stop(*_args: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)  # `kill` stops it as cleanly as Ctrl+C (the source is parked)
        connection.close()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            self.stdout.write(_("Stopped."))
