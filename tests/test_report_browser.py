"""Open study reports in headless Chromium, a generated one and the checked-in
docs/studies/*/report.html: each loads from disk without console errors or network requests, its
answer (the forest plot and the sentences under it) fills the first screen at 1280 x 800, every
image has alt text and no absolute path appears; a screenshot is left in tmp_path.

Needs the Debian packages chromium and chromium-driver and the Python package selenium; the
test skips, saying which is missing, otherwise. It never downloads a browser or a driver.
"""

import re
import shutil
from pathlib import Path

import pytest

from _synthetic import functional_rows, krs_rows
from kdscope.analysis.functional import functional_transfer
from kdscope.analysis.krs_validation import krs_validation
from kdscope.analysis.report import write_report

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "headless Chromium test needs /usr/bin/chromium and /usr/bin/chromedriver "
        "(apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
)
DOCS = sorted((Path(__file__).resolve().parents[1] / "docs" / "studies").glob("*/report.html"))
# An absolute POSIX path: a slash not inside a word or URL, then at least two path parts.
ABSOLUTE = re.compile(r"(?<![\w.:/+-])/(?:[\w.-]+/)+[\w.-]+")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module's pages (starting one takes seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_AVOID_STATS", "true")  # Selenium Manager must not phone home
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        profile = tmp_path_factory.mktemp("chromium") / "profile"
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = webdriver.ChromeService(CHROMEDRIVER)
        driver = webdriver.Chrome(options=options, service=service)
        # the viewport itself, not the window around it, is the first screen
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
        driver.quit()


def _check_page(browser, uri: str) -> None:
    """Loaded from disk alone; answer in the first screen; alt text; no absolute path."""
    browser.get(uri)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert [r for r in resources if not r.startswith("data:")] == []
    screen = browser.execute_script(
        "const img = document.querySelector('.lead figure img');"
        "const answer = document.querySelector('.lead .answer');"
        "const r = img.getBoundingClientRect(), a = answer.getBoundingClientRect();"
        "return {top: r.top, bottom: r.bottom, width: r.width, answer: a.bottom,"
        "  loaded: img.complete && img.naturalWidth > 100,"
        "  height: window.innerHeight, viewport: window.innerWidth};"
    )
    assert (screen["viewport"], screen["height"]) == (1280, 800) and screen["loaded"]
    assert screen["top"] >= 0 and screen["bottom"] <= screen["height"], screen
    assert screen["answer"] <= screen["height"] and screen["width"] > 600, screen
    alts = browser.execute_script("return Array.from(document.images).map(i => i.alt.trim())")
    assert alts and all(alts)
    html = re.sub(r"data:image/png;base64,[^\"]+", "", browser.page_source)
    assert ABSOLUTE.findall(html) == []


def test_study_report_renders_in_chromium(tmp_path, browser):
    sections = [
        functional_transfer(functional_rows({"agree_I": 0.1}, seeds=range(3))),
        krs_validation(krs_rows(("kd", "fitnet", "at"), pairs=(("resnet56", "resnet20"),))),
    ]
    path = write_report(tmp_path / "report.html", "Synthetic study", sections)
    _check_page(browser, path.as_uri())

    assert browser.title == "Synthetic study"
    for element_id in ("summary", "ft-arms", "ft-tests", "ft-payoff", "krs-correlation"):
        element = browser.find_element("id", element_id)
        assert element.is_displayed() and element.size["height"] > 0
    for figure_id in ("ft-forest", "ft-fig-agreement", "ft-fig-payoff", "krs-fig-correlation"):
        loaded = browser.execute_script(
            "const img = document.querySelector(`#${arguments[0]} img`);"
            "return img.complete && img.naturalWidth > 100;",
            figure_id,
        )
        assert loaded, f"figure {figure_id} did not load"
    summary = browser.find_element("id", "summary").text
    assert "kd vs control" in summary and "KRS vs accuracy" in summary

    shot = Path(tmp_path / "report.png")
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("report", DOCS, ids=[p.parent.name for p in DOCS])
def test_checked_in_study_reports_answer_on_the_first_screen(report, browser):
    _check_page(browser, report.as_uri())
    # the page opens on the answer: the functional forest where the study has one, else the
    # KRS validation's scatter of KRS against the task score
    leads = browser.execute_script(
        "return Array.from(document.querySelectorAll('.lead figure')).map(f => f.id)"
    )
    functional = browser.find_elements("id", "functional-transfer") != []
    assert leads[0] == ("ft-forest" if functional else "krs-fig-correlation"), leads
    assert browser.find_element("id", leads[0]).is_displayed()
