"""``universalseg serve`` under load: N browser sessions segmenting the sample at once, and one more told to wait.

Run from the repository root (needs the web extra and Debian's chromium + chromium-driver: ``make web``)::

    .venv/bin/python benchmarks/web_load.py [--sessions 4] [--limit-gb 6]

Starts ``universalseg serve --max-sessions N --data samples`` on a free loopback port, opens N headless Chromium
sessions at once, and in each: opens ``samples/hippo_sample.nii.gz``, picks MR-T1 and both hippocampus tasks,
presses Segment, waits for the end, saves NIfTI and downloads it. Each download must be voxel for voxel the CLI's
label map. Meanwhile the server's process tree (front, session processes, their engine workers; not the browsers)
is sampled every 0.5 s: the peak of the summed RSS (an upper bound: shared pages count once per process) and of the
summed PSS (shared pages split) are printed and checked against ``--limit-gb``. Then one more visitor asks for a
session and must get the "please wait" page (HTTP 503). Exit status 0 when everything holds.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "hippo_sample.nii.gz"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def memory(pid: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes of ``pid``'s process tree."""
    rss = pss = 0
    for process in tree(pid):
        try:
            for line in Path(f"/proc/{process}/smaps_rollup").read_text(encoding="utf-8").splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.peak_pss, self.running = pid, 0, 0, True

    def run(self) -> None:
        while self.running:
            rss, pss = memory(self.pid)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            time.sleep(0.5)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,800"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or ""), options=options)


def js_text(driver, element_id: str) -> str:
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.innerText : ''",
                                 element_id).strip()


def one_session(url: str, folder: Path, reference: np.ndarray, results: dict, index: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    started = time.monotonic()
    driver = browser()
    try:
        def until(condition, timeout=600):
            return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: condition(d))

        driver.get(url)
        until(lambda d: d.find_elements(By.ID, "us-data-file"))
        Select(driver.find_element(By.ID, "us-data-file")).select_by_visible_text(SAMPLE.name)
        time.sleep(0.5)
        driver.find_element(By.ID, "us-open").click()
        until(lambda d: "Opened" in js_text(d, "us-status"))
        Select(driver.find_element(By.ID, "us-modality")).select_by_value("MR-T1")
        time.sleep(1)
        for element_id in ("us-task-hippocampus_anterior", "us-task-hippocampus_posterior"):
            driver.execute_script("const e = document.getElementById(arguments[0]); if (!e.checked) e.click();",
                                  element_id)
        until(lambda d: d.find_element(By.ID, "us-segment").is_enabled())
        pressed = time.monotonic()
        driver.find_element(By.ID, "us-segment").click()
        until(lambda d: "segmented in" in js_text(d, "us-status") or js_text(d, "us-status").startswith("Failed"))
        segmented = time.monotonic()
        status = js_text(driver, "us-status")
        driver.find_element(By.ID, "us-save").click()
        link = until(lambda d: d.find_elements(By.ID, "us-download"))[0]
        target = folder / f"web_{index}.nii.gz"
        target.write_bytes(urllib.request.urlopen(link.get_attribute("href"), timeout=120).read())
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(target)))
        results[index] = {"status": status, "identical": bool(np.array_equal(labels, reference)),
                          "segment_s": segmented - pressed, "total_s": time.monotonic() - started}
    except Exception as err:  # noqa: BLE001 - reported in the table
        results[index] = {"status": f"error: {type(err).__name__}: {err}", "identical": False,
                          "segment_s": float("nan"), "total_s": time.monotonic() - started}
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--limit-gb", type=float, default=6.0)
    args = parser.parse_args(argv)
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("chromium and chromium-driver are needed: make web", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="web-load-"))
    subprocess.run([sys.executable, "-m", "UniversalSegLib.cli", "segment", str(SAMPLE), "-o",
                    str(folder / "cli.nii.gz"), "--group", "Hippocampus", "--modality", "MR-T1", "--quiet"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "cli.nii.gz")))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "UniversalSegLib.cli", "serve", "--port", str(port),
                               "--data", str(REPO / "samples"), "--max-sessions", str(args.sessions),
                               "--idle-timeout", "60"], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    sampler = Sampler(server.pid)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        idle_rss, idle_pss = memory(server.pid)
        sampler.start()
        results: dict[int, dict] = {}
        started = time.monotonic()
        threads = [threading.Thread(target=one_session, args=(url, folder, reference, results, i))
                   for i in range(args.sessions)]
        for thread in threads:
            thread.start()
        # the extra visitor, while the sessions are live (each started within the first seconds)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = urllib.request.urlopen(url + "status", timeout=30).read().decode()
            if f'"sessions": {args.sessions}' in status:
                break
            time.sleep(1)
        try:
            urllib.request.urlopen(url, timeout=60)
            extra = "got a session (WRONG)"
        except urllib.error.HTTPError as err:
            page = err.read().decode()
            extra = f"HTTP {err.code}: " + ("told to wait" if "please wait" in page else page[:120])
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
    finally:
        sampler.running = False
        server.terminate()
        server.wait(30)
    print(f"{args.sessions} concurrent browser sessions on {SAMPLE.name} (MR-T1, 2 hippocampus tasks), "
          f"server idle {idle_rss / 2**20:.0f} MiB RSS")
    print(f"{'session':>7}  {'segment s':>9}  {'total s':>7}  identical  status")
    for i in range(args.sessions):
        r = results.get(i, {"status": "no result", "identical": False, "segment_s": float("nan"), "total_s": 0})
        print(f"{i:>7}  {r['segment_s']:9.1f}  {r['total_s']:7.1f}  {str(r['identical']):>9}  {r['status']}")
    print(f"wall {wall:.1f} s; peak server memory {sampler.peak_rss / 2**30:.2f} GiB RSS summed "
          f"({sampler.peak_pss / 2**30:.2f} GiB PSS); limit {args.limit_gb} GB")
    print(f"session {args.sessions + 1}: {extra}")
    ok = (all(results.get(i, {}).get("identical") for i in range(args.sessions))
          and sampler.peak_rss <= args.limit_gb * 1e9 and "told to wait" in extra)
    print("OK" if ok else "FAILED")
    shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
