"""``universalseg serve`` end to end in a real browser (headless Chromium driven by Selenium).

Opens the page, picks the sample, the modality and the tasks, presses Segment and waits for the staged progress to
finish; the saved label map is voxel for voxel the CLI's on ``samples/hippo_sample.nii.gz``; a paint stroke changes
the voxel count and Undo restores it; bad uploads get a clear message and the server keeps serving; two browser
sessions keep their own scenes; a session beyond ``--max-sessions`` is told to wait. A screenshot after segmenting
is kept in ``out/test-artifacts/web-segmented.png``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "hippo_sample.nii.gz"
ARTIFACTS = ROOT / "out" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver, "
                "or make web): the browser tests need them", allow_module_level=True)
pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -r requirements-web.txt)")
pytest.importorskip("selenium", reason="selenium is not installed (pip install -r requirements-web.txt)")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SEGMENT_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(tmp: Path, *options: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(tmp / f"serve-{port}.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "UniversalSegLib.cli", "serve", "--port", str(port),
                                "--data", str(ROOT / "samples"), *options], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("universalseg serve did not start: " + (tmp / f"serve-{port}.log").read_text(encoding="utf-8"))


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    process, url = start_server(tmp, "--max-sessions", "4", "--upload-limit", "2M", "--idle-timeout", "20")
    yield url
    stop(process)


@pytest.fixture(scope="module")
def cli_labels(tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("cli") / "hippo_seg.nii.gz"
    subprocess.run([sys.executable, "-m", "UniversalSegLib.cli", "segment", str(SAMPLE), "-o", str(out),
                    "--group", "Hippocampus", "--modality", "MR-T1", "--quiet"], cwd=ROOT, check=True)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))


def browser(downloads: Path | None = None):
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    return driver


def wait(driver, condition, timeout: float = 60):
    return WebDriverWait(driver, timeout, poll_frequency=0.3).until(lambda d: condition(d))


def text(driver, element_id: str) -> str:
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.innerText : ''",
                                 element_id).strip()


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.find_elements(By.ID, "us-data-file"), 120)


def open_sample(driver) -> None:
    Select(driver.find_element(By.ID, "us-data-file")).select_by_visible_text(SAMPLE.name)
    time.sleep(0.5)
    driver.find_element(By.ID, "us-open").click()
    wait(driver, lambda d: "Opened" in text(d, "us-status"))


def choose_tasks(driver, modality: str = "MR-T1") -> list[str]:
    Select(driver.find_element(By.ID, "us-modality")).select_by_value(modality)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "input[id^=us-task-hippocampus]"))
    time.sleep(1)  # the list is rebuilt for the modality
    ids = [b.get_attribute("id") for b in driver.find_elements(By.CSS_SELECTOR, "input[id^=us-task-]")]
    for element_id in ids:
        for _attempt in range(10):
            try:
                box = driver.find_element(By.ID, element_id)
                if not box.is_selected():
                    box.click()
                break
            except StaleElementReferenceException:
                time.sleep(0.3)
    wait(driver, lambda d: all(d.find_element(By.ID, i).is_selected() for i in ids))
    wait(driver, lambda d: d.find_element(By.ID, "us-segment").is_enabled())
    return [i.removeprefix("us-task-") for i in ids]


def voxels(driver) -> dict[str, int]:
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('.us-voxels')).map(e => [e.id, e.textContent.trim()])")
    return {element_id.removeprefix("us-voxels-"): int(count) for element_id, count in rows}


def stroke(driver, view) -> None:
    """A mouse drag across the upper left of ``view`` (outside the segments of the sample's middle slice)."""
    size = view.size
    (ActionChains(driver).move_to_element_with_offset(view, -size["width"] // 4, -size["height"] // 4)
     .click_and_hold().move_by_offset(40, 0).move_by_offset(40, 10).move_by_offset(40, 10).release().perform())


def segment(driver) -> list[str]:
    """Press Segment and wait for the end; returns the stage lines seen."""
    driver.find_element(By.ID, "us-segment").click()
    stages, deadline = [], time.monotonic() + SEGMENT_TIMEOUT
    while time.monotonic() < deadline:
        line = text(driver, "us-progress-text").split(" - ")[0].split(" (")[0]
        if line and (not stages or stages[-1] != line):
            stages.append(line)
        status = text(driver, "us-status")
        if "segmented in" in status or status.startswith("Failed"):
            break
        time.sleep(0.5)
    assert "segmented in" in text(driver, "us-status"), (text(driver, "us-status"), text(driver, "us-error"))
    final = text(driver, "us-progress-text")
    if final and stages[-1:] != [final]:
        stages.append(final)
    wait(driver, lambda d: len(voxels(d)) > 0)
    return stages


def test_segment_matches_cli_then_paint_and_undo(server, cli_labels, tmp_path):
    driver = browser()
    try:
        open_page(driver, server)
        open_sample(driver)
        tasks = choose_tasks(driver)
        assert tasks == ["hippocampus_anterior", "hippocampus_posterior"]
        stages = segment(driver)
        assert "Running the network" in stages and stages[-1] == "Done", stages
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        time.sleep(2)  # the views' next frames
        driver.save_screenshot(str(ARTIFACTS / "web-segmented.png"))

        # Save as NIfTI and download it: the same voxels as the CLI
        Select(driver.find_element(By.ID, "us-save-format")).select_by_value("nifti")
        driver.find_element(By.ID, "us-save").click()
        link = wait(driver, lambda d: d.find_elements(By.ID, "us-download"))[0]
        target = tmp_path / "web_seg.nii.gz"
        target.write_bytes(urllib.request.urlopen(link.get_attribute("href"), timeout=60).read())
        web_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(target)))
        assert web_labels.shape == cli_labels.shape
        assert np.array_equal(web_labels, cli_labels), f"{int((web_labels != cli_labels).sum())} voxels differ"
        counts = voxels(driver)
        assert counts == {"hippocampus_anterior": int((cli_labels == 1).sum()),
                          "hippocampus_posterior": int((cli_labels == 2).sum())}

        # Paint a stroke in the axial view: the active segment's voxel count changes; Undo restores it
        driver.find_element(By.ID, "us-paint").click()
        wait(driver, lambda d: "flat" in d.find_element(By.ID, "us-paint").get_attribute("class"))
        view = driver.find_elements(By.CSS_SELECTOR, "img.image-display-area")[0]
        stroke(driver, view)
        changed = wait(driver, lambda d: voxels(d) != counts and voxels(d), 30)
        active = "hippocampus_anterior"
        assert changed[active] > counts[active], (counts, changed)
        assert changed["hippocampus_posterior"] == counts["hippocampus_posterior"]
        wait(driver, lambda d: d.find_element(By.ID, "us-undo").is_enabled())
        driver.find_element(By.ID, "us-undo").click()
        wait(driver, lambda d: voxels(d) == counts, 30)
        wait(driver, lambda d: d.find_element(By.ID, "us-redo").is_enabled())
        driver.find_element(By.ID, "us-redo").click()
        wait(driver, lambda d: voxels(d) == changed, 30)
        # Erase along the same path: fewer voxels; Undo puts them back
        driver.find_element(By.ID, "us-erase").click()
        wait(driver, lambda d: "flat" in d.find_element(By.ID, "us-erase").get_attribute("class"))
        stroke(driver, view)
        erased = wait(driver, lambda d: voxels(d) != changed and voxels(d), 30)
        assert erased[active] < changed[active], (changed, erased)
        driver.find_element(By.ID, "us-undo").click()
        wait(driver, lambda d: voxels(d) == changed, 30)
        # Undo twice: the stroke, then the run (its segments leave the scene)
        driver.find_element(By.ID, "us-undo").click()
        wait(driver, lambda d: voxels(d) == counts, 30)
        driver.find_element(By.ID, "us-undo").click()
        wait(driver, lambda d: voxels(d) == {}, 30)
        assert text(driver, "us-status").startswith("Undone")
    finally:
        driver.quit()


def test_bad_uploads_are_refused_and_sessions_keep_their_scenes(server, tmp_path):
    first, second = browser(), browser()
    try:
        open_page(first, server)
        open_page(second, server)
        assert first.current_url != second.current_url  # two sessions, two processes
        upload = first.find_element(By.ID, "us-upload-input")
        notes = tmp_path / "notes.txt"
        notes.write_text("not an image")
        upload.send_keys(str(notes))
        wait(first, lambda d: "is not an image this server reads" in text(d, "us-upload-client"))
        fake = tmp_path / "fake.nii.gz"
        fake.write_bytes(b"this is not a NIfTI file at all" * 10)
        first.find_element(By.ID, "us-upload-input").send_keys(str(fake))
        wait(first, lambda d: "cannot read 'fake.nii.gz' as an image" in text(d, "us-upload-client"))
        big = tmp_path / "big.nii.gz"
        big.write_bytes(os.urandom(3 * 1024 * 1024))
        first.find_element(By.ID, "us-upload-input").send_keys(str(big))
        wait(first, lambda d: "larger than this server's upload limit of 2.0 MB" in text(d, "us-upload-client"))
        assert text(first, "us-volume") == "No image open"

        # the server keeps serving: a good upload opens
        first.find_element(By.ID, "us-upload-input").send_keys(str(SAMPLE))
        wait(first, lambda d: f"Opened '{SAMPLE.name}'" in text(d, "us-status"))
        assert text(first, "us-volume") == f"Open: {SAMPLE.name}"

        # the other session's scene has nothing of it
        time.sleep(1)
        assert text(second, "us-volume") == "No image open"
        assert text(second, "us-status") == "Open an image to start."
        open_sample(second)
        choose_tasks(second)
        second.find_element(By.ID, "us-segment").click()
        wait(second, lambda d: d.find_element(By.ID, "us-cancel").is_enabled())
        second.find_element(By.ID, "us-cancel").click()
        wait(second, lambda d: "cancel" in text(d, "us-status").lower(), 60)
        assert voxels(second) == {} and voxels(first) == {}
    finally:
        first.quit()
        second.quit()


def test_a_session_beyond_the_limit_is_told_to_wait(tmp_path):
    process, url = start_server(tmp_path, "--max-sessions", "1", "--idle-timeout", "30")
    try:
        first = urllib.request.urlopen(url, timeout=120)
        assert "/s/" in first.geturl()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=60)
        assert refused.value.code == 503
        page = refused.value.read().decode()
        assert "busy: please wait" in page and "--max-sessions" in page
    finally:
        stop(process)


def test_other_addresses_need_a_token():
    run = subprocess.run([sys.executable, "-m", "UniversalSegLib.cli", "serve", "--host", "0.0.0.0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--token" in run.stderr
