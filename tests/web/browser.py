"""Headless Debian Chromium through Selenium and /usr/bin/chromedriver, and `cxr-triage web`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.servers import free_port, wait_for_port
from tests.web.conftest import PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def chromium() -> webdriver.Chrome:
    """A headless Chromium; a missing browser fails (scripts/install-system-deps.sh)."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


class WebProcess:
    """``cxr-triage web`` as a real subprocess on a free loopback port."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "web.log"
        self.env = {**os.environ, **env, "TRIAGE_WEB_PORT": str(self.port),
                    "TRIAGE_WEB_SECRET_KEY_FILE": str(workdir / "secret.key")}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "cxr_triage", "web"],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.workdir)
        wait_for_port(self.port, timeout=60)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def log_in(driver: webdriver.Chrome, base: str, username: str,
           password: str = PASSWORD) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/login")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 30).until(lambda d: "/worklist" in d.current_url)


def row_accessions(driver: webdriver.Chrome) -> list[str]:
    """Accession (or short UID) of each worklist row, top to bottom."""
    return [row.find_element(By.CSS_SELECTOR, "td a").text
            for row in driver.find_elements(By.CSS_SELECTOR, "#worklist-rows tr[data-uid]")]
