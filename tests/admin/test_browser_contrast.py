"""The Test connection headline is readable: every text in it has a contrast of at least 4.5:1 (WCAG AA)
against the background it is drawn on, in the light and the dark admin theme, for passed and failed checks."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tests.factories import make_source
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The contrast ratio of each text node's color against the first opaque background behind it.
CONTRASTS_JS = """
(selector) => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = [];
  for (const el of document.querySelectorAll(selector)) {
    const fg = lum(rgb(getComputedStyle(el).color)), bg = lum(background(el));
    const [hi, lo] = fg > bg ? [fg, bg] : [bg, fg];
    out.push([el.tagName + "." + el.className, (hi + 0.05) / (lo + 0.05)]);
  }
  return out;
}
"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_test_connection_headline_has_readable_contrast(page, live_server, scheme):
    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pass-123")
    with WeComSimulator(generate_organisation(users=5, departments=2, seed=1)) as sim:
        good = make_source(name="Good", corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                           api_base_url=sim.base_url, agent_id=sim.agent_id)
        make_source(name="Bad", corp_id=sim.corp_id, secret="wrong-secret", contact_sync_secret="",
                    api_base_url=sim.base_url, agent_id=sim.agent_id)
        page.emulate_media(color_scheme=scheme)
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin-pass-123")
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")
        page.goto(f"{live_server.url}/admin/wecom_sync/syncsource/")
        page.check("#action-toggle")
        page.select_option("select[name=action]", "test_connection_action")
        page.click("button[name=index]")
        page.wait_for_selector(".wecom-probe")
        assert page.locator(".wecom-probe h2 .wecom-ok").count() == 1
        assert page.locator(".wecom-probe h2 .wecom-bad").count() == 1
        assert good.name in page.inner_text(f".wecom-probe[data-source='{good.slug}'] h2")
        ratios = page.evaluate(CONTRASTS_JS, ".wecom-probe h2, .wecom-probe h2 span")
    assert len(ratios) == 4
    low = [(name, round(ratio, 2)) for name, ratio in ratios if ratio < 4.5]
    assert not low, low
