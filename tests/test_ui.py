"""The web dashboard in a real browser: Playwright drives Debian's chromium against real agents."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from .harness import REPO, process_spec, wait_for

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium "
                                       "(apt-get install chromium)")

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
expect = sync_api.expect

OUT = REPO / "test-output"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
LIVE = 1000    # ms: a change made elsewhere must show within a second
WAIT = 10000   # ms: anything that involves starting or stopping processes
XSS = "<img src=x onerror=alert(1)>"
expect.set_options(timeout=WAIT)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A browser page on one agent that records uncaught errors, dialogs and foreign requests."""

    def __init__(self, browser, width: int = 1280, height: int = 800):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.context.set_default_timeout(WAIT)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.foreign: list[str] = []
        self.origin = None
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("dialog", self._dialog)
        self.page.on("request", self._request)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _request(self, request) -> None:
        url = urlparse(request.url)
        if url.scheme == "data":
            return
        if self.origin and url.netloc != self.origin:
            self.foreign.append(request.url)

    def open(self, agent, live: bool = True):
        self.origin = urlparse(agent.url).netloc
        self.page.goto(agent.url + "/")
        if live:
            expect(self.page.locator("#conn")).to_have_attribute("data-state", "live")
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser):
    pages: list[Page] = []

    def make(width: int = 1280, height: int = 800) -> Page:
        page = Page(browser, width, height)
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.close()
    for page in pages:
        assert not page.errors, f"uncaught errors in the page: {page.errors}"
        assert not page.dialogs, f"the page opened dialogs: {page.dialogs}"
        assert not page.foreign, f"the page fetched from elsewhere: {page.foreign}"


def row(page, workload_id: str):
    return page.locator(f'tr[data-testid="wl-row"][data-id="{workload_id}"]')


def row_named(page, name: str):
    return page.locator('tr[data-testid="wl-row"]').filter(
        has=page.locator("td.c-name", has_text=re.compile("^" + re.escape(name) + "$")))


def cpu_allocated(page):
    return page.locator('#node-resources [data-kind="cpu"] .bar[data-what="allocated"]')


def fill_process_form(page, name: str, command: str, args: list[str], cpu: float = 1.0):
    page.get_by_label("Type").select_option("process")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Command").fill(command)
    page.get_by_label("Arguments").fill("\n".join(args))
    page.get_by_label("CPU (cores)").fill(str(cpu))
    page.get_by_label("Memory (MiB)").fill("64")


def two_nodes(make_agent):
    root = make_agent("jiangsu")
    child = make_agent("nanjing", config={
        "parent": {"enabled": True, "address": f"127.0.0.1:{root.port}"},
        "resources": {"cpu": 4.0, "memory": 8589934592}})
    return root, child


def test_dashboard_shows_node_and_resources(make_agent, open_page):
    root, child = two_nodes(make_agent)
    page = open_page().open(child)
    expect(page.get_by_test_id("node-id")).to_have_text("nanjing")
    expect(page.get_by_test_id("node-status")).to_have_text("alive")
    expect(page.locator("#node-address")).to_have_text(child.url)
    expect(page.locator("#node-uptime")).to_have_text(re.compile(r"^\d+[smhd]"))
    for kind, text in (("cpu", "0 / 4 cores"), ("memory", "0 B / 8 GiB"), ("gpu", "none")):
        expect(page.locator(f'#node-resources [data-kind="{kind}"] .res-figures')).to_have_text(text)
    expect(cpu_allocated(page)).to_have_attribute("aria-valuemax", "4")
    expect(page.locator('#node-resources [data-kind="storage"] .bar')).to_have_count(2)
    # The tree starts at this node; neighbours appear once the bus reports them, and until then
    # the page says the node runs on its own rather than showing nothing.
    expect(page.locator('#tree li[data-node="nanjing"]').first).to_be_visible()
    neighbours = page.locator("#neighbours")
    expect(neighbours.locator(".ncard").or_(neighbours.locator(".empty"))).not_to_have_count(0)
    expect(neighbours.locator('.ncard[data-node="nanjing"]')).to_have_count(0)  # self left out

    root_page = open_page().open(root)
    expect(root_page.get_by_test_id("node-id")).to_have_text("jiangsu")
    expect(root_page.locator('#node-resources [data-kind="cpu"] .res-figures')).to_have_text("0 / 8 cores")
    # The bus links them: each side shows the other.
    expect(page.locator('#neighbours [data-group="parent"] .ncard[data-node="jiangsu"]')).to_be_visible()
    expect(root_page.locator('#neighbours [data-group="child"] .ncard[data-node="nanjing"]')) \
        .to_be_visible()
    expect(root_page.locator('#tree li[data-node="nanjing"]')).to_be_visible()


def test_form_submit_runs_process_and_moves_cpu_bar(agent, open_page):
    page = open_page().open(agent)
    expect(cpu_allocated(page)).to_have_attribute("aria-valuenow", "0")
    page.evaluate("window.__notReloaded = true")
    fill_process_form(page, "form-sleeper", "sleep", ["60"], cpu=2.5)
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#form-message")).to_have_text(re.compile(r"Submitted form-sleeper"))
    line = row_named(page, "form-sleeper")
    expect(line).to_have_attribute("data-status", "running")
    expect(line.locator("td.c-status")).to_contain_text("running")
    expect(line.locator('td[data-label="Type"]')).to_have_text("process")
    expect(line.locator('td[data-label="Node"]')).to_have_text("jiangsu")
    expect(line.locator('td[data-label="PID"]')).to_have_text(re.compile(r"^\d+$"))
    expect(cpu_allocated(page)).to_have_attribute("aria-valuenow", "2.5")
    expect(page.locator('#node-resources [data-kind="cpu"] .res-figures')).to_have_text("2.5 / 8 cores")
    expect(page.locator("#node-workloads")).to_have_text("1 live / 1")
    assert page.evaluate("window.__notReloaded") is True
    listed = agent.api("GET", "/api/workloads").json()["workloads"]
    assert [(w["name"], w["status"], w["requirements"]["cpu"]) for w in listed] == \
        [("form-sleeper", "running", 2.5)]
    assert listed[0]["config"] == {"command": "sleep", "args": ["60"]}


def test_server_errors_are_shown_as_they_come(agent, open_page):
    page = open_page().open(agent)
    fill_process_form(page, "bad-command", f"no-such-command-{XSS}", [])
    page.get_by_role("button", name="Submit").click()
    message = page.locator("#form-message")
    expect(message).to_have_text(re.compile(r"400 command_not_found: config\.command: .*command not found"))
    expect(message).to_contain_text(XSS)  # the server echoes it; the page shows it as text
    expect(page.locator("img")).to_have_count(0)
    page.get_by_label("CPU (cores)").fill("1000")
    page.get_by_label("Command").fill("sleep")
    page.get_by_role("button", name="Submit").click()
    expect(message).to_have_text(re.compile(r"^[45]\d\d \w+: .*cpu .*1000", re.I))
    expect(message).to_have_class(re.compile("error"))
    assert agent.api("GET", "/api/workloads").json()["count"] == 0


def test_workload_from_curl_appears_live_on_child(make_agent, open_page):
    _root, child = two_nodes(make_agent)
    page = open_page().open(child)
    page.evaluate("window.__notReloaded = true")
    wl = child.submit(process_spec("curl-sleeper", args=["60"], cpu=1.5))
    line = row(page, wl["id"])
    expect(line).to_have_attribute("data-status", "running", timeout=LIVE)
    expect(line.locator("td.c-name")).to_have_text("curl-sleeper")
    expect(cpu_allocated(page)).to_have_attribute("aria-valuenow", "1.5", timeout=LIVE)
    child.api("POST", f"/api/workloads/{wl['id']}/stop").raise_for_status()
    expect(line).to_have_attribute("data-status", "stopped", timeout=LIVE)
    expect(cpu_allocated(page)).to_have_attribute("aria-valuenow", "0", timeout=LIVE)
    child.api("DELETE", f"/api/workloads/{wl['id']}").raise_for_status()
    expect(line).to_have_count(0, timeout=LIVE)
    assert page.evaluate("window.__notReloaded") is True


def test_child_allocation_appears_live_on_parent(make_agent, open_page):
    """A change made at a child shows on the parent's dashboard within a second, no reload."""
    root, child = two_nodes(make_agent)
    page = open_page().open(root)
    card_cpu = page.locator('#neighbours .ncard[data-node="nanjing"] [data-kind="cpu"] .bar').first
    expect(card_cpu).to_have_attribute("aria-valuenow", "0")
    page.evaluate("window.__notReloaded = true")
    wl = child.submit(process_spec("at-the-child", args=["60"], cpu=2.5))
    expect(card_cpu).to_have_attribute("aria-valuenow", "2.5", timeout=LIVE)
    child.api("POST", f"/api/workloads/{wl['id']}/stop").raise_for_status()
    expect(card_cpu).to_have_attribute("aria-valuenow", "0", timeout=LIVE)
    assert page.evaluate("window.__notReloaded") is True


def test_subtree_scope_lists_the_childs_workloads_live(make_agent, open_page):
    root, child = two_nodes(make_agent)
    page = open_page().open(root)
    expect(page.locator('#neighbours .ncard[data-node="nanjing"]')).to_be_visible()
    page.locator("#wl-scope").select_option("subtree")
    wl = child.submit(process_spec("below-the-root", args=["60"], cpu=1.0))
    line = row(page, wl["id"])
    expect(line).to_have_attribute("data-status", "running", timeout=LIVE)
    expect(line.locator("td", has_text="nanjing")).to_have_count(1)
    expect(page.locator("#node-workloads")).to_have_text("0 live / 0")  # none of them runs here
    child.api("POST", f"/api/workloads/{wl['id']}/stop").raise_for_status()
    expect(line).to_have_attribute("data-status", "stopped", timeout=LIVE)
    page.locator("#wl-scope").select_option("local")
    expect(line).to_have_count(0)


def test_subtree_scope_shows_a_grandchilds_workload_live(make_agent, open_page):
    """Two levels down, with heartbeats too slow to help: the change is passed up at once."""
    slow = {"bus": {"heartbeat_interval": 30.0, "heartbeat_misses": 3}}
    root = make_agent("jiangsu", config=slow)
    middle = make_agent("nanjing", config={**slow, "parent": {"enabled": True,
                                                               "address": f"127.0.0.1:{root.port}"}})
    leaf = make_agent("xuanwu", config={**slow, "parent": {"enabled": True,
                                                           "address": f"127.0.0.1:{middle.port}"}})

    def subtree_nodes() -> int:
        children = root.api("GET", "/api/nodes").json()["children"]
        return children[0]["subtree"]["nodes"] if children else 0

    wait_for(lambda: subtree_nodes() == 2, timeout=10, message="xuanwu below nanjing at jiangsu")
    page = open_page().open(root)
    page.locator("#wl-scope").select_option("subtree")
    expect(page.locator("#wl-empty")).to_be_visible()
    wl = leaf.submit(process_spec("two-levels-down", args=["60"], cpu=1.0))
    line = row(page, wl["id"])
    expect(line).to_have_attribute("data-status", "running", timeout=LIVE)
    expect(line.locator("td", has_text="xuanwu")).to_have_count(1)
    leaf.api("POST", f"/api/workloads/{wl['id']}/stop").raise_for_status()
    expect(line).to_have_attribute("data-status", "stopped", timeout=LIVE)


def test_stop_and_delete_by_button(agent, open_page):
    wl = agent.submit(process_spec("to-stop", args=["60"]))
    page = open_page().open(agent)
    line = row(page, wl["id"])
    expect(line).to_have_attribute("data-status", "running")
    line.get_by_role("button", name="Stop to-stop").click()
    expect(line).to_have_attribute("data-status", "stopped")
    expect(line.get_by_role("button", name="Stop to-stop")).to_be_disabled()
    assert agent.workload(wl["id"])["status"] == "stopped"
    delete = line.get_by_role("button", name="Delete to-stop")
    delete.click()
    expect(delete).to_have_text("Confirm delete")  # a second click is needed: no native confirm()
    delete.click()
    expect(line).to_have_count(0)
    expect(page.locator("#wl-empty")).to_be_visible()
    assert agent.api("GET", f"/api/workloads/{wl['id']}").status_code == 404


def test_logs_viewer(agent, open_page):
    script = "echo first-line; echo '<b>bold</b>'; sleep 60"
    wl = agent.submit(process_spec("talker", command="sh", args=["-c", script]))
    page = open_page().open(agent)
    row(page, wl["id"]).get_by_role("button", name="Logs of talker").click()
    dialog = page.locator("#logs-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#logs-title")).to_have_text("Logs — talker")
    expect(dialog.locator("#logs-text")).to_contain_text("first-line")
    expect(dialog.locator("#logs-text")).to_contain_text("<b>bold</b>")
    expect(dialog.locator("b")).to_have_count(0)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_xss_name_is_text(agent, open_page):
    holder = open_page()
    page = holder.open(agent)
    wl = agent.submit(process_spec(XSS, command="sh", args=["-c", f"echo '{XSS}'; exit 1"]))
    line = row(page, wl["id"])
    expect(line.locator("td.c-name")).to_have_text(XSS)
    expect(line).to_have_attribute("data-status", "failed")
    fill_process_form(page, XSS, "sleep", ["60"])
    page.get_by_role("button", name="Submit").click()
    expect(row_named(page, XSS)).to_have_count(2)
    line.get_by_role("button", name=f"Logs of {XSS}").click()
    expect(page.locator("#logs-text")).to_contain_text(XSS)
    expect(page.locator("img")).to_have_count(0)
    assert holder.dialogs == []


def test_token_prompt(make_agent, open_page):
    agent = make_agent(config={"api": {"token": "s3cret-token"}})
    assert requests.get(agent.url + "/api/workloads", timeout=5).status_code == 401
    holder = open_page()
    page = holder.open(agent, live=False)
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("node-id")).to_have_text("jiangsu")  # /api/health is public
    page.get_by_label("Token", exact=True).fill("wrong")
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#token-error")).to_have_text(re.compile("refused"))
    page.get_by_label("Token", exact=True).fill("s3cret-token")
    page.get_by_role("button", name="Use token").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")  # ?token= on the socket
    assert page.evaluate("sessionStorage.getItem('cnet.api-token')") == "s3cret-token"
    wl = agent.submit(process_spec("guarded", args=["60"]))
    expect(row(page, wl["id"])).to_have_attribute("data-status", "running", timeout=LIVE)
    page.get_by_role("button", name="Stop guarded").click()
    expect(row(page, wl["id"])).to_have_attribute("data-status", "stopped")
    page.reload()  # the token is kept for the tab
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(dialog).to_be_hidden()
    expect(row(page, wl["id"])).to_be_visible()


def test_reconnects_after_agent_restart(agent, open_page):
    page = open_page().open(agent)
    conn = page.locator("#conn")
    agent.terminate()
    expect(conn).not_to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("node-status")).to_have_text("unreachable")
    agent.start()
    expect(conn).to_have_attribute("data-state", "live", timeout=20000)
    expect(page.get_by_test_id("node-status")).to_have_text("alive")
    wl = agent.submit(process_spec("after-restart", args=["60"]))
    expect(row(page, wl["id"])).to_have_attribute("data-status", "running", timeout=LIVE)


def test_polls_when_the_socket_cannot_open(agent, open_page):
    holder = open_page()
    holder.page.add_init_script(
        "window.WebSocket = class { constructor() { throw new Error('blocked by the test'); } };")
    page = holder.open(agent, live=False)
    expect(page.locator("#conn")).to_have_attribute("data-state", "polling")
    wl = agent.submit(process_spec("polled", args=["60"]))
    expect(row(page, wl["id"])).to_have_attribute("data-status", "running", timeout=5000)
    expect(cpu_allocated(page)).to_have_attribute("aria-valuenow", "1", timeout=5000)


def test_keyboard_reaches_the_controls(agent, open_page):
    agent.submit(process_spec("keyed", args=["60"]))
    page = open_page().open(agent)
    expect(page.locator('tr[data-testid="wl-row"]')).to_have_count(1)
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("(document.activeElement.getAttribute('aria-label') || "
                                  "document.activeElement.id || document.activeElement.textContent)"))
    for label in ("Logs of keyed", "Stop keyed", "Delete keyed", "f-type", "f-name", "f-cpu",
                  "f-strategy", "submit-button"):
        assert label in reached, f"{label!r} not reachable by Tab; reached {sorted(reached)}"


def _uploads_merged() -> bool:
    return (REPO / "cnet" / "uploads.py").exists()


@pytest.mark.skipif(not _uploads_merged(),
                    reason="the data upload endpoint (cnet/uploads.py: multipart POST "
                           "/api/workloads with type=data) has not landed yet")
def test_directory_upload(agent, open_page, tmp_path):
    tree = tmp_path / "dataset"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    page = open_page().open(agent)
    page.get_by_label("Type").select_option("data")
    expect(page.get_by_label("CPU (cores)")).to_be_disabled()  # requirements do not apply
    page.set_input_files("#f-dir", str(tree))
    expect(page.locator("#f-files-summary")).to_contain_text("2 files")
    expect(page.get_by_label("Name")).to_have_value("dataset")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#form-message")).to_have_text(re.compile(r"Submitted dataset"))
    expect(page.locator("#upload-bar")).to_have_attribute("aria-valuenow", "100")
    listed = agent.api("GET", "/api/workloads", params={"type": "data"}).json()["workloads"]
    assert [w["name"] for w in listed] == ["dataset"]
    assert sorted(f["path"] for f in listed[0]["files"]) == ["dataset/a.txt", "dataset/sub/b.bin"]
    assert listed[0]["size"] == (1 << 20) + 6
    line = row(page, listed[0]["id"])
    expect(line.locator('td[data-label="Type"]')).to_have_text("data")
    expect(line).to_have_attribute("data-status", "completed")
    expect(line.locator("td.c-endpoint")).to_have_text(f"key {listed[0]['data_key']}")
    expect(page.locator("#upload-text")).to_have_text(re.compile(r"^100% · 1 MiB of 1 MiB$"))


def test_screenshots(make_agent, open_page):
    OUT.mkdir(exist_ok=True)
    root, child = two_nodes(make_agent)
    child.submit(process_spec("yolo-like-service", args=["300"], cpu=1.5, memory=2 << 30))
    child.submit(process_spec("batch-job", command="sh", args=["-c", "echo done"], cpu=0.5))
    child.submit(process_spec(XSS, command="sh", args=["-c", "exit 3"], cpu=0.25))
    root.submit(process_spec("province-cache", args=["300"], cpu=2))
    for width, height in ((1280, 800), (375, 800)):
        for agent in (child, root):
            page = open_page(width, height).open(agent)
            expect(page.locator('tr[data-testid="wl-row"]').first).to_be_visible()
            expect(page.locator('tr[data-status="pending"], tr[data-status="stopping"]')).to_have_count(0)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{width}px: the page scrolls sideways by {overflow}px"
            page.screenshot(path=str(OUT / f"ui-{agent.node_id}-{width}.png"))
            page.screenshot(path=str(OUT / f"ui-{agent.node_id}-{width}-full.png"), full_page=True)


def _neighbour(node_id: str, role: str, status: str = "alive", last_seen: float = 0.4, **extra):
    gib = 1 << 30
    return {"node_id": node_id, "role": role, "status": status, "last_seen": last_seen,
            "address": f"http://127.0.0.1:1{len(node_id)}080",
            "capacity": {"cpu": 8.0, "memory": 16 * gib, "gpu": 1, "storage": 200 * gib},
            "allocated": {"cpu": 2.0, "memory": 4 * gib, "gpu": 1, "storage": 0},
            "available": {"cpu": 6.0, "memory": 12 * gib, "gpu": 0, "storage": 200 * gib},
            "usage": {"cpu": 1.2, "memory": 6 * gib, "gpu": 0, "storage": 20 * gib}, **extra}


def test_neighbours_and_tree_render(agent, open_page):
    """What the bus will report (mocked here, so the page is checked without it)."""
    holder = open_page()
    view = requests.get(agent.url + "/api/nodes", timeout=5).json()
    view["parent"] = _neighbour("province", "parent")
    view["peers"] = [_neighbour("suqian", "peer", "lost", 42.0, address="javascript:alert(1)"),
                     dict(view["self"], role="peer")]  # this node must be left out
    grandchild = _neighbour("gulou", "child")
    view["children"] = [_neighbour("nanjing", "child", subtree={"nodes": 2, "children": [grandchild]}),
                        _neighbour("changzhou", "child")]
    view["nodes"] = [view["self"], view["parent"], *view["peers"][:1], *view["children"], grandchild]
    holder.page.route("**/api/nodes", lambda route: route.fulfill(json=view))
    page = holder.open(agent)
    cards = page.locator("#neighbours .ncard")
    expect(cards).to_have_count(4)
    expect(page.locator('#neighbours .ncard[data-node="jiangsu"]')).to_have_count(0)
    expect(page.locator('#neighbours [data-group="parent"] .ncard-id')).to_have_text("province")
    lost = page.locator('#neighbours .ncard[data-node="suqian"]')
    expect(lost.locator(".pill")).to_have_text("lost")
    expect(lost.locator(".age")).to_have_text(re.compile(r"seen 4\ds ago"))
    expect(lost.locator("a")).to_have_count(0)  # a javascript: address is shown, not linked
    expect(lost).to_contain_text("javascript:alert(1)")
    expect(page.locator("#topology-count")).to_have_text("4 linked, 1 lost")
    expect(page.locator('#neighbours .ncard[data-node="nanjing"] [data-kind="cpu"] .bar')) \
        .to_have_attribute("aria-valuenow", "2")
    expect(page.locator('#neighbours .ncard[data-node="nanjing"] [data-kind="cpu"] .rc-fig')) \
        .to_have_text(re.compile(r"^2/8 .* 6 free$"))
    for node in ("jiangsu", "nanjing", "gulou", "changzhou"):
        expect(page.locator(f'#tree li[data-node="{node}"]')).to_have_count(1)
    expect(page.locator('#tree li[data-node="nanjing"] li[data-node="gulou"]')).to_have_count(1)
    OUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUT / "ui-neighbours-1280.png"), full_page=True)


SEED_FORMS = [
    ("mlmodel", {"Model type": "yolo", "Model path": "models/yolo11n.onnx", "Service port": "9001"},
     {"model_type": "yolo", "model_path": "models/yolo11n.onnx", "service_port": 9001}),
    ("opencv", {"Cascade": "face", "Service port": "9000"},
     {"cascade_type": "face", "service_port": 9000}),
    ("datagateway", {"Service port": "9091", "Service host": "127.0.0.1",
                     "Base path": "/tmp/cnet_data", "Bucket": "cnet"},
     {"service_port": 9091, "service_host": "127.0.0.1", "base_path": "/tmp/cnet_data",
      "bucket": "cnet"}),
    ("container", {"Image": "nginx:alpine", "Command": 'nginx -g "daemon off;"',
                   "Ports": "8080:80", "Environment": "A=1\nB=x=y"},
     {"image": "nginx:alpine", "command": ["nginx", "-g", "daemon off;"], "ports": ["8080:80"],
      "env": {"A": "1", "B": "x=y"}}),
]


def capture_submits(page) -> list[dict]:
    """Hold every POST to /api/workloads (answered 400 "captured"); the list fills with their JSON."""
    sent: list[dict] = []

    def capture(route):
        if route.request.method != "POST":
            return route.continue_()
        sent.append(route.request.post_data_json)
        return route.fulfill(status=400, json={"error": {"code": "captured", "message": "held by the test"}})

    page.route("**/api/workloads", capture)
    return sent


@pytest.mark.parametrize("wtype,fields,config", SEED_FORMS, ids=[f[0] for f in SEED_FORMS])
def test_type_forms_send_the_seed_json(agent, open_page, wtype, fields, config):
    """Each type's fields become the seed's JSON (the POST is captured, not run)."""
    holder = open_page()
    sent = capture_submits(holder.page)
    page = holder.open(agent)
    page.get_by_label("Type").select_option(wtype)
    page.get_by_label("Name").fill(f"{wtype}-svc")
    for label, value in fields.items():
        control = page.get_by_label(label)
        if control.evaluate("el => el.tagName") == "SELECT":
            control.select_option(value)
        else:
            control.fill(value)
    page.get_by_label("CPU (cores)").fill("2")
    page.get_by_label("Memory (MiB)").fill("2048")
    page.get_by_label("Strategy").select_option("least_loaded")
    page.get_by_label("Node selector").fill("zone=east")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#form-message")).to_have_text("400 captured: held by the test")
    assert sent == [{"name": f"{wtype}-svc", "type": wtype, "config": config,
                     "requirements": {"cpu": 2, "memory": 2147483648, "gpu": 0},
                     "placement": {"strategy": "least_loaded", "node_selector": {"zone": "east"}}}]


def test_container_form_sends_args_volumes_working_dir_and_storage(agent, open_page):
    holder = open_page()
    sent = capture_submits(holder.page)
    page = holder.open(agent)
    page.get_by_label("Type").select_option("container")
    for label, value in {"Name": "web", "Image": "cnet-test-busybox", "Command": "httpd",
                         "Arguments": "-f\n-p\n8080", "Volumes": "/srv/data:/data:ro",
                         "Working directory": "/data", "Storage (MiB)": "100"}.items():
        page.get_by_label(label).fill(value)
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#form-message")).to_have_text("400 captured: held by the test")
    assert sent[0]["config"] == {"image": "cnet-test-busybox", "command": ["httpd"],
                                 "args": ["-f", "-p", "8080"], "volumes": ["/srv/data:/data:ro"],
                                 "working_dir": "/data"}
    assert sent[0]["requirements"]["storage"] == 100 * 1024 * 1024
