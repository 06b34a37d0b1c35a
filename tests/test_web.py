"""The web page in real headless Chromium against a real `chromify serve`: upload, see the result, compare, download."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (apt-get install)")



@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir: Path, chromify_serve) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--model", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "CHROMIFY_LOG_LEVEL": "warning"}
    with chromify_serve(args, env, port, tmp_path_factory.mktemp("log") / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium that can reach 127.0.0.1 and nothing else, and logs every request its pages make.

    Everything but loopback goes through a proxy that is a bound socket never listening, so it is refused at once:
    a page that needs the network fails here as it would on the offline machines, not only where the test runs
    without one."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    dead_end = socket.socket()
    dead_end.bind(("127.0.0.1", 0))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage", "--window-size=1200,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 f"--proxy-server=127.0.0.1:{dead_end.getsockname()[1]}"):  # Chromium never proxies loopback
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    dead_end.close()


# A page script's `drop(name, base64)`: a PNG dropped on the page, as a person drags one from their files.
DROP_JS = """
        const drop = (name, b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], name, {type: "image/png"}));
          window.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, cancelable: true}));
        };
"""


def page_requests(driver) -> tuple[list[str], list[str]]:
    """(URLs requested, "URL: error" for those that failed) by web pages since the last call, from the DevTools
    network events; Chromium's own pages (a new tab's, loaded lazily) are left out."""
    import json

    requested, failed, urls = [], [], {}
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        params = event.get("params", {})
        if event["method"] == "Network.requestWillBeSent":
            if params.get("documentURL", "").startswith(("chrome:", "chrome-untrusted:")):
                continue
            urls[params["requestId"]] = params["request"]["url"]
            requested.append(params["request"]["url"])
        elif event["method"] == "Network.loadingFailed" and params["requestId"] in urls:
            failed.append(f"{urls[params['requestId']]}: {params.get('errorText')}")
    return requested, failed


def wait_for(driver, script: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def test_upload_a_photo_and_see_it_coloured(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    photo = tmp_path / "harbour 1931.jpg"
    Image.fromarray(data.camera()).resize((400, 300)).save(photo, quality=90)
    browser.get(server + "/")
    assert browser.title.startswith("Chromify")
    wait_for(browser, "return document.getElementById('limits').textContent.includes('megapixels')")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait_for(browser, "const r = document.getElementById('result');"
                      "return !document.getElementById('viewer').hidden && r.complete && r.naturalWidth > 0")
    result = browser.find_element(By.ID, "result")
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", result)
    assert size == [400, 300]
    assert result.is_displayed() and browser.find_element(By.ID, "original").is_displayed()
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("href").startswith("blob:" + server)
    assert link.get_attribute("download") == "harbour 1931-colorized.png"
    assert "Done" in browser.find_element(By.ID, "status").text

    # the before/after slider moves the edge of the colorized layer
    browser.execute_script("const s = document.getElementById('slider'); s.value = 20;"
                           "s.dispatchEvent(new Event('input'))")
    assert browser.execute_script("return document.getElementById('after').style.clipPath") == "inset(0px 0px 0px 20%)"
    # nothing was blocked or failed: no CSP violation, no external request, no script error
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_a_bad_file_shows_the_reason(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    junk = tmp_path / "scan.jpg"
    junk.write_text("not really a photo")
    browser.get(server + "/")
    browser.find_element(By.ID, "file").send_keys(str(junk))
    wait_for(browser, "return document.getElementById('status').classList.contains('error')")
    assert "415" in browser.find_element(By.ID, "status").text
    assert browser.execute_script("return document.getElementById('viewer').hidden")


def test_choosing_jpeg_gives_a_jpeg_named_so(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    photo = tmp_path / "pier.png"
    Image.fromarray(data.camera()).resize((320, 240)).save(photo)
    browser.get(server + "/")
    wait_for(browser, "return document.getElementById('limits').textContent.includes('megapixels')")
    Select(browser.find_element(By.ID, "format")).select_by_value("jpeg")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait_for(browser, "const r = document.getElementById('result');"
                      "return !document.getElementById('viewer').hidden && r.complete && r.naturalWidth > 0")
    # the page names the download after the type of the bytes the server sent (a PNG would be .png)
    assert browser.find_element(By.ID, "download").get_attribute("download") == "pier-colorized.jpg"


def test_a_second_photo_chosen_while_the_first_answer_decodes_is_the_one_shown(server: str, browser,
                                                                                 tmp_path: Path) -> None:
    """The second photo empties the result, so the first answer's decode fails: its handler used to go on and
    show the viewer empty with "Done …: 0 × 0 px" while the second photo was still on the server."""
    import base64
    import io

    def png(size: tuple[int, int]) -> str:
        buf = io.BytesIO()
        Image.fromarray(data.camera()).resize(size).save(buf, "PNG")
        return base64.b64encode(buf.getvalue()).decode()

    browser.get(server + "/")
    wait_for(browser, "return document.getElementById('limits').textContent.includes('megapixels')")
    # Photo b is dropped the moment photo a's answer is set on the page, before it has decoded.
    browser.execute_script(DROP_JS + """
        const result = document.getElementById("result"), status = document.getElementById("status");
        window.statusLog = [];
        new MutationObserver(() => window.statusLog.push(status.textContent))
          .observe(status, {childList: true, characterData: true, subtree: true});
        new MutationObserver(() => {
          if (result.src.startsWith("blob:") && !window.secondDropped) {
            window.secondDropped = true;
            drop("b.png", arguments[1]);
          }
        }).observe(result, {attributes: true, attributeFilter: ["src"]});
        drop("a.png", arguments[0]);
    """, png((400, 300)), png((300, 200)))
    wait_for(browser, "return window.statusLog.some((s) => s.startsWith('Done'))")
    log = browser.execute_script("return window.statusLog")
    assert [s.split(" in ")[0] for s in log] == ["Colorizing a.png …", "Colorizing b.png …", "Done"], log
    assert log[-1].endswith(": 300 × 200 px. Drag the slider to compare.")
    assert browser.execute_script("const r = document.getElementById('result'); return [r.naturalWidth, "
                                  "r.naturalHeight, document.getElementById('viewer').hidden]") == [300, 200, False]


def test_sizes_are_in_the_servers_units_and_a_replaced_photos_request_is_cancelled(server: str, browser,
                                                                                    tmp_path: Path) -> None:
    """The page said "20 MB" for 20 MiB, and "0.0 MB" under a small limit; and a photo replaced by another kept its
    request, so the server colorized photos nobody would see before the one shown."""
    import base64
    import io

    browser.get(server + "/")
    wait_for(browser, "return document.getElementById('limits').textContent.includes('megapixels')")
    assert browser.find_element("id", "limits").text.endswith("up to 20 MiB and 40 megapixels")
    assert browser.execute_script("return [size(21100000), size(20971520), size(40000), megapixels(400000)]") == [
        "20.1 MiB", "20 MiB", "39.1 KiB", "0.4 megapixels"]

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((3000, 2400)).save(buf, "PNG")  # seconds to colorize here
    page_requests(browser)  # from here on
    browser.execute_script(DROP_JS + """
        drop("big.png", arguments[0]);
        setTimeout(() => drop("small.png", arguments[1]), 300);
    """, base64.b64encode(buf.getvalue()).decode(), base64.b64encode(_small_png()).decode())
    wait_for(browser, "return document.getElementById('status').textContent.startsWith('Done')")
    requested, failed = page_requests(browser)
    assert [u for u in requested if u.endswith("/colorize")] == [server + "/colorize"] * 2
    assert failed == [server + "/colorize: net::ERR_ABORTED"], failed
    assert browser.execute_script("return [document.getElementById('result').naturalWidth, "
                                  "document.getElementById('status').className]") == [64, "status"]


def _small_png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(data.camera()).resize((64, 48)).save(buf, "PNG")
    return buf.getvalue()


def test_the_api_reference_shows_every_route_with_no_network(server: str, browser) -> None:
    """/docs was Swagger UI, fetched from a CDN: blank on the offline machines. Every request it makes now is to
    this server, and the routes are there to read without a script."""
    from selenium.webdriver.common.by import By

    browser.get_log("browser"), page_requests(browser)  # forget the earlier tests' pages
    browser.get(server + "/docs")
    wait_for(browser, "return document.readyState === 'complete'")
    requested, failed = page_requests(browser)
    assert requested and all(url.startswith((server + "/", "data:")) for url in requested), requested
    assert failed == []
    colorize = browser.find_element(By.ID, "post-colorize")
    assert colorize.is_displayed()
    assert "POST /colorize" in colorize.text and "curl -F file=@photo.jpg" in colorize.text
    for route in ("post-predict", "get-healthz"):
        assert browser.find_element(By.ID, route).is_displayed()
    # styled by its own stylesheet (the CSP allows it), so the method badge is not plain text
    badge = colorize.find_element(By.CSS_SELECTOR, ".method")
    assert badge.value_of_css_property("color") == "rgba(255, 255, 255, 1)"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
