"""The web demo (tools/web_demo.py): the page's logic without a browser, the command line's
model choice, and the real page in headless Chromium (Debian's chromium and chromium-driver).

Browser set-up: the ``chromium`` fixture uses ``chromium``/``chromedriver`` from the PATH; when
they are missing and the tests run as root on a machine with apt-get (CI), it installs Debian's
``chromium`` and ``chromium-driver`` packages (no browser download by selenium); elsewhere the
browser test is skipped, naming the command to run.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from regionclip.formats import to_hf_pipeline
from regionclip.tools import web_demo as wd

VOCAB = ["square", "circle", "star", "heart"]


# ------------------------------------------------------------------ page logic, no browser
class _FakeDetector:
    """Records calls; returns fixed detections (``detect`` format, best first)."""

    def __init__(self, dets, score_thresh=0.05):
        self.dets, self.calls = dets, []
        self.cfg = type("C", (), {"MODEL": type("M", (), {
            "ROI_HEADS": type("R", (), {"SCORE_THRESH_TEST": score_thresh})})})

    def detect(self, image, vocabulary, score_threshold=None):
        self.calls.append((image.shape, list(vocabulary), score_threshold))
        return [dict(d) for d in self.dets]


DETS = [{"box": [2.5, 3.5, 20.9, 30.1], "label": "star", "score": 0.9},
        {"box": [3.0, 4.0, 21.0, 29.0], "label": "circle", "score": 0.7},   # same object
        {"box": [40.0, 10.0, 60.0, 35.0], "label": "circle", "score": 0.4},
        {"box": [5.0, 40.0, 25.0, 45.0], "label": "star", "score": 0.2}]


def _png(path, hw=(48, 64)):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)).save(
        path)
    return str(path)


def test_parse_vocabulary():
    assert wd.parse_vocabulary(" cat, remote control ,,cat\nsofa ") == ["cat", "remote control",
                                                                          "sofa"]
    for empty in ("", " , ,", None, "\n"):
        with pytest.raises(wd.PageError, match="the vocabulary is empty"):
            wd.parse_vocabulary(empty)


def test_predict_threshold_nms_limit_and_json(tmp_path):
    det = _FakeDetector(DETS)
    page = wd.DetectionPage(wd.ServedModel(det, "fake"))
    assert page.default_threshold == 0.05  # the config's SCORE_THRESH_TEST
    picture, text, message = page.predict(_png(tmp_path / "a.png"), "star, circle", 0.3)
    assert det.calls == [((48, 64, 3), ["star", "circle"], 0.3)]
    out = json.loads(text)
    assert [d["score"] for d in out] == [0.9, 0.7, 0.4]  # the 0.2 is below the threshold
    assert out[0] == {"score": 0.9, "label": "star",
                      "box": {"xmin": 2, "ymin": 3, "xmax": 20, "ymax": 30}}
    assert picture.shape == (48, 64, 3) and message.startswith("3 detections of 2 names")
    # the picture has the boxes drawn on it
    assert not np.array_equal(picture, np.asarray(Image.open(tmp_path / "a.png")))
    # class-agnostic NMS keeps one label per object, then the limit
    page = wd.DetectionPage(wd.ServedModel(_FakeDetector(DETS), "fake", agnostic_nms=0.5,
                                           max_detections=2, score_threshold=0.1))
    assert page.default_threshold == 0.1
    out = json.loads(page.predict(_png(tmp_path / "a.png"), "star, circle", 0.1)[1])
    assert [(d["label"], d["score"]) for d in out] == [("star", 0.9), ("circle", 0.4)]


@pytest.mark.parametrize("case, match", [
    ("no picture", "no picture: upload an image file"),
    ("not an image", "'notes.png' is not an image that can be read"),
    ("empty vocabulary", "the vocabulary is empty"),
    ("bad threshold", r"the score threshold must be in \[0, 1\], got 1.5"),
    ("detector fails", "the detector failed: RuntimeError: boom"),
])
def test_predict_reports_bad_input_as_a_message(tmp_path, case, match):
    det = _FakeDetector(DETS)
    if case == "detector fails":
        det.detect = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    page = wd.DetectionPage(wd.ServedModel(det, "fake"))
    upload, vocab, threshold = _png(tmp_path / "a.png"), "star", 0.3
    if case == "no picture":
        upload = None
    elif case == "not an image":
        upload = tmp_path / "notes.png"
        upload.write_text("not a picture")
        upload = str(upload)
    elif case == "empty vocabulary":
        vocab = " , "
    elif case == "bad threshold":
        threshold = 1.5
    picture, text, message = page.predict(upload, vocab, threshold)
    assert picture is None and text == ""
    assert message.startswith(wd.ERROR_PREFIX)
    assert re.search(match, message), message
    assert "Traceback" not in message


def test_preview(tmp_path):
    page = wd.DetectionPage(wd.ServedModel(_FakeDetector([]), "fake"))
    rgb, message = page.preview(_png(tmp_path / "a.png"))
    assert rgb.shape == (48, 64, 3) and "Loaded 'a.png' (64 x 48 px)" in message
    (tmp_path / "b.jpg").write_bytes(b"\x00\x01 not a jpeg")
    rgb, message = page.preview(str(tmp_path / "b.jpg"))
    assert rgb is None and message.startswith(wd.ERROR_PREFIX) and "'b.jpg' is not an image" \
        in message
    assert page.preview(None) == (None, "")


def test_command_line_model_choice(monkeypatch):
    from regionclip.api import RegionCLIP

    def args(*argv):
        return wd.build_parser().parse_args(list(argv))

    with pytest.raises(ValueError, match="no model: give --config-file"):
        wd.load_model(args())
    with pytest.raises(ValueError, match="either --model or --config-file"):
        wd.load_model(args("--model", "x", "--weights", "w.pth"))
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        wd.load_model(args("--opts", "MODEL.DEVICE"), lambda **k: None)
    with pytest.raises(KeyError, match="unknown model 'rn50'.*regionclip_pretrained-cc_rn50"):
        wd.load_model(args("--model", "rn50"))  # the real model zoo answers
    calls = []
    monkeypatch.setattr(RegionCLIP, "from_pretrained",
                        classmethod(lambda cls, name, **kw: calls.append((name, kw)) or "det"),
                        raising=False)
    served = wd.load_model(args("--model", "rn50", "--device", "cpu"))
    assert (served.detector, served.name, calls) == ("det", "rn50", [("rn50", {"device": "cpu"})])
    seen = {}
    wd.load_model(args("--opts", "MODEL.DEVICE", "cpu"), lambda **k: seen.update(k))
    assert seen == {"opts": ["MODEL.DEVICE", "cpu"], "device": None}
    assert args().host == "127.0.0.1" and args().port == 7860


def test_config_and_weights_flags_serve_that_model(tmp_path):
    """--config-file/--weights/--opts load a RegionCLIP (the custom-image config: RPN regions,
    MULTIPLY_RPN_SCORE with VIS); listed scores are at least the threshold."""
    from tiny_detector import CUSTOM, tiny_detector_opts, write_images

    opts, weights = tiny_detector_opts(str(tmp_path))
    args = wd.build_parser().parse_args(["--config-file", CUSTOM, "--weights", weights,
                                         "--opts"] + opts)
    served = wd.load_model(args)
    cfg = served.detector.cfg
    assert served.name == os.path.basename(weights) and cfg.MODEL.WEIGHTS == weights
    assert cfg.MODEL.CLIP.MULTIPLY_RPN_SCORE and cfg.MODEL.CLIP.VIS
    page = wd.DetectionPage(served)
    (image,) = write_images(str(tmp_path / "imgs"), [("x.png", (96, 128))])
    raw = served.detector.detect(image, ["red box", "cat"], score_threshold=0.0)
    threshold = float(np.median([d["score"] for d in raw]))
    picture, text, message = page.predict(image, "red box, cat", threshold)
    listed = json.loads(text)
    assert listed and all(d["score"] >= threshold for d in listed), message
    # detect's own threshold applies to sqrt(prob * objectness): the page drops the rest
    direct = served.detector.detect(image, ["red box", "cat"], score_threshold=threshold)
    assert any(d["score"] < threshold for d in direct)
    assert listed == to_hf_pipeline([d for d in direct if d["score"] >= threshold])


# ------------------------------------------------------------------ the page in a browser
def _install_chromium():
    """Paths of chromium and chromedriver, installed with apt-get when missing (root only)."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found
    hint = "apt-get install -y chromium chromium-driver"
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"chromium/chromedriver not found and apt-get cannot run here (needs root "
                    f"on Debian): run `sudo {hint}`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], hint.split()):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"`{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}"
    found = shutil.which("chromium"), shutil.which("chromedriver")
    assert all(found), f"`{hint}` did not provide chromium and chromedriver: {found}"
    return found


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -e '.[web]'")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="the browser test needs selenium (the [test] extra)")
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _install_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``tools/web_demo.py`` with no model flag (the shipped toy detector) on a free port."""
    pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -e '.[web]'")
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = dict(os.environ, PYTHONPATH=REPO, GRADIO_ANALYTICS_ENABLED="False",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "web_demo.py"),
                                 "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the server did not answer in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait(driver, predicate, what, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(d))
    except Exception:
        raise AssertionError(f"timed out waiting for {what}; status: "
                             f"{_status(driver)!r}") from None


def _status(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text.strip()


def _json_text(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "#detections-json textarea").get_attribute(
        "value")


def _upload(driver, path):
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#picture input[type=file]").send_keys(str(path))


def _set_text(driver, css, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)
    box.send_keys(Keys.TAB)


def _scene(path, seed=4):
    """A toy-world scene (a square, a circle, a star) at the detector's 96 px, shown 3x."""
    from toyworld.scenes import SceneSpec, draw_scene

    scene = draw_scene(np.random.default_rng(seed), SceneSpec(image_size=(96, 96)),
                       shapes=["square", "circle", "star"])
    Image.fromarray(np.kron(scene.image, np.ones((3, 3, 1), dtype=np.uint8))).save(path)
    return str(path)


def _expected(picture, threshold):
    """The page's detections computed here, with the same model and settings."""
    from toyworld.demo import web_model

    page = wd.DetectionPage(web_model())
    return to_hf_pipeline(page.detections(np.asarray(Image.open(picture).convert("RGB")), VOCAB,
                                          threshold))


def test_page_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(server)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#picture input[type=file]"),
          "the page")
    # Detect before anything is uploaded: a message, no result
    driver.find_element(By.ID, "detect").click()
    _wait(driver, lambda d: "no picture" in _status(d), "the no-picture message")
    assert _status(driver).startswith(wd.ERROR_PREFIX) and _json_text(driver) == ""

    picture = _scene(tmp_path / "scene.png")
    h, w = np.asarray(Image.open(picture)).shape[:2]
    _upload(driver, picture)
    _wait(driver, lambda d: "Loaded 'scene.png'" in _status(d), "the upload")
    _set_text(driver, "#vocabulary textarea, #vocabulary input", ", ".join(VOCAB))
    threshold = 0.2
    _set_text(driver, "#threshold input[type=number]", str(threshold))
    driver.find_element(By.ID, "detect").click()
    _wait(driver, lambda d: _json_text(d), "the detections")
    status = _status(driver)
    detections = json.loads(_json_text(driver))
    assert f"with score >= {threshold:g}" in status, status  # the slider's value was used
    assert len(detections) >= 2, detections  # the checks below are not vacuous
    for d in detections:
        assert d["label"] in VOCAB and d["score"] >= threshold
        b = d["box"]
        assert 0 <= b["xmin"] < b["xmax"] <= w and 0 <= b["ymin"] < b["ymax"] <= h, b
    assert [d["score"] for d in detections] == sorted((d["score"] for d in detections),
                                                      reverse=True)
    assert status.startswith(f"{len(detections)} detections of {len(VOCAB)} names")
    expected = _expected(picture, threshold)  # the page shows the model's own results
    assert [(d["label"], d["box"]) for d in detections] == \
        [(d["label"], d["box"]) for d in expected]
    np.testing.assert_allclose([d["score"] for d in detections], [d["score"] for d in expected],
                               rtol=1e-5)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#result img"), "the picture")
    driver.save_screenshot(str(tmp_path / "web_demo.png"))
    assert os.path.getsize(tmp_path / "web_demo.png") > 10_000

    # replace the picture by a file that is not an image: a message on upload, and Detect
    # clears the previous result and shows the message
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is text, not a picture")
    driver.find_element(By.CSS_SELECTOR, "#picture button[aria-label=Clear]").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#picture input[type=file]"),
          "the cleared upload")
    _upload(driver, fake)
    _wait(driver, lambda d: "'holiday.jpg' is not an image" in _status(d), "the upload error")
    assert _status(driver).startswith(wd.ERROR_PREFIX)
    assert json.loads(_json_text(driver)) == detections  # not cleared by the upload
    driver.find_element(By.ID, "detect").click()
    _wait(driver, lambda d: _json_text(d) == "", "the cleared result")
    message = _status(driver)
    assert message.startswith(wd.ERROR_PREFIX) and "'holiday.jpg' is not an image" in message
    assert "/tmp" not in message and "gradio" not in message  # no server paths
    page = driver.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in page and 'File "' not in page
    driver.save_screenshot(str(tmp_path / "web_demo_error.png"))
