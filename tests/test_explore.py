"""`ntl explore`: a self-contained page whose numbers are the library's, driven in headless Chromium."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from ntl import NumberVocab
from ntl.explore import page
from ntl.losses import functional

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
IN_CI = bool(os.environ.get("CI") or os.environ.get("NTL_CI"))
DIGITS = NumberVocab.from_vocab({str(d): d for d in range(10)})


def library_losses(p: list[float], target: int, sigma: float) -> dict[str, float]:
    """CE and every NTL of ``ntl.losses.functional`` for the distribution ``p`` over 0..9."""
    probs = torch.tensor(p, dtype=torch.float64)
    logits = probs.log()[None]  # softmax(log p) = p; log 0 = -inf keeps zeros exact
    labels = torch.tensor([target])
    values = torch.arange(10, dtype=torch.float64)
    if sigma > 0:  # the Gaussian-smoothed label, written here independently of the page
        soft = torch.exp(-((values - target) ** 2) / (2 * sigma**2))
        soft = soft / soft.sum()
    else:
        soft = torch.nn.functional.one_hot(labels, 10)[0].double()
    return {
        "ce": float(functional.cross_entropy(logits, labels)),
        "was": float(functional.wasserstein(logits, labels, DIGITS)),
        "mse": float(functional.expectation(logits, labels, DIGITS, ntl="mse")),
        "mae": float(functional.expectation(logits, labels, DIGITS, ntl="mae")),
        "w1soft": float(functional.wasserstein(logits, labels, DIGITS, target_probs=soft[None])),
        "mean": float(probs @ values),
    }


def assert_same(page_values: dict[str, float], lib: dict[str, float]) -> None:
    for name, want in lib.items():
        got = page_values[name]
        if math.isinf(want):
            assert math.isinf(got), (name, got)
        else:
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (name, got, want)  # CE is float32


def test_page_is_one_self_contained_file(tmp_path):
    html = page()
    assert "/*LOSSES_JS*/" not in html and "const NTL" in html
    for needle in ("http://", "https://", "src=", "<link", "import("):
        assert needle not in html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
            '"http://www.w3.org/2000/svg"', ""), needle
    out = subprocess.run([sys.executable, "-m", "ntl.cli", "explore", "--out", str(tmp_path / "p.html")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "p.html").read_text(encoding="utf-8") == html


# ---------------------------------------------------------------------- in the browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        if IN_CI:
            pytest.fail("chromium and chromium-driver must be installed in CI (.ci/run installs them)")
        pytest.skip("needs chromium + chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={tempfile.mkdtemp(prefix='ntl-chromium-')}", "--window-size=1100,820"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    path = tmp_path_factory.mktemp("explore") / "page.html"
    path.write_text(page(), encoding="utf-8")
    driver.get(path.as_uri())  # file://, no server
    yield driver
    driver.quit()


def shown(driver) -> tuple[dict[str, float], list[float]]:
    """The values the page displays (full precision from data-value) and its distribution."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, "[data-loss]")
    values = {c.get_attribute("data-loss"): float(c.get_attribute("data-value")) for c in cells}
    for c in cells:  # the visible text is the same number, rounded
        text = c.text
        want = float(c.get_attribute("data-value"))
        assert text == "∞" if math.isinf(want) else float(text) == pytest.approx(want, abs=5e-5)
    p = json.loads(driver.find_element(By.ID, "distribution").get_attribute("data-p"))
    return values, p


def test_page_math_equals_the_library(browser):
    rng = random.Random(0)
    cases = []
    for target in range(10):
        for sigma in (0.0, 0.7, 2.0):
            weights = [rng.random() ** 3 for _ in range(10)]
            cases.append(([w / sum(weights) for w in weights], target, sigma))
    cases.append(([0.5, 0, 0, 0, 0, 0, 0, 0, 0.5, 0], 4, 0.0))  # the many-minima case
    cases.append(([0.0] * 9 + [1.0], 9, 1.0))
    results = browser.execute_script(
        "return arguments[0].map(([p, y, s]) => NTL.losses(p, y, s));", cases)
    for (p, target, sigma), got in zip(cases, results):
        got = {k: (math.inf if v is None or v == "Infinity" else v) for k, v in got.items()}
        assert_same(got, library_losses(p, target, sigma))


def test_controls_drive_the_displayed_values(browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "target")).select_by_value("7")
    browser.find_element(By.CSS_SELECTOR, "[data-preset=far]").click()
    far, p = shown(browser)
    assert p.index(max(p)) == 0 and far["was"] > 6  # far from 7 is 0
    assert_same(far, library_losses(p, 7, 0.0))

    browser.find_element(By.CSS_SELECTOR, "[data-preset=neighbour]").click()
    near, p = shown(browser)
    assert near["ce"] == pytest.approx(far["ce"])  # CE does not care where the wrong mass sits
    assert near["was"] < far["was"] / 4  # NTL does
    assert_same(near, library_losses(p, 7, 0.0))

    # Drag the target's bar (digit 7) up to the top: the mass moves onto the target.
    svg = browser.find_element(By.ID, "bars")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", svg)
    box = svg.rect
    x = (30 + 7.5 * 44) / 500 * box["width"] - box["width"] / 2
    y_low, y_top = (200 / 240 - 0.5) * box["height"], (12 / 240 - 0.5) * box["height"]
    ActionChains(browser).move_to_element_with_offset(svg, int(x), int(y_low)).click_and_hold() \
        .move_by_offset(0, int(y_top - y_low)).release().perform()
    dragged, p = shown(browser)
    assert p[7] > 0.95 and dragged["ce"] < 0.06 and dragged["was"] < 0.1
    assert_same(dragged, library_losses(p, 7, 0.0))

    # The soft-target slider: σ > 0 makes W1 differ from NTL-WAS.
    slider = browser.find_element(By.ID, "sigma")
    slider.send_keys(*[Keys.ARROW_RIGHT] * 8)
    soft, p = shown(browser)
    assert browser.find_element(By.ID, "sigma-value").text == "0.8"
    assert soft["w1soft"] != pytest.approx(soft["was"])
    assert_same(soft, library_losses(p, 7, 0.8))

    # The many-minima case: MSE is zero although the model never predicts the target.
    browser.find_element(By.ID, "show-minima").click()
    minima, p = shown(browser)
    assert minima["mse"] == 0 and minima["mae"] == 0 and math.isinf(minima["ce"])
    assert minima["was"] == pytest.approx(4.0)
    if os.environ.get("NTL_SCREENSHOT"):  # refresh docs/explore.png
        browser.find_element(By.CSS_SELECTOR, "[data-preset=neighbour]").click()
        slider.send_keys(*[Keys.ARROW_RIGHT] * 2)
        browser.execute_script("window.scrollTo(0, 0);")
        browser.save_screenshot(os.environ["NTL_SCREENSHOT"])
