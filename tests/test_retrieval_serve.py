"""``ctiir serve``: a real server on 127.0.0.1 (a free port), called over HTTP, and its page driven in
headless Chromium. Skips cleanly without the ``serve`` extra, httpx, playwright or a Chromium binary."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("litserve")
httpx = pytest.importorskip("httpx")

from ctiir.retrieval.indexer import build_index  # noqa: E402
from tests.test_retrieval_index import make_gallery, save_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve")
    ckpt = save_checkpoint(root / "model.ckpt")
    gallery = make_gallery(root / "gallery")
    build_index(ckpt, root / "index", images=gallery, progress=False, trainer_kwargs={"accelerator": "cpu"})
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctiir.cli", "serve", "--ckpt", str(ckpt), "--index", str(root / "index"),
         "--port", str(port), "--max_k", "6", "--max_upload_mb", "0.5", "--device=cpu"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ctiir serve exited with {proc.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ctiir serve did not get ready in 180 s:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, gallery=gallery, root=root)
    finally:
        # LitServe runs its HTTP server and its model in child processes: end the whole group we started
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        log.close()


def test_search_by_multipart_and_by_json(server) -> None:
    image = (server.gallery / "b/3.png").read_bytes()
    reply = httpx.post(f"{server.url}/search", files={"image": ("q.png", image, "image/png")}, data={"text": "is red", "k": "4"}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    assert body["weights"]["image"] + body["weights"]["text"] == pytest.approx(1.0, abs=1e-4)
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    reply = httpx.post(f"{server.url}/search", json={"image": base64.b64encode(image).decode(), "k": 2}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["results"][0]["id"] == "b/3.png" and body["weights"] is None and len(body["results"]) == 2
    text_only = httpx.post(f"{server.url}/search", json={"text": "a green shape"}, timeout=60).json()
    assert len(text_only["results"]) == 6  # k defaults to min(10, --max_k)


def test_gallery_images_and_the_page(server) -> None:
    reply = httpx.get(f"{server.url}/images/b/c/4.webp", timeout=30)
    assert reply.status_code == 200 and reply.content == (server.gallery / "b/c/4.webp").read_bytes()
    missing = httpx.get(f"{server.url}/images/nope.png", timeout=30)
    assert missing.status_code == 404 and "nope.png" in missing.json()["detail"]
    page = httpx.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and "<form" in page.text


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"k": 3}}, 400, "give an image, a text, or both"),
        ({"data": {"text": "", "k": "3"}, "files": {"image": ("empty.png", b"", "image/png")}}, 400, "give an image, a text, or both"),
        ({"json": {"text": "red", "image": base64.b64encode(b"not an image").decode()}}, 400, "not a readable image"),
        ({"json": {"text": "red", "image": "@@not base64@@"}}, 400, "not valid base64"),
        ({"json": {"text": "red", "k": 0}}, 400, "k must be from 1 to 6"),
        ({"json": {"text": "red", "k": 7}}, 400, "k must be from 1 to 6"),
        ({"data": {"text": "red", "k": "many"}}, 400, "k must be an integer"),
        ({"files": {"image": ("big.png", b"0" * 600_000, "image/png")}}, 413, "limit is 0.5 MB"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "multipart/form-data"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(server, kwargs, status: int, message: str) -> None:
    reply = httpx.post(f"{server.url}/search", timeout=60, **kwargs)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["detail"]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (apt-get install chromium)")
def test_the_page_shows_results_in_a_real_browser(server, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.set_input_files("input[name=image]", str(server.gallery / "a/0.png"))
            page.fill("input[name=text]", "is blue")
            page.fill("input[name=k]", "5")
            page.click("button[type=submit]")
            page.wait_for_function("document.querySelectorAll('figure.result').length === 5", timeout=60_000)
            page.wait_for_function(
                "[...document.querySelectorAll('figure.result img')].every(i => i.complete && i.naturalWidth > 0)", timeout=30_000
            )
            captions = page.locator("figure.result figcaption").all_inner_texts()
            assert captions[0].startswith("#1 ") and len(captions) == 5
            assert "w_img" in page.inner_text("#status")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            broken = tmp_path / "broken.png"
            broken.write_bytes(b"not an image")  # the server's 400 message is shown, not a blank page
            page.set_input_files("input[name=image]", str(broken))
            page.click("button[type=submit]")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('error')", timeout=60_000)
            assert "not a readable image" in page.inner_text("#status")
            assert page.locator("figure.result").count() == 0
        finally:
            browser.close()


def test_serve_refuses_an_index_built_by_another_checkpoint(server, tmp_path: Path, capsys) -> None:
    from ctiir.retrieval.serve import serve_main

    other = save_checkpoint(tmp_path / "other.ckpt", seed=1)
    index = ["--index", str(server.root / "index"), "--device=cpu"]
    assert serve_main(["--ckpt", str(other), *index, "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ctiir serve: index ") and str((server.root / "model.ckpt").resolve()) in err and f"not from {other}" in err, err
    for extra, named in [
        (["--port", "80"], "--port 80 is out of range"),
        (["--max_k", "0"], "--max_k must be >= 1"),
        (["--max_upload_mb", "0"], "--max_upload_mb must be > 0"),
        (["--accelerator", "cpu"], "--accelerator"),  # the device option is --device, as in every command
        (["--device", "tpu"], "'tpu'"),
    ]:
        assert serve_main(["--ckpt", str(other), *index, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("ctiir serve: error:") and named in err, err
