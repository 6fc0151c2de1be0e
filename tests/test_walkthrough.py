"""What a walk-through in Chromium found (issue 6, section 4), one test per finding:
filters that compose, retries in English, outcomes, 400s instead of 500s, the small
things. Against real PostgreSQL; the last tests drive Chromium against Daphne."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from invocations.mirror.status import CANCELLED_FAILURE, KILLED_FAILURE, Outcome
from invocations.models import Invocation
from invocations.reads.presenters.invocation import attempts_label, retries, retries_label
from tests.factories import T0, build_invocation, invocation_id


def iid(n: int) -> str:
    return invocation_id("w", n)


def inv(n: int, **fields: Any) -> Invocation:
    """Invocation number `n`, created n seconds after T0; completed ones ran 100 ms."""
    fields.setdefault("created_at", T0 + timedelta(seconds=n))
    fields.setdefault("retry_count", 0)
    fields.setdefault("id", iid(n))
    return build_invocation(ran_ms=100, **fields)


def ids(client: Client, **params: Any) -> list[str]:
    response = client.get("/invocations/", params)
    assert response.status_code == 200, response.content[:500]
    return [row.id for row in response.context["page"].rows]


class _Inputs(HTMLParser):
    """The (name, value) pairs a browser would submit for the inputs in some HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag != "input" or not a.get("name"):
            return
        if a.get("type") == "checkbox" and "checked" not in a:
            return
        self.pairs.append((a["name"] or "", a.get("value") or ""))


def inputs(html: str) -> list[tuple[str, str]]:
    parser = _Inputs()
    parser.feed(html)
    return parser.pairs


def filter_form(body: str) -> str:
    match = re.search(r'<form class="filters".*?</form>', body, re.S)
    assert match, "no filter form on the page"
    return match.group(0)


def filter_state(body: str) -> str:
    match = re.search(r'<span id="filter-state"[^>]*>.*?</span>', body, re.S)
    assert match, "no #filter-state in the response"
    return match.group(0)


# ------------------------------------------------- 1. filters, chips and sort compose


@pytest.fixture
def mixed(db: None) -> list[Invocation]:
    rows = [
        inv(1, status="running"),
        inv(2, status="running", service_name="Counter", target="Counter/add", handler_name="add"),
        inv(3),
        inv(4, status="running"),
    ]
    return Invocation.objects.bulk_create(rows)


def test_a_plain_submit_is_redirected_to_the_url_of_what_is_set(client: Client, mixed: list[Invocation]) -> None:
    # Without JavaScript the browser sends every field of the form, empty or not.
    page = client.get("/invocations/", {"status": "running", "sort": "created"}).content.decode()
    fields = dict(inputs(filter_form(page)))
    assert fields["q"] == "" and fields["status"] == "running" and fields["sort"] == "created"
    submitted = [(k, "Greeter" if k == "service" else v) for k, v in inputs(filter_form(page))]
    response = client.get("/invocations/?" + "&".join(f"{k}={v}" for k, v in submitted))
    assert response.status_code == 302
    assert parse_qs(urlsplit(response["Location"]).query) == {
        "status": ["running"],
        "sort": ["created"],
        "service": ["Greeter"],
    }
    landed = client.get(response["Location"])
    assert [r.id for r in landed.context["page"].rows] == [iid(1), iid(4)]


def test_only_empty_fields_redirect_to_the_bare_list(client: Client, db: None) -> None:
    response = client.get("/invocations/?q=&service=&roots=")
    assert response.status_code == 302 and response["Location"] == "/invocations/"
    assert client.get("/invocations/?service=Greeter").status_code == 200
    # htmx requests are cleaned in the browser; the server does not bounce them.
    assert client.get("/invocations/?q=", headers={"HX-Request": "true"}).status_code == 200


def test_chips_and_sort_links_update_the_form_they_live_beside(client: Client, mixed: list[Invocation]) -> None:
    page = client.get("/invocations/").content.decode()
    form = filter_form(page)
    # A chip clicked through htmx swaps only the results, plus the form's hidden state (out of band).
    chip = client.get("/invocations/", {"status": "running"}, headers={"HX-Request": "true"}).content.decode()
    assert 'id="filter-state" hx-swap-oob="true"' in chip
    form = form.replace(filter_state(form), filter_state(chip))
    sort = client.get(
        "/invocations/", {"status": "running", "sort": "created"}, headers={"HX-Request": "true"}
    ).content.decode()
    form = form.replace(filter_state(form), filter_state(sort))
    # What the form submits now keeps the chip's status and the link's sort.
    sent = {k: v for k, v in inputs(form) if v}
    assert sent == {"status": "running", "sort": "created"}
    # The full page (a reload, no htmx) carries the same state inside the form, not out of band.
    full = client.get("/invocations/", {"status": "running", "sort": "created"}).content.decode()
    assert "hx-swap-oob" not in filter_state(full) and {k: v for k, v in inputs(filter_form(full)) if v} == sent


def test_filters_chips_and_sort_compose_in_the_links(client: Client, mixed: list[Invocation]) -> None:
    response = client.get("/invocations/", {"service": "Greeter", "outcome": "succeeded", "sort": "created"})
    context = response.context
    running = next(c for c in context["chips"] if c["status"] == "running")
    assert parse_qs(running["query"]) == {
        "service": ["Greeter"],
        "outcome": ["succeeded"],
        "status": ["running"],
        "sort": ["created"],
    }
    for _key, _label, query in context["sorts"]:
        assert "service=Greeter" in query and "outcome=succeeded" in query


# ------------------------------------------------- 2. retries, in English


def test_retries_rule() -> None:
    # Restate's retry_count counts attempts; null once completed.
    assert [retries(n) for n in (None, 0, 1, 2, 5)] == [0, 0, 0, 1, 4]
    assert [retries_label(n) for n in (None, 1, 2, 3, 1001)] == ["", "", "1 retry", "2 retries", "1,000 retries"]
    assert attempts_label(1, "running") == "1"
    assert attempts_label(3, "backing-off") == "3 (2 retries)"
    assert attempts_label(0, "completed") == "not reported once completed"
    assert attempts_label(0, "scheduled") == "not started yet"


def test_list_rows_flag_only_real_retries(client: Client, db: None) -> None:
    Invocation.objects.bulk_create(
        [inv(1, status="running", retry_count=1), inv(2, status="backing-off", retry_count=2), inv(3, retry_count=3)]
    )
    body = client.get("/invocations/").content.decode()
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr id="row-(\S+)".*?</tr>', body, re.S)}
    assert "retr" not in rows[iid(1)]
    assert '<span class="retries"' in rows[iid(2)] and ">1 retry<" in rows[iid(2)]
    assert ">2 retries<" in rows[iid(3)]
    assert "1 retries" not in body


def test_detail_header_and_tree_use_the_same_rule(client: Client, db: None) -> None:
    root = inv(1, status="running", retry_count=1)
    child = inv(2, status="backing-off", retry_count=2, parent_id=root.id, root_id=root.id, invoked_by="service")
    Invocation.objects.bulk_create([root, child])
    body = client.get(f"/invocations/{root.id}/").content.decode()
    assert "<dt>Attempts</dt><dd>1" in body
    tree = body[body.index('id="inv-tree"') :]
    assert '<span class="retries">1 retry</span>' in tree and tree.count('class="retries"') == 1
    child_body = client.get(f"/invocations/{child.id}/").content.decode()
    assert "<dt>Attempts</dt><dd>2 (1 retry)" in child_body


# ------------------------------------------------- 3. the outcome of completed invocations


@pytest.fixture
def outcomes(db: None) -> list[Invocation]:
    rows = [
        inv(1),
        inv(2, completion_result="failure", completion_failure="[500] card declined"),
        # The texts Restate 1.7.12 writes for a cancel and a kill (the demo's saga, a killed Flaky.fail).
        inv(3, completion_result="failure", completion_failure=CANCELLED_FAILURE, service_name="Trip"),
        inv(4, completion_result="failure", completion_failure=KILLED_FAILURE),
        inv(5, status="running"),
        inv(6, service_name="Trip"),
    ]
    return Invocation.objects.bulk_create(rows)


def test_the_outcome_vocabulary_matches_restate() -> None:
    assert Outcome.values == ["succeeded", "failed", "cancelled", "killed"]
    assert CANCELLED_FAILURE == "[409] cancelled" and KILLED_FAILURE == "[409] killed"


def test_each_outcome_filters(client: Client, outcomes: list[Invocation]) -> None:
    assert ids(client, outcome="succeeded") == [iid(6), iid(1)]
    assert ids(client, outcome="failed") == [iid(2)]
    assert ids(client, outcome="cancelled") == [iid(3)]
    assert ids(client, outcome="killed") == [iid(4)]
    assert ids(client, outcome=["cancelled", "killed"]) == [iid(4), iid(3)]
    assert ids(client, outcome="succeeded", service="Trip") == [iid(6)]
    assert ids(client, outcome="succeeded", status="running") == []


def outcome_chips(client: Client, **params: Any) -> dict[str, tuple[str, str | None]]:
    """What the page's outcome chips show once their counts arrived: outcome -> (link, count)."""
    response = client.get("/invocations/", {**params, "partial": "outcomes"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    found = re.findall(
        r'<a class="chip outcome-(\w+)[^"]*" href="\?([^"]*)".*?>\w+(?: <b>([^<]*)</b>)?</a>', response.content.decode()
    )
    return {outcome: (query.replace("&amp;", "&"), count) for outcome, query, count in found}


def test_outcome_chips_count_under_the_other_filters(client: Client, outcomes: list[Invocation]) -> None:
    chips = outcome_chips(client, service="Trip", outcome="cancelled")
    assert {k: count for k, (_q, count) in chips.items()} == {
        "succeeded": "1",
        "failed": "0",
        "cancelled": "1",
        "killed": "0",
    }
    # A chip toggles its outcome and keeps the other filters.
    assert parse_qs(chips["cancelled"][0]) == {"service": ["Trip"]}
    assert parse_qs(chips["killed"][0]) == {"service": ["Trip"], "outcome": ["cancelled", "killed"]}
    # The page itself shows the chips at once and asks for their counts after it is shown.
    response = client.get("/invocations/", {"service": "Trip", "outcome": "cancelled"})
    body = response.content.decode()
    nav = re.search(r'<nav class="chips" id="outcome-chips".*?</nav>', body, re.S)
    assert nav and 'hx-trigger="load"' in nav.group(0) and "partial=outcomes" in nav.group(0)
    assert "<b>" not in nav.group(0) and 'class="chip outcome-cancelled active"' in nav.group(0)
    # The status chips count under the outcome filter.
    status = {c["status"]: c["count"] for c in response.context["chips"]}
    assert status["completed"] == 1 and status["running"] == 0


def test_outcome_counts_stop_at_the_cap(
    client: Client, outcomes: list[Invocation], monkeypatch: pytest.MonkeyPatch
) -> None:
    from invocations.reads.selectors import invocations as selectors

    monkeypatch.setattr(selectors, "STATUS_COUNT_CAP", 1)
    chips = outcome_chips(client)
    assert chips["succeeded"][1] == "1+" and chips["killed"][1] == "1"


def test_an_unknown_outcome_is_a_400(client: Client, db: None) -> None:
    response = client.get("/invocations/", {"outcome": "exploded"})
    assert response.status_code == 400 and "outcome" in response.content.decode()


# ------------------------------------------------- 4. 400s, not 500s


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"sort": "-duration", "after": "infs~inv_1abc"}, "out of range"),
        ({"sort": "-duration", "after": "-infs~inv_1abc"}, "out of range"),
        ({"sort": "-duration", "after": "1e300s~inv_1abc"}, "out of range"),
        ({"sort": "-duration", "after": "nans~inv_1abc"}, "out of range"),
        ({"sort": "-duration", "after": "1.5s~inv_1\x00abc"}, "control characters"),
        ({"after": "2026-11-22T12:00:00.000000Z~inv_1\x00abc"}, "control characters"),
        ({"after": "0001-01-01T00:00:00+05:00~inv_1abc"}, "out of range"),
        ({"created_after": "0001-01-01T00:00:00+05:00"}, "between the years 1970 and 9000"),
        ({"created_before": "9999-12-31T23:59:59-05:00"}, "between the years 1970 and 9000"),
        ({"modified_after": "1969-12-31T23:59:59Z"}, "between the years 1970 and 9000"),
        ({"service": "Gree\x00ter"}, "Null characters"),
    ],
)
def test_what_was_a_500_is_a_400_with_a_message(client: Client, db: None, params: dict, says: str) -> None:
    response = client.get("/invocations/", params)
    assert response.status_code == 400
    assert says in response.content.decode()


def test_an_id_with_a_slash_in_restates_data_is_linked_not_a_500(client: Client, db: None) -> None:
    odd = "inv_1odd/AAAAAAAAAAAAAAAAAAAAAAAAAA"
    Invocation.objects.bulk_create(
        [inv(1, parent_id=odd, root_id=None, invoked_by="service", restarted_from="inv/x?y"), inv(2, id=odd)]
    )
    # One path segment, percent-encoded (and that encoded again by reverse()).
    href = "/invocations/inv_1odd%252FAAAAAAAAAAAAAAAAAAAAAAAAAA/"
    detail = client.get(f"/invocations/{iid(1)}/")
    assert detail.status_code == 200
    body = detail.content.decode()
    assert f'href="{href}"' in body and 'href="/invocations/inv%252Fx%253Fy/"' in body
    listing = client.get("/invocations/")
    assert listing.status_code == 200 and f'href="{href}"' in listing.content.decode()
    # Following such a link names the id and says what is wrong with it.
    for url in (href, f"{href}children/"):
        response = client.get(url)
        assert response.status_code == 400
        assert "inv_1odd/AAAAAAAAAAAAAAAAAAAAAAAAAA" in response.content.decode()
        assert "not a Restate invocation id" in response.content.decode()
    # Ordinary ids are untouched.
    assert client.get(f"/invocations/{iid(1)}/children/").status_code == 200


def test_an_unknown_websocket_path_closes_cleanly() -> None:
    from dashboard.asgi import application

    async def connect(path: str) -> tuple[bool, Any]:
        communicator = WebsocketCommunicator(
            application, path, headers=[(b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000")]
        )
        try:
            return await communicator.connect()
        finally:
            await communicator.disconnect()

    assert asyncio.run(connect("/ws/nothing-here/")) == (False, 4404)
    assert asyncio.run(connect("/not-even-ws/")) == (False, 4404)


# ------------------------------------------------- 6. smaller things


def test_tree_children_page_loads_dashboard_js_once(client: Client, db: None) -> None:
    Invocation.objects.bulk_create([inv(1)])
    body = client.get(f"/invocations/{iid(1)}/children/").content.decode()
    assert body.count("dashboard.js") == 1


def test_favicon(client: Client) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("/favicon.svg")
    icon = client.get(response["Location"])
    assert icon.status_code == 200 and icon["Content-Type"].startswith("image/svg+xml")
    assert '<link rel="icon" href="/static/favicon.svg"' in client.get("/invocations/").content.decode()


def test_the_login_page_shows_no_navigation(db: None) -> None:
    body = Client().get("/login/").content.decode()
    assert "Service map" not in body and 'id="live"' not in body and "Log out" not in body
    assert 'id="sync-state"' not in body


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(fg: str, bg: str) -> float:
    high, low = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_text_colours_meet_wcag_aa(repo_root: Path) -> None:
    css = (repo_root / "static" / "dashboard.css").read_text()
    colours: dict[str, str] = {}
    for block in re.findall(r":root\s*\{([^}]*)\}", css):  # later blocks override earlier ones
        colours.update(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})", block))
    # Each text colour on every background it is drawn on as text.
    pairs = [
        ("warn", "#ffffff"),
        ("warn", "#f7f8fa"),  # the page
        ("warn", "#fdf0dc"),  # backing-off / paused badge
        ("ok", "#ffffff"),
        ("ok", "#e3f4ea"),  # completed badge, "live" pill
        ("muted", "#ffffff"),
        ("muted", "#f7f8fa"),
        ("muted", "#e2e5eb"),  # "not live" pill
        ("bad", "#ffffff"),
        ("bad", "#fde8e8"),
        ("run", "#e4eefa"),
    ]
    low = {f"--{name} on {bg}": round(contrast(colours[name], bg), 2) for name, bg in pairs}
    assert all(ratio >= 4.5 for ratio in low.values()), low


def test_tree_anchors_do_not_depend_on_hover(repo_root: Path) -> None:
    css = (repo_root / "static" / "dashboard.css").read_text()
    rules = [r for r in re.findall(r"([^{}]*\.anchor[^{}]*)\{([^}]*)\}", css) if "visibility" in r[1]]
    selectors, declarations = rules[-1]  # the one that wins
    assert ".wf-label .anchor" in selectors and ":hover" not in selectors.split(",")[0]
    assert "visibility: visible" in declarations


# ------------------------------------------------- in Chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "walkthrough-password"


@pytest.fixture
def browser_page(transactional_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Daphne on the test database (one process: in-memory channel layer), Chromium logged in
    through the login form. CSP refusals and script errors are collected. Request
    data fixtures before this one: ORM calls made while Playwright's loop runs get a
    connection of their own that outlives the test database."""
    from playwright.sync_api import sync_playwright

    from demo.stack import free_port, start_web

    User.objects.create_user("walker", password=PASSWORD)
    db = connection.settings_dict
    port = free_port()
    server = start_web(
        port, tmp_path / "daphne.log", {"DATABASE_URL": f"postgresql://{db['USER']}:@/{db['NAME']}?host={db['HOST']}"}
    )
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15_000)
            # CSP refusals and uncaught script errors; not a socket cut short by leaving a page.
            errors: list[str] = []

            def on_console(message: Any) -> None:
                if message.type == "error" and "Content Security Policy" in message.text:
                    errors.append(message.text)

            page.on("console", on_console)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.console_errors = errors  # type: ignore[attr-defined]
            base = f"http://127.0.0.1:{port}"
            page.goto(f"{base}/invocations/")
            page.fill("#id_username", "walker")
            page.fill("#id_password", PASSWORD)
            page.click("section.login button[type=submit]")
            page.wait_for_url(f"{base}/invocations/")
            page.base = base  # type: ignore[attr-defined]
            yield page
            browser.close()
    finally:
        server.stop()


@pytest.mark.browser
def test_in_chromium_chips_sort_and_form_compose_into_a_clean_url(mixed: list[Invocation], browser_page: Any) -> None:
    page = browser_page
    page.goto(f"{page.base}/invocations/")
    page.wait_for_selector("#live[data-state=live]")  # the socket connects under the CSP
    page.click("nav.chips a.chip.status-running")
    page.wait_for_url("**status=running**")
    page.click("nav.sorts a:text('Oldest')")
    page.wait_for_url("**sort=created**")
    page.fill("input[name=service]", "Greeter")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**service=Greeter**")
    assert parse_qs(urlsplit(page.url).query, keep_blank_values=True) == {
        "status": ["running"],
        "sort": ["created"],
        "service": ["Greeter"],
    }
    page.wait_for_selector(f"#row-{iid(4)}")
    shown = page.eval_on_selector_all("#invocation-rows tr", "rows => rows.map(r => r.id)")
    assert shown == [f"row-{iid(1)}", f"row-{iid(4)}"]
    # The outcome chips' counts arrive after the rows, under the same filters.
    assert page.inner_text("#outcome-chips .outcome-succeeded b") == "0"
    page.click("#outcome-chips .outcome-succeeded")
    page.wait_for_url("**outcome=succeeded**")
    page.wait_for_selector("#outcome-chips .outcome-succeeded.active")
    assert parse_qs(urlsplit(page.url).query)["service"] == ["Greeter"]
    assert page.console_errors == []


@pytest.fixture
def small_tree(db: None) -> list[Invocation]:
    root = inv(1, status="running", retry_count=1)
    child = inv(2, status="backing-off", retry_count=2, parent_id=root.id, root_id=root.id, invoked_by="service")
    return Invocation.objects.bulk_create([root, child])


@pytest.mark.browser
def test_in_chromium_pages_run_under_the_csp(small_tree: list[Invocation], browser_page: Any) -> None:
    page = browser_page
    root, child = small_tree
    for path in ("/invocations/", f"/invocations/{root.id}/", "/services/", f"/invocations/{root.id}/children/"):
        page.goto(page.base + path)
        page.wait_for_load_state("load")
    page.goto(f"{page.base}/invocations/{root.id}/")
    page.wait_for_selector("#live[data-state=live]")
    # The tree's "#" links are there without hovering.
    anchor = page.locator(f"#node-{child.id} .anchor")
    assert anchor.evaluate("a => getComputedStyle(a).visibility") == "visible"
    assert page.console_errors == [], page.console_errors
    # Logging out is a POST from the header, and lands on the login page.
    page.click("form.logout button")
    page.wait_for_url("**/login/**")
    assert page.locator("header nav").count() == 0
    # Throttled logins say so on the login page (Daphne runs django-axes' async path).
    for _ in range(5):
        page.fill("#id_username", "walker")
        page.fill("#id_password", "not-the-password")
        with page.expect_navigation():
            page.click("section.login button[type=submit]")
    assert "Too many failed logins" in page.inner_text("section.login")
