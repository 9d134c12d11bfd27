"""The console in a real browser: headless Chromium (Debian's, driven by
selenium and chromedriver) against a real ``immune-node demo``.  A responder
logs in, watches the alerts page while a program under /tmp is refused by
the kernel, sees the alert arrive without reloading, opens its process tree,
approves the pending kill a playbook in approval mode asked for, and sees
the process die and the result recorded under their name; then kills
another process by hand from the agent's page, through its confirmation.

Along the way it takes the screenshots of the main pages: into the test's
folder, or with IMMUNE_CONSOLE_SCREENSHOTS=docs/console into the docs (small
PNGs, recompressed by optipng where installed)::

    IMMUNE_CONSOLE_SCREENSHOTS=docs/console flock /tmp/immune-kernel.lock \
        .venv/bin/python -m pytest tests/e2e/test_console_browser.py

It skips, with the reason, where Chromium or chromedriver is missing, and
fails instead under CI=true."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hive import Store
from hive.correlate import Incident
from hive.playbook import Records
from tests.kmod.conftest import kernel

from .nodes import IMMUNE_NODE, free_port

pytestmark = kernel

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "a long responder password"
EXEC_FROM_TEMP = "f0e573d2-6313-4ebf-acd3-66449483759d"
PLAYBOOK = f"""
id: kill-from-temp-approved
title: Kill what tried to run from /tmp, once a responder approves
mode: approval
trigger:
    rules: [{EXEC_FROM_TEMP}]
steps:
    - action: kill_process
      params:
          pid: "{{{{ event.pid }}}}"
"""


def _browser_or_skip():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"no {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)


def stored(demo, read):
    """What ``read`` finds in the demo's store now (None: nothing yet)."""
    store = Store(demo.data / "hive.db", readonly=True)
    try:
        return read(store)
    finally:
        store.close()


def select(body, browser, selected: str, most: int = 50) -> None:
    """Press j until the row ``selected`` names is the selected one."""
    from selenium.webdriver.common.by import By

    for _ in range(most):
        body.send_keys("j")
        if browser.find_elements(By.CSS_SELECTOR, selected):
            return
    raise AssertionError(f"j never selected {selected}")


def spki_pin(cert: Path) -> str:
    """base64 SHA-256 of the certificate's public key: what Chromium's
    --ignore-certificate-errors-spki-list trusts (this one key, nothing else)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def demo(tmp_path, start_node):
    _browser_or_skip()
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "kill.yml").write_text(PLAYBOOK)
    config = tmp_path / "immune.toml"
    config.write_text(f'[hive]\nplaybooks = ["{books}"]\n')
    data = tmp_path / "data"
    port = free_port()
    node = start_node("demo", data, "--config", str(config), "--listen", f"tcp://127.0.0.1:{free_port()}",
                      "--console-listen", f"https://127.0.0.1:{port}")
    node.wait_ready(timeout=120)
    subprocess.run([*IMMUNE_NODE, "users", "add", "rhea", "--role", "responder", "--data", str(data)],
                   input=PASSWORD + "\n", text=True, check=True, capture_output=True)
    node.console = f"https://127.0.0.1:{port}"
    yield node
    assert node.stop() == 0


@pytest.fixture
def browser(demo, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
                # Trust the console's self-signed certificate by its key, and nothing else.
                f"--ignore-certificate-errors-spki-list={spki_pin(demo.data / 'console.crt')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.screenshots = tmp_path / "screenshots"
    yield driver
    driver.quit()


def shoot(driver, name: str) -> None:
    """A screenshot of the viewport (1280x800)."""
    folder = Path(os.environ.get("IMMUNE_CONSOLE_SCREENSHOTS") or driver.screenshots)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    if shutil.which("optipng"):
        subprocess.run(["optipng", "-quiet", "-o2", "-strip", "all", str(path)], check=False)


def test_a_responder_sees_a_blocked_exec_live_opens_its_tree_and_approves_the_kill(demo, browser, tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(demo.console + "/alerts")  # anonymous: to the login page, then back here
    wait.until(ec.presence_of_element_located((By.NAME, "password")))
    browser.find_element(By.NAME, "name").send_keys("rhea")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit], form input[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "alert-rows")))
    assert browser.current_url.endswith("/alerts")
    # Wait for the live stream to be open before the exec.
    wait.until(lambda d: d.execute_script(
        "var s = document.querySelector('#alert-rows'); var es = s && htmx.find ? s['htmx-internal-data'] : null;"
        "return es && es.sseEventSource && es.sseEventSource.readyState === 1"))
    browser.execute_script("window.notReloaded = true")

    # A program under /tmp: the sensor refuses its exec.  With execfail the
    # shell survives the refusal and waits: the process the kill is for.
    evil = tmp_path / "evil.sh"
    evil.write_text("#!/bin/sh\necho never runs\n")
    evil.chmod(0o755)
    shell = subprocess.Popen(["bash", "-c", f"shopt -s execfail; exec {evil}; exec sleep 300"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#alert-rows tr.fresh a[data-open]")))
        assert browser.execute_script("return window.notReloaded") is True, "the page reloaded: not live"
        shoot(browser, "alerts")
        del row
        # Keyboard triage: j moves down the rows to the shell's alert, o opens it.  (Other
        # alerts may be newer: from a checkout under /tmp, the node's own processes match
        # the same rule.)
        alert_id = WebDriverWait(browser, 30).until(lambda d: stored(demo, lambda store: next(
            (a.id for a in store.alerts(limit=1000) if shell.pid in {e.pid for e in a.events}), None)))
        body = browser.find_element(By.TAG_NAME, "body")
        select(body, browser, f"#alert-rows tr.sel[data-href='/alerts/{alert_id}']")
        body.send_keys("o")

        wait.until(ec.presence_of_element_located((By.ID, "open-tree"))).click()
        tree = wait.until(ec.presence_of_element_located((By.ID, "tree")))
        assert str(shell.pid) in tree.text and str(evil) in tree.text
        assert browser.find_elements(By.CSS_SELECTOR, "#tree tr.me .verdict-block")
        shoot(browser, "process-tree")

        browser.get(demo.console + "/actions")

        kill_id = WebDriverWait(browser, 60, poll_frequency=1).until(lambda d: stored(demo, lambda store: next(
            (a.id for a in Records(store.db).actions(states=("pending_approval",))
             if a.action == "kill_process" and a.params.get("pid") == shell.pid), None)))

        def pending_kill(d):
            d.refresh()
            return d.find_elements(By.CSS_SELECTOR, f"#action-{kill_id} button.approve")

        WebDriverWait(browser, 60, poll_frequency=1).until(pending_kill)
        assert "kill_process" in browser.find_element(By.ID, "actions").text
        shoot(browser, "actions")
        browser.execute_script("window.notReloaded = true")
        # j moves to the shell's pending kill, a approves it once the confirmation is accepted.
        body = browser.find_element(By.TAG_NAME, "body")
        select(body, browser, f"#action-{kill_id}.sel")
        body.send_keys("a")
        WebDriverWait(browser, 10).until(ec.alert_is_present())
        assert "Approve kill_process" in browser.switch_to.alert.text
        browser.switch_to.alert.accept()
        # The kill is carried out; the page shows its result (live, by its change stream).
        try:
            code = shell.wait(timeout=60)
        except subprocess.TimeoutExpired:  # say why: the playbook's actions and the node's last lines
            store = Store(demo.data / "hive.db", readonly=True)
            actions = [(a.playbook, a.action, a.state, a.result) for a in Records(store.db).actions()]
            store.close()
            raise AssertionError(f"pid {shell.pid} not killed in 60 s after the approval; actions: {actions}; "
                                 f"node log:\n{demo.log()[-4000:]}") from None
        assert code == -9
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#action-{kill_id} td.state-done")))
        assert browser.execute_script("return window.notReloaded") is True
    finally:
        shell.kill()
        shell.wait()

    store = Store(demo.data / "hive.db", readonly=True)
    [kill] = Records(store.db).actions(action_id=kill_id)
    assert kill.state == "done" and kill.params["pid"] == shell.pid
    assert any(r.actor == "operator:rhea" for r in Records(store.db).audit(action_id=kill.id))
    store.close()

    # A kill by hand from the agent's page: the form, the confirmation page, the live result.
    store = Store(demo.data / "hive.db", readonly=True)
    [agent] = [a.id for a in store.agents() if a.online]
    store.close()
    victim = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        browser.get(f"{demo.console}/agents/{agent}")
        form = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "form.run:has(button.kill)")))
        form.find_element(By.NAME, "pid").send_keys(str(victim.pid))
        form.find_element(By.CSS_SELECTOR, "button.kill").click()
        confirm = wait.until(ec.presence_of_element_located((By.ID, "confirm")))
        assert f"pid={victim.pid} tree=True" in browser.find_element(By.ID, "confirm-what").text
        assert victim.poll() is None  # nothing before the confirmation
        shoot(browser, "run-action")
        confirm.click()
        wait.until(lambda d: "/actions#action-" in d.current_url)  # to the live list, at its row
        row = browser.current_url.rpartition("#")[2]
        assert victim.wait(timeout=60) == -9
        try:
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#actions tr#{row} td.state-done")))
        except TimeoutException:  # say why: the action as stored, and the row as shown
            store = Store(demo.data / "hive.db", readonly=True)
            stored_as = [(a.id, a.state, a.result) for a in Records(store.db).actions(
                action_id=row.removeprefix("action-"))]
            store.close()
            shown = [r.get_attribute("outerHTML")[:500] for r in browser.find_elements(By.CSS_SELECTOR, f"#{row}")]
            raise AssertionError(f"{row} never shown done; stored: {stored_as}; shown: {shown}") from None
    finally:
        victim.kill()
        victim.wait()

    browser.get(demo.console + "/")
    wait.until(ec.presence_of_element_located((By.ID, "overview")))
    shoot(browser, "overview")
    # An incident across hosts needs two hosts; for its page's picture one is
    # stored as the correlator would store it.
    writer = Store(demo.data / "hive.db")
    writer.ingest([], incidents=[Incident(
        id="inc-docs", title="Lateral movement: ssh from web1 to db1, then a reverse shell", opened=time.time(),
        updated=time.time(), level="critical", agents=["web1", "db1", "backup"],
        edges=[("web1", "db1", 22), ("db1", "backup", 873)], alerts=[])])
    writer.close()
    browser.get(demo.console + "/incidents/inc-docs")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "svg.graph")))
    shoot(browser, "incident")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
