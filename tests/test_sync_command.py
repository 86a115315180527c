"""Tests of ``manage.py wecom_sync`` against the simulator."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from tests.factories import make_source
from wecom_sync.models import ExternalUser, SyncRun
from wecom_sync.simulator import WeComSimulator, generate_organisation


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=12, departments=4, seed=5)) as simulator:
        yield simulator


def sim_source(sim, **overrides):
    values = {"api_base_url": sim.base_url, "corp_id": sim.corp_id, "secret": sim.app_secret,
              "contact_sync_secret": sim.contact_sync_secret}
    values.update(overrides)
    return make_source(**values)


def run_command(*args, **options):
    out, err = io.StringIO(), io.StringIO()
    call_command("wecom_sync", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_command_syncs_a_source_with_progress_and_summary(sim):
    source = sim_source(sim)
    out, err = run_command(source.slug, verbosity=2)
    run = SyncRun.objects.get(source=source)
    assert run.trigger == SyncRun.Trigger.COMMAND and run.status == SyncRun.Status.SUCCEEDED
    assert f"run #{run.pk}" in out and "succeeded" in out
    assert "users created" in out and "12" in out
    assert "[" in err and "]" in err and "fetch" in err and "apply" in err  # the progress bar, on stderr
    assert ExternalUser.objects.filter(source=source).count() == 12


@pytest.mark.django_db
def test_command_dry_run_and_all_enabled_sources(sim):
    a = sim_source(sim)
    b = sim_source(sim)
    sim_source(sim, enabled=False)
    out, err = run_command("--dry-run", "--no-progress")
    assert err == ""
    runs = SyncRun.objects.all()
    assert {r.source_id for r in runs} == {a.pk, b.pk}
    assert all(r.kind == SyncRun.Kind.DRY_RUN for r in runs)
    assert not ExternalUser.objects.exists()
    assert out.count("Dry run") == 2


@pytest.mark.django_db
def test_command_force_and_errors(sim):
    source = sim_source(sim, removal_threshold_count=0, removal_threshold_percent=0)
    run_command(source.slug, "--no-progress")
    sim.delete_user(sorted(sim.org.users)[0], deliver=False)
    out, _err = run_command(source.slug, "--no-progress")
    assert "held" in out.lower() and "removals pending approval" in out
    out, _err = run_command(source.slug, "--force", "--no-progress")
    assert SyncRun.objects.filter(source=source).latest("pk").force
    assert "users deactivated" in out
    with pytest.raises(CommandError, match="Unknown source"):
        run_command("no-such-slug")
    broken = sim_source(sim, secret="wrong", contact_sync_secret="")
    with pytest.raises(CommandError, match="failed"):
        run_command(broken.slug, "--no-progress")
