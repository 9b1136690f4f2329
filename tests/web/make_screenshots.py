"""Screenshots of the worklist and a study page for the README, from a running demo.

``make demo`` (which ends serving the web app), then::

    .venv/bin/python -m tests.web.make_screenshots http://127.0.0.1:PORT demo-admin \\
        demo-admin-password docs/img
"""

from __future__ import annotations

import sys
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.web.browser import chromium, log_in


def main(base: str, username: str, password: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    driver = chromium()
    try:
        driver.set_window_size(1500, 900)
        log_in(driver, base, username, password)
        driver.save_screenshot(str(out / "worklist.png"))
        driver.find_element(By.CSS_SELECTOR, "#worklist-rows tr[data-uid] td a").click()
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('img.radiograph')]"
            ".every(i => i.complete && i.naturalWidth > 0);"))
        driver.set_window_size(1500, 1500)
        driver.save_screenshot(str(out / "study.png"))
    finally:
        driver.quit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]))
