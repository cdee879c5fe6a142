"""The operator console in a real headless Chromium against a real worker on the
embedded broker (issue 14): overview, an order's timeline, stock, the DLQ filtered to
``max_attempts``, a hostile letter shown as text, read-only without ``WEB_TOKEN``, and
a redrive with the token that brings an order to ``NOTIFIED``. Each test saves the
screenshots of the pages it visits (tests/browser/chrome.py says where)."""

from __future__ import annotations

import asyncio
import re

import pytest

from streams.events import NotificationSent, OrderCreated, OrderPaid
from streams.http.sessions import SESSION_COOKIE, sessions_of
from tests.browser.chrome import browser, screenshot, wait
from tests.browser.support import GatewayThread, post
from harness.events import created, paid
from harness.kafka import produce, read_topic

pytestmark = pytest.mark.kafka

CREATED, PAID, SENT = OrderCreated.topic(), OrderPaid.topic(), NotificationSent.topic()
DLQ = "notifications.dlq"
SCRIPT = b"<script>alert(1)</script>"
TOKEN = "console-test-token-of-32-characters-or-more"


def by(css: str) -> tuple[str, str]:
    return ("css selector", css)


def stale_safe(fn):
    """A wait condition that treats an element replaced under it (live refresh) as 'not yet'."""
    from selenium.common.exceptions import StaleElementReferenceException

    def check(driver):
        try:
            return fn(driver)
        except StaleElementReferenceException:
            return False

    return check


def dead_letters(bootstrap: str, *, max_attempts: set[str], decode_errors: int = 0) -> None:
    """Until notifications.dlq holds a max_attempts letter for each key and the decode errors."""
    def done(records) -> bool:
        reasons = [(r.key.decode(), r.headers.get("x-dlq-reason")) for r in records]
        return (max_attempts <= {k for k, why in reasons if why == b"max_attempts"}
                and sum(why == b"decode_error" for _, why in reasons) >= decode_errors)

    records = asyncio.run(read_topic(bootstrap, DLQ, until=done, timeout=60))
    assert done(records), [(r.key, r.headers.get("x-dlq-reason")) for r in records]


def test_read_only_console_overview_order_stock_dlq_and_a_hostile_letter(broker, worker_factory):
    with GatewayThread() as gateway:
        worker = worker_factory(notifier_url=gateway.url, retry_delays="0.2").start().wait_ready()
        base = worker.url
        orders = ["o-101", "o-102", "o-103"]

        async def events() -> None:
            await produce(broker.bootstrap, "inventory.requests",
                          [(b"s-1", b'{"kind": "set", "sku": "s-1", "qty": 100}')])
            await produce(broker.bootstrap, CREATED, [created(o) for o in orders])
            await produce(broker.bootstrap, PAID, [paid(o) for o in orders] + [(b"x-1", SCRIPT)])

        asyncio.run(events())
        dead_letters(broker.bootstrap, max_attempts=set(orders), decode_errors=1)

        driver = browser()
        try:
            # Overview: every service, read-only badge, refreshed live
            driver.get(f"{base}/console")
            wait(driver, lambda d: d.find_elements(*by('section[data-service="notifications"]')))
            assert "read-only" in driver.find_element(*by("header")).text
            first = driver.find_element(*by("time.refreshed")).get_attribute("data-ms")
            wait(driver, stale_safe(lambda d: d.find_element(*by("time.refreshed")).get_attribute("data-ms") != first),
                 message="the overview did not refresh itself")
            wait(driver, stale_safe(lambda d: "max_attempts" in d.find_element(
                *by('section[data-service="notifications"]')).text))
            names = [s.get_attribute("data-service") for s in driver.find_elements(*by("section.service"))]
            assert names == ["notifications", "order-state", "inventory"]
            section = driver.find_element(*by('section[data-service="notifications"]')).text
            assert "notifications.retry.1" in section and "events.order.paid.v1" in section
            screenshot(driver, "overview")

            # An order, looked up from the header: its timeline
            box = driver.find_element(*by('form.lookup input[name="id"]'))
            box.send_keys("o-101")
            box.submit()
            wait(driver, lambda d: d.current_url.endswith("/console/orders/o-101"))
            wait(driver, lambda d: len(d.find_elements(*by("ol.timeline li.event"))) >= 2)
            timeline = driver.find_element(*by("ol.timeline")).text
            assert "OrderCreated" in timeline and "OrderPaid" in timeline and CREATED in timeline
            assert re.search(r"offset \d+", timeline)
            assert driver.find_element(*by(".order-status")).text in ("PAID", "CREATED")
            screenshot(driver, "order")

            # Stock of a SKU
            driver.get(f"{base}/console/inventory/s-1")
            wait(driver, lambda d: d.find_element(*by(".stock-reserved")).text == "6" or d.refresh())
            assert driver.find_element(*by(".stock-available")).text == "94"
            screenshot(driver, "inventory")

            # Dead letters, filtered to max_attempts with the form
            driver.get(f"{base}/console/dlq")
            wait(driver, lambda d: d.find_elements(*by("table.letters")))
            from selenium.webdriver.support.ui import Select

            Select(driver.find_element(*by('#dlq-filter select[name="reason"]'))).select_by_value("max_attempts")
            driver.find_element(*by('#dlq-filter button[type="submit"]')).click()
            wait(driver, lambda d: "reason=max_attempts" in d.current_url)
            reasons = [r.text for r in driver.find_elements(*by("table.letters span.reason"))]
            assert reasons == ["max_attempts"] * 3
            keys = {r.text for r in driver.find_elements(*by("table.letters td:nth-child(6)"))}
            assert keys == set(orders)
            # read-only: nothing to select, no redrive button, no form posting to redrive
            assert not driver.find_elements(*by('input[type="checkbox"][name="id"]'))
            assert "redrive" not in driver.find_element(*by("main")).text.lower()
            assert "/console/dlq/redrive" not in driver.page_source
            screenshot(driver, "dlq")

            # The <script> value: shown as text, never run
            driver.get(f"{base}/console/dlq?service=notifications&key=x-1")
            wait(driver, lambda d: d.find_elements(*by("a.letter-link")))
            driver.find_element(*by("a.letter-link")).click()
            wait(driver, lambda d: d.find_elements(*by("pre.value")))
            from selenium.common.exceptions import NoAlertPresentException

            with pytest.raises(NoAlertPresentException):
                driver.switch_to.alert.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in driver.page_source
            assert driver.find_element(*by("pre.value.text")).text == SCRIPT.decode()
            assert not driver.find_elements(*by("main script"))
            assert "decode_error" in driver.find_element(*by("dd.reason")).text
            screenshot(driver, "dlq-letter")
        finally:
            driver.quit()

        # Without WEB_TOKEN a redrive POST is refused, whatever it carries
        status, body = post(f"{base}/console/dlq/redrive",
                            {"mode": "selection", "id": f"{DLQ}:0:0", "dry_run": "0", "csrf": "x"},
                            headers={"Origin": base, "Cookie": f"{SESSION_COOKIE}=x"})
        assert status == 403 and "read-only" in body


def test_redrive_one_letter_with_the_token_and_the_order_reaches_notified(broker, worker_factory):
    with GatewayThread() as gateway:
        worker = worker_factory(notifier_url=gateway.url, retry_delays="0.2", web_token=TOKEN).start().wait_ready()
        base = worker.url

        async def events() -> None:
            await produce(broker.bootstrap, CREATED, [created("o-201"), created("o-202")])
            await produce(broker.bootstrap, PAID, [paid("o-201"), paid("o-202")])

        asyncio.run(events())
        dead_letters(broker.bootstrap, max_attempts={"o-201", "o-202"})

        # Without the token: no console, no redrive
        status, _ = post(f"{base}/console/dlq/redrive", {"mode": "filter", "dry_run": "0"}, headers={"Origin": base})
        assert status == 401
        status, body = post(f"{base}/console/dlq/redrive", {"mode": "filter", "dry_run": "0"},
                            headers={"Origin": base, "Cookie": f"{SESSION_COOKIE}={sessions_of(TOKEN).issue()}"})
        assert status == 403 and "CSRF" in body  # the cookie alone is not enough
        status, body = post(f"{base}/console/dlq/redrive", {"mode": "filter", "dry_run": "0"},
                            headers={"Origin": "http://evil.example", "Cookie": f"{SESSION_COOKIE}={sessions_of(TOKEN).issue()}"})
        assert status == 403 and "cross-site" in body

        driver = browser()
        try:
            driver.get(f"{base}/console/dlq?reason=max_attempts")
            wait(driver, lambda d: "/console/login" in d.current_url)
            assert not driver.find_elements(*by('input[type="checkbox"][name="id"]'))
            assert "redrive" not in driver.page_source.lower()
            screenshot(driver, "login")

            driver.find_element(*by("#token")).send_keys("wrong")
            driver.find_element(*by("#sign-in")).click()
            wait(driver, lambda d: "Wrong token" in d.find_element(*by("main")).text)
            driver.find_element(*by("#token")).send_keys(TOKEN)
            driver.find_element(*by("#sign-in")).click()
            wait(driver, lambda d: d.current_url.endswith("/console/dlq?reason=max_attempts"))
            cookie = driver.get_cookie(SESSION_COOKIE)
            assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"

            gateway.down = False
            row = wait(driver, lambda d: next((r for r in d.find_elements(*by("table.letters tbody tr"))
                                               if "o-201" in r.text), None))
            letter_id = row.find_element(*by('input[type="checkbox"][name="id"]')).get_attribute("value")
            button = driver.find_element(*by("button.redrive-selected"))
            assert not button.is_enabled()
            row.find_element(*by('input[type="checkbox"][name="id"]')).click()
            wait(driver, lambda d: button.is_enabled() and "1 selected" in button.text)
            screenshot(driver, "dlq-select")
            button.click()

            # The dry run: a preview, then the confirmation
            wait(driver, lambda d: "/console/dlq/redrive/" in d.current_url)
            confirm = wait(driver, stale_safe(lambda d: d.find_elements(*by("button.confirm-redrive"))))[0]
            assert driver.find_element(*by(".count-main")).text == "1"
            assert letter_id in driver.find_element(*by("table.outcomes")).text
            assert "would redrive" in driver.find_element(*by("table.outcomes")).text
            screenshot(driver, "redrive-preview")
            confirm.click()
            wait(driver, stale_safe(lambda d: d.find_element(*by(".job")).get_attribute("data-state") == "done"))
            assert driver.find_element(*by(".job p")).text.startswith("Redrive of 1 selected dead letter")
            assert driver.find_element(*by(".count-main")).text == "1"
            screenshot(driver, "redrive")

            # The order reaches NOTIFIED once the redriven OrderPaid is processed
            driver.get(f"{base}/console/orders/o-201")
            wait(driver, lambda d: d.find_element(*by(".order-status")).text == "NOTIFIED" or d.refresh(), timeout=60)
            assert "NotificationSent" in driver.find_element(*by("ol.timeline")).text

            # The ledger's mark, and the other order's letter is still there to redrive
            driver.get(f"{base}/console/dlq/letters/{letter_id}")
            wait(driver, lambda d: "already redriven" in d.find_element(*by("main")).text)
            assert not driver.find_elements(*by("button.preview-redrive"))
            driver.get(f"{base}/console/dlq?reason=max_attempts")
            rows = driver.find_elements(*by("table.letters tbody tr"))
            marked = [r for r in rows if "already redriven" in r.text]
            assert len(marked) == 1 and "o-201" in marked[0].text
            assert any("o-202" in r.text and r.find_elements(*by('input[type="checkbox"][name="id"]')) for r in rows)
        finally:
            driver.quit()

    sent = asyncio.run(read_topic(broker.bootstrap, SENT, until=lambda rs: any(r.key == b"o-201" for r in rs)))
    assert [r.key for r in sent] == [b"o-201"]
