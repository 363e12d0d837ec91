"""Browser tests of the vmedia web console: headless Debian Chromium driven by Selenium,
axe-core (bundled by axe-selenium-python) on every page. Run by crates/cli/tests/console.rs,
which starts the daemon and passes everything through the environment:

  CONSOLE_URL        https://127.0.0.1:PORT (self-signed certificate)
  CONSOLE_HTTP       http://127.0.0.1:PORT  (plain image port, for the load generator)
  CONSOLE_ADMIN      name:password of an administrator
  CONSOLE_VIEWER     name:password of a readonly user
  CONSOLE_ITEM       the library item that holds version 1
  CONSOLE_ISO        an ISO to upload as its version 2
  CONSOLE_ISO_V1     the ISO of version 1 (uploaded again, interrupted and resumed)
  CONSOLE_BOOT_ITEM  a bootable ISO's item, booted once from CD by a managed VM (optional)
  CONSOLE_MARKER     what that guest prints on its serial console once up
  CONSOLE_SHOTS      folder for screenshots; CONSOLE_DOCS a second copy for docs (optional)

Prints one line per case ("PASS name ..." or "SKIP name: why") and exits non-zero on the
first failure, with a screenshot of the page at that moment.
"""

import base64
import json
import os
import shutil
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request

from axe_selenium_python import Axe
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

URL = os.environ["CONSOLE_URL"]
HTTP = os.environ["CONSOLE_HTTP"]
ADMIN = os.environ["CONSOLE_ADMIN"].split(":", 1)
VIEWER = os.environ["CONSOLE_VIEWER"].split(":", 1)
ITEM = os.environ["CONSOLE_ITEM"]
ISO = os.environ["CONSOLE_ISO"]
ISO_V1 = os.environ["CONSOLE_ISO_V1"]
BOOT_ITEM = os.environ.get("CONSOLE_BOOT_ITEM")
MARKER = os.environ.get("CONSOLE_MARKER", "VMEDIA-BOOT-OK")
# A TCG boot on a busy 2-core machine takes 5-60 s; the guest gets this long.
BOOT_WAIT = 240
SHOTS = os.environ["CONSOLE_SHOTS"]
DOCS = os.environ.get("CONSOLE_DOCS")
# How long one step may take on a busy 2-core machine.
WAIT = 30
# Systems registered for the batch attach.
BATCH = 50

TLS = ssl.create_default_context()
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE


def rest(method, path, body=None, who=ADMIN):
    """The REST API directly (Basic), to check what the console did."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(URL + path, data=data, method=method)
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(who).encode()).decode())
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, context=TLS, timeout=WAIT) as answer:
            text = answer.read()
            return answer.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text.decode(errors="replace")


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--ignore-certificate-errors", "--window-size=1280,720", "--lang=en-US",
                "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    driver.set_window_size(1280, 720)
    return driver


class Run:
    def __init__(self, driver):
        self.driver = driver
        self.wait = WebDriverWait(driver, WAIT)
        self.axe_pages = []

    def shot(self, name, top=True):
        if top:
            self.driver.execute_script("window.scrollTo(0, 0)")
        os.makedirs(SHOTS, exist_ok=True)
        path = os.path.join(SHOTS, f"{name}.png")
        self.driver.save_screenshot(path)
        if DOCS and not name.startswith("FAILED"):
            os.makedirs(DOCS, exist_ok=True)
            shutil.copy(path, os.path.join(DOCS, f"{name}.png"))

    def find(self, css):
        return self.wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def text_in(self, css, text):
        self.wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def until(self, what, check, timeout=WAIT):
        end = time.time() + timeout
        while time.time() < end:
            try:
                value = check()
            except StaleElementReferenceException:
                # The page re-rendered (live pages do every tick) between find and read: retry.
                value = None
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def go(self, page):
        self.driver.get(f"{URL}/#/{page}")
        section = page.split("/")[0]
        navigated = f'nav a[data-page="{section}"][aria-current="page"]' if section != "prune" else "nav"
        self.until(f"page {page} to load", lambda: self.driver.find_elements(By.CSS_SELECTOR, navigated)
                   and not self.driver.find_elements(By.CSS_SELECTOR, "#page .loading")
                   and self.driver.find_elements(By.CSS_SELECTOR, "#page h1"))

    def login(self, who):
        self.driver.get(URL + "/")
        self.find("#login-name").send_keys(who[0])
        self.driver.find_element(By.CSS_SELECTOR, "#login-password").send_keys(who[1])
        self.driver.find_element(By.CSS_SELECTOR, "#login-submit").click()
        self.text_in("#who", who[0])

    def logout(self):
        self.driver.find_element(By.CSS_SELECTOR, "#logout").click()
        self.find("#login-name")

    def axe(self, page):
        """axe-core on the page as it stands: no serious or critical violation."""
        axe = Axe(self.driver)
        axe.inject()
        results = axe.run()
        bad = [v for v in results["violations"] if v.get("impact") in ("serious", "critical")]
        self.axe_pages.append(page)
        assert not bad, f"axe on {page}: " + json.dumps(
            [{"id": v["id"], "impact": v["impact"], "help": v["help"],
              "nodes": [n["target"] for n in v["nodes"][:3]]} for v in bad], indent=1)


def case_login(run):
    run.driver.get(URL + "/")
    run.find("#login-name")
    run.axe("login")
    run.shot("login")
    # A wrong password is said in words, and the form stays.
    run.find("#login-name").send_keys(ADMIN[0])
    run.driver.find_element(By.CSS_SELECTOR, "#login-password").send_keys("wrong")
    run.driver.find_element(By.CSS_SELECTOR, "#login-submit").click()
    run.text_in("#login-error", "wrong password")
    run.driver.find_element(By.CSS_SELECTOR, "#login-name").clear()
    run.login(ADMIN)
    # The session token is in an HttpOnly, Secure, SameSite=Strict cookie, never in script's reach.
    assert run.driver.execute_script("return document.cookie") == "", "a cookie is visible to script"
    cookies = {c["name"]: c for c in run.driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]}
    session = cookies.get("vmedia_session")
    assert session and session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict", cookies
    run.go("library")
    run.find("table")
    run.text_in("#page", ITEM)
    run.axe("library")
    run.shot("library")
    return "session cookie HttpOnly, Secure, SameSite=Strict; a wrong password is refused in words"


def case_upload(run):
    run.go(f"library/{ITEM}")
    run.text_in("#current-version", "Current version: 1")
    run.find("#upload-file").send_keys(ISO)
    run.find("#upload-done")
    run.text_in("#upload-done", "version 2")
    run.text_in("#current-version", "Current version: 2")
    run.find("#timeline svg")
    # Versions show new vs shared bytes (version 1's are all new: nothing came before it).
    run.find('#versions tr[data-version="2"]')
    head = run.find("#versions thead").text
    assert "New" in head and "Shared" in head, head
    status, item = rest("GET", f"/api/v1/library/items/{ITEM}")
    v1, v2 = (next(v for v in item["versions"] if v["version"] == n) for n in (1, 2))
    assert v1["new_bytes"] == v1["size"] and v1["shared_bytes"] == 0, v1
    assert v2["new_bytes"] is not None and v2["new_bytes"] + v2["shared_bytes"] == v2["size"], v2
    run.driver.execute_script("document.getElementById('versions').scrollIntoView()")
    run.shot("item-versions", top=False)
    run.axe("item")
    run.shot("item-uploaded")
    status, item = rest("GET", f"/api/v1/library/items/{ITEM}")
    assert status == 200 and item["current"] == 2, (status, item)
    return f"version 2 of {ITEM} is current (API agrees)"


def case_rollback(run):
    run.go(f"library/{ITEM}")
    mark = run.find('#timeline circle.mark.ev-add[data-version="1"]')
    mark.click()
    run.find("#rollback-button").click()
    run.find("#confirm[open]")
    run.text_in("#confirm-body", "Version 1 becomes current instead of version 2")
    run.shot("rollback-confirm", top=False)
    run.driver.find_element(By.CSS_SELECTOR, "#confirm-ok").click()
    run.text_in("#current-version", "Current version: 1")
    run.shot("rolled-back")
    status, item = rest("GET", f"/api/v1/library/items/{ITEM}")
    assert status == 200 and item["current"] == 1, (status, item)
    assert item["events"][-1]["kind"] == "rollback", item["events"][-1]
    return "current went 2 -> 1 in the page and through the API"


def audit_count(action):
    status, page = rest("GET", f"/api/v1/audit?user={ADMIN[0]}&target=/api/v1/uploads&limit=1000")
    assert status == 200, page
    return sum(1 for r in page["items"] if r["action"] == action)


def case_resume(run):
    """An upload interrupted halfway (the page reloaded) resumes at the daemon's offset."""
    size = os.path.getsize(ISO_V1)
    modified = int(os.stat(ISO_V1).st_mtime * 1000)
    item = ITEM + "-resumed"
    upload = run.driver.execute_async_script("""
        const [item, size, file, modified, content, done] = arguments;
        import('/console/api.js').then(async ({ api }) => {
          const bytes = await (await fetch(content, { credentials: 'same-origin' })).blob();
          const up = await api('/api/v1/uploads', { method: 'POST', body: { item, length: size } });
          await api(`/api/v1/uploads/${up.id}`, { method: 'PATCH', raw: true, body: bytes.slice(0, Math.floor(size / 2)),
            headers: { 'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream' } });
          localStorage.setItem('vmedia.upload', JSON.stringify({ id: up.id, item, file, size, modified }));
          done(up.id);
        }).catch((e) => done('error ' + e.message));
    """, item, size, os.path.basename(ISO_V1), modified, f"/api/v1/library/items/{ITEM}/versions/1/content")
    assert not upload.startswith("error"), upload
    creations = audit_count("POST /api/v1/uploads")
    run.go("library")
    run.driver.refresh()
    run.text_in("#page h1", "Library")
    run.text_in("#upload-status", "was interrupted")
    assert run.find("#upload-item").get_attribute("value") == item, run.find("#upload-item").get_attribute("value")
    run.shot("upload-resume")
    run.find("#upload-file").send_keys(ISO_V1)
    run.text_in("#upload-done", f"Added {item} version 1")
    assert run.driver.execute_script("return localStorage.getItem('vmedia.upload')") is None
    status, page = rest("GET", f"/api/v1/audit?user={ADMIN[0]}&target={upload}&limit=1000")
    assert status == 200, page
    actions = [r["action"] for r in page["items"]]
    patches = [a for a in actions if a == f"PATCH /api/v1/uploads/{upload}"]
    assert len(patches) == 2, actions
    # The same upload went on: the console made no new one.
    assert audit_count("POST /api/v1/uploads") == creations, (creations, audit_count("POST /api/v1/uploads"))
    _, v1 = rest("GET", f"/api/v1/library/items/{ITEM}/versions/1")
    _, resumed = rest("GET", f"/api/v1/library/items/{item}/versions/1")
    assert resumed["digest"] == v1["digest"], (resumed, v1)
    return f"resumed upload {upload} at {size // 2} of {size} bytes after a reload; same digest"


def case_live_io(run):
    stop = threading.Event()
    reads = [0]

    def load():
        # A load generator: ranged reads of the image over plain HTTP, as a booting VM does.
        while not stop.is_set():
            request = urllib.request.Request(f"{HTTP}/images/{ITEM}")
            request.add_header("Range", f"bytes={(reads[0] % 64) * 4096}-{(reads[0] % 64) * 4096 + 65535}")
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    answer.read()
                reads[0] += 1
            except OSError:
                time.sleep(0.05)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        run.go("live")
        run.text_in("#live-state", "Updated")
        # The IOPS chart moves: samples accumulate and the latest value is above zero.
        iops = run.until("IOPS above zero in the chart", lambda: float(
            run.driver.find_element(By.CSS_SELECTOR, "#chart-iops").get_attribute("data-last") or 0) > 0 and
            float(run.driver.find_element(By.CSS_SELECTOR, "#chart-iops").get_attribute("data-last")))
        samples = int(run.driver.find_element(By.CSS_SELECTOR, "#chart-iops polyline").get_attribute("data-samples"))
        run.until("more samples", lambda: int(run.driver.find_element(
            By.CSS_SELECTOR, "#chart-iops polyline").get_attribute("data-samples")) > samples)
        run.text_in("#live-rows", ITEM)
        run.axe("live")
        run.shot("live-io")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return f"{iops:.0f} IOPS shown while {reads[0]} reads ran"


def case_audit_replication(run):
    run.go("audit")
    run.find("#audit-user").send_keys(ADMIN[0])
    run.driver.find_element(By.CSS_SELECTOR, "#audit-target").send_keys(ITEM)
    run.driver.find_element(By.CSS_SELECTOR, "#page form button[type=submit]").click()
    run.text_in("#page table", "rollback")
    run.axe("audit")
    run.shot("audit")
    # The daemon replicates to a second folder library every 2 s: its peer shows from both
    # sources (the daemon's own state and the library's peer record, joined in one row), and
    # the item, changed by the upload and rollback above, comes to agree with the replica.
    def replicated():
        run.go("replication")
        rows = run.driver.find_elements(By.CSS_SELECTOR, f'#items-0 tr[data-item="{ITEM}"][data-state="agree"]')
        peers = run.driver.find_elements(By.CSS_SELECTOR, "#peers")
        return rows and peers and "daemon" in peers[0].text and rows[0]
    row = run.until("the replica to agree on the item", replicated, timeout=60)
    peers = run.find("#peers").text
    assert "library record" in peers and "sends to" in peers and "current" in peers, peers
    assert "yes" in row.text, row.text
    state, status = rest("GET", "/api/v1/library/sync-status")
    assert state == 200, status
    item = next(i for i in status["peers"][0]["items"] if i["name"] == ITEM)
    assert item["same_current"] and item["state"] == "agree", item
    assert item["decided_by"]["side"] == "here", item
    run.axe("replication")
    run.shot("replication")
    run.go("prune")
    run.axe("prune")
    return ("audit filtered by user and item shows the rollback; the replica peer from both sources, "
            f"{ITEM} agrees (decided by this site); replication and prune pages pass axe")


def systems_api():
    status, _ = rest("GET", "/api/v1/systems?limit=1")
    return status == 200


def case_batch(run):
    if not systems_api():
        return None
    for n in range(BATCH):
        status, body = rest("POST", "/api/v1/systems", {"id": f"batch-{n:02}", "labels": {"pool": "console"}})
        assert status in (200, 201, 409), (status, body)
    run.go("systems")
    run.text_in("#page", "batch-00")
    run.axe("systems")
    run.shot("systems")
    run.go("batch")
    Select(run.find("#batch-image")).select_by_value(ITEM)
    run.find("#batch-selector").send_keys("pool=console")
    run.driver.find_element(By.CSS_SELECTOR, "#batch-count").click()
    run.text_in("#batch-matched", f"{BATCH} systems match")
    run.driver.find_element(By.CSS_SELECTOR, "#batch-attach").click()
    run.find("#confirm[open]")
    run.driver.find_element(By.CSS_SELECTOR, "#confirm-ok").click()
    run.text_in("#batch-summary", f"{BATCH} attached, 0 failed of {BATCH}.")
    rows = run.driver.find_elements(By.CSS_SELECTOR, '#batch-results tr.batch-row[data-ok="true"]')
    assert len(rows) == BATCH, len(rows)
    run.axe("batch")
    run.shot("batch-attach")
    run.go("systems/batch-07")
    run.text_in("#system-usage", ITEM)
    run.axe("system")
    run.shot("system")
    run.go(f"library/{ITEM}")
    run.text_in("#usage", f"{BATCH} systems")
    return f"{len(rows)} per-system results; where-used lists {BATCH} systems"


def case_boot(run):
    """A managed VM: insert from the library, boot once from CD, power on, marker in the page."""
    if not BOOT_ITEM or not systems_api():
        return None
    vm = "console-vm"
    status, body = rest("POST", "/api/v1/systems", {"id": vm, "memory_mib": 512, "cdrom_slots": 1})
    assert status in (200, 201), (status, body)
    try:
        run.go(f"systems/{vm}")
        run.find("#media-image").send_keys(BOOT_ITEM)
        run.driver.find_element(By.CSS_SELECTOR, "#media-insert").click()
        run.text_in("#system-media", BOOT_ITEM)
        run.find("#boot-once-cd").click()
        run.text_in("#system-override", "once → cd")
        run.find("#power-start").click()
        run.text_in("#system-power", "on")
        WebDriverWait(run.driver, BOOT_WAIT).until(
            EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#serial-console"), MARKER))
        run.driver.execute_script("document.getElementById('serial-console').scrollIntoView()")
        run.shot("system-boot", top=False)
        run.driver.execute_script("window.scrollTo(0, 0)")
        run.axe("system")
        # Once means once: this boot used the override (the guest may have powered off since).
        status, system = rest("GET", f"/api/v1/systems/{vm}")
        assert status == 200 and system["boot_override"]["mode"] != "once", system
    finally:
        rest("POST", f"/api/v1/systems/{vm}/actions/stop", {"mode": "force"})
    return f"{MARKER} in the page's serial console after boot once from CD"


def case_readonly(run):
    run.logout()
    run.login(VIEWER)
    run.go(f"library/{ITEM}")
    run.text_in("#current-version", "Current version")
    assert not run.driver.find_elements(By.CSS_SELECTOR, "#upload-file"), "readonly sees the upload"
    run.driver.find_element(By.CSS_SELECTOR, '#timeline circle.mark.ev-add[data-version="2"]').click()
    run.find("#timeline-pick .panel")
    assert not run.driver.find_elements(By.CSS_SELECTOR, "#rollback-button"), "readonly sees rollback"
    run.go("library")
    run.text_in("#page", "is readonly")
    # Forcing a change from the page: the daemon refuses, the console says why and what to do.
    message = run.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/console/api.js').then(({ api, explain }) =>
          api('/api/v1/library/items/%s/rollback', { method: 'POST', body: { to: 2 }, headers: { 'If-Match': '*' } })
            .then(() => done('allowed'), (e) => { const x = explain(e); done(x.status + ' ' + x.what + ' | ' + x.todo); }));
    """ % ITEM)
    assert message.startswith("403 ") and "readonly" in message and "Ask an administrator" in message, message
    # Without the console's header, the cookie alone cannot change anything (CSRF).
    csrf = run.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/v1/library/items/%s/rollback', { method: 'POST', credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json' }, body: '{"to":2}' }).then((r) => done(r.status));
    """ % ITEM)
    assert csrf == 403, csrf
    run.go("batch")
    run.text_in("#page .error", "readonly")
    run.shot("readonly")
    status, item = rest("GET", f"/api/v1/library/items/{ITEM}")
    assert item["current"] == 1, item
    return f"no upload or rollback controls; forced rollback: {message.split(' | ')[0]}"


def case_layouts(run):
    run.logout()
    run.login(ADMIN)
    run.driver.find_element(By.CSS_SELECTOR, "#theme").click()
    assert run.driver.execute_script("return document.documentElement.dataset.theme") == "dark"
    run.go(f"library/{ITEM}")
    run.find("#timeline svg")
    run.axe("item (dark)")
    run.shot("item-dark")
    run.driver.set_window_size(390, 844)
    run.go("library")
    width = run.driver.execute_script("return document.documentElement.scrollWidth")
    run.shot("library-phone")
    run.driver.set_window_size(1280, 720)
    run.driver.find_element(By.CSS_SELECTOR, "#theme").click()
    assert width <= 420, f"the phone layout scrolls sideways: {width}px"
    # Times are in the viewer's zone with UTC in the title.
    title = run.find("#page time").get_attribute("title")
    assert title.endswith("UTC"), title
    return f"dark theme passes axe; phone width {width}px"


def main():
    started = time.time()
    driver = browser()
    run = Run(driver)
    cases = [case_login, case_upload, case_rollback, case_resume, case_live_io, case_audit_replication,
             case_batch, case_boot, case_readonly, case_layouts]
    try:
        for case in cases:
            name = case.__name__[5:]
            t = time.time()
            try:
                note = case(run)
            except Exception as error:  # noqa: BLE001 - reported with a screenshot
                run.shot(f"FAILED-{name}")
                print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
                logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
                for entry in logs[-20:]:
                    print(f"  browser: {entry['level']} {entry['message']}", flush=True)
                return 1
            if note is None:
                print(f"SKIP {name}: the daemon has no /api/v1/systems (or no bootable item)", flush=True)
            else:
                print(f"PASS {name} ({time.time() - t:.1f} s): {note}", flush=True)
        print(f"axe: no serious or critical violation on {', '.join(run.axe_pages)}", flush=True)
        print(f"total {time.time() - started:.1f} s", flush=True)
        return 0
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
