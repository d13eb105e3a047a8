"""The voice-chat page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) with a WAV file as its fake microphone records a spoken
turn, sends it, and shows the transcript, the answer's text and its audio; a typed turn follows in
the same conversation. The page is photographed mid-conversation (``SERVE_SCREENSHOT=PATH`` keeps
the picture). Skipped, saying why, when no browser is installed."""
import os
import shutil
import time

import pytest
from generation_helpers import tiny_bundle

from baichuan_audio_jax.inference.generator import Generator
from baichuan_audio_jax.serve.app import ServeSettings, create_app
from baichuan_audio_jax.serve.runner import ServerThread

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (BROWSER and DRIVER), reason="no browser: the browser test needs Debian's "
                                "chromium and chromium-driver packages (apt-get install chromium chromium-driver)")

LIMIT = 16  # the settings of test_serve_api.py: the programs it compiled are reused
SETTINGS = ServeSettings(max_batch=4, batch_sizes=(4,), max_wait_ms=300, max_new_tokens=LIMIT, stream_steps=2,
                         max_upload_seconds=30, request_timeout=300, chat_text_tokens=4, warm_up_audio_seconds=4.5)


@pytest.fixture(scope="module")
def server(parity_dir):
    gen = Generator.from_bundle(tiny_bundle(str(parity_dir)))
    with ServerThread(create_app(gen, SETTINGS)) as s:
        yield s


@pytest.fixture
def browser(speech_dir, tmp_path):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,900",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={speech_dir / 'zh_med_1889.wav'}",
                "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER, log_output=str(tmp_path / "chromedriver.log")), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_voice_chat_page_records_sends_and_shows_the_answer(server, browser, tmp_path):
    d = browser
    d.get(server.url + "/")
    wait = WebDriverWait(d, 600)
    record = d.find_element(By.ID, "record")
    wait.until(lambda _: record.is_enabled())
    assert d.find_element(By.ID, "status").text.startswith("Ready")
    d.execute_script("""document.getElementById('message').value = '';""")

    record.click()  # the fake microphone plays the recording
    wait.until(lambda _: record.get_attribute("aria-pressed") == "true")
    time.sleep(2.5)
    record.click()
    user = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#log li.user")))
    assert user.find_element(By.TAG_NAME, "audio")  # the recording can be replayed
    answer = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#log li.assistant[data-done='true']")))
    wait.until(lambda _: user.get_attribute("data-pending") == "false")
    transcript = user.find_element(By.CLASS_NAME, "text").text
    assert transcript and transcript != "…"
    assert answer.find_element(By.CLASS_NAME, "text").text.strip()
    # the answer spoke: its chunks were played as they came and kept for replay
    assert float(answer.get_attribute("data-audio-seconds")) > 0
    assert int(answer.get_attribute("data-audio-chunks")) >= 1
    assert answer.find_element(By.TAG_NAME, "audio").get_attribute("src").startswith("blob:")

    box = d.find_element(By.ID, "message")  # a typed turn in the same conversation
    box.send_keys("再说一遍")
    d.find_element(By.ID, "send").click()
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#log li.user")) == 2)
    shot = str(tmp_path / "serve_chat.png")
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#log li.assistant[data-done='true']")) == 2)
    d.save_screenshot(shot)
    assert os.path.getsize(shot) > 10_000
    if os.environ.get("SERVE_SCREENSHOT"):
        shutil.copy(shot, os.environ["SERVE_SCREENSHOT"])
    assert not d.find_elements(By.CSS_SELECTOR, "#log li.error")
    logs = [e for e in d.get_log("browser") if e["level"] == "SEVERE"] if hasattr(d, "get_log") else []
    assert not logs, logs
