"""`lvns report`: the data behind the page (PCA, kNN, top 10, generation choice, errors), a real toy
run, and the page itself in headless chromium (skipped when chromium is not installed).

The browser test drives chromium over ``--remote-debugging-pipe`` (the DevTools protocol on fds 3/4,
NUL-separated JSON), so it needs nothing beyond the standard library.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import tempfile
import time
import tomllib

import numpy as np
import pytest
import soundfile as sf

from lvns_jax import cli, report
from lvns_jax.errors import LvnsError
from lvns_jax.logs import save_generation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


# ------------------------------------------------------------------ a synthetic run directory
def fake_run(path, n=24, d=6, gens=(0, 5, 10), k=4, born=True, rave="toy", seconds=0.4, records=11, save=True):
    """A run directory like `lvns run` writes, made directly with logs.save_generation: audible
    0.4 s sine tones (so the browser test can hear playback start), containers sorted most sparse first."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.toml"), "w") as f:
        f.write(f'# lvns-jax resolved configuration\nseed = 0\ncontainer_size = {n}\nk = {k}\n'
                f'rave = "{rave}"\nvggish = "toy"\nsave_every = 5\n')
    rng = np.random.default_rng(0)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for g in range(records):
            rec = {"generation": g, "sparseness_mean": 0.4 + 0.01 * g, "sparseness_min": 0.3 + 0.01 * g,
                   "sparseness_max": 0.6 + 0.01 * g, "sparseness_median": 0.4 + 0.01 * g}
            if g:
                rec.update(children_sparseness_mean=0.35 + 0.01 * g, children_sparseness_max=0.5 + 0.01 * g)
            f.write(json.dumps(rec) + "\n")
    t = np.arange(int(seconds * SR)) / SR
    if save:
        for g in gens:
            emb = rng.normal(size=(n, d)).astype(np.float32) + 0.1 * g
            sp = np.sort(rng.uniform(0.3, 0.7, n))[::-1].astype(np.float32)
            audio = np.stack([0.3 * np.sin(2 * np.pi * (220 + 20 * i) * t) for i in range(n)])
            save_generation(os.path.join(path, "audio", f"gen_{g:04d}"), audio, SR,
                            rng.normal(size=(n, 3, 4)), sp, emb, born=rng.integers(0, g + 1, n) if born else None)
    return path


# ------------------------------------------------------------------ unit tests: pure helpers
def test_parse_generations():
    assert report.parse_generations(None) is None
    assert report.parse_generations("0,10,last") == [0, 10, "last"]
    assert report.parse_generations(" first , 5 ,") == ["first", 5]
    for bad in ("x", "1,,a", "", ",", "-3"):
        with pytest.raises(LvnsError, match="--generations"):
            report.parse_generations(bad)


def test_select_generations():
    saved = [0, 5, 10, 15, 20]
    assert report.select_generations(saved, None) == saved
    assert report.select_generations(saved, [0, "last"]) == [0, 20]
    assert report.select_generations(saved, ["last", 10, 20, "first"]) == [0, 10, 20]  # sorted, no duplicates
    assert report.select_generations(list(range(0, 1000, 10)), None, max_auto=5) == [0, 250, 500, 740, 990]
    assert report.select_generations([], None) == []
    with pytest.raises(LvnsError, match=r"generation\(s\) 7 not saved; saved: 0, 5, 10, 15, 20"):
        report.select_generations(saved, [7, "last"])
    with pytest.raises(LvnsError, match="saved no generation"):
        report.select_generations([], ["last"])


def brute_knn(x, k):
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1)


def test_knn_lists_match_brute_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16))
    idx, dist = report.knn_lists(x, 7, block=64)  # several blocks
    bidx, bdist = brute_knn(x, 7)
    np.testing.assert_array_equal(idx, bidx)
    np.testing.assert_allclose(dist, bdist, rtol=1e-12)
    # a subset of queries gives the same rows; k is capped at N - 1
    q = np.array([5, 0, 299])
    qi, qd = report.knn_lists(x, 7, queries=q)
    np.testing.assert_array_equal(qi, bidx[q])
    assert report.knn_lists(x[:4], 10)[0].shape == (4, 3)
    # non-finite members are nobody's neighbour and have none themselves
    bad = x[:20].copy()
    bad[3] = np.nan
    bi, bd = report.knn_lists(bad, 5)
    assert not np.any(bi == 3)
    assert np.all(bi[3] == -1) and np.all(np.isinf(bd[3]))
    ok = np.delete(np.arange(20), 3)
    ri, rd = brute_knn(bad[ok], 5)
    np.testing.assert_array_equal(bi[ok], ok[ri])
    np.testing.assert_allclose(bd[ok], rd, rtol=1e-12)


def test_top_novel_order_and_subsample():
    sp = np.array([0.2, 0.9, np.nan, 0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.6, 0.4, 0.05])
    top = report.top_novel(sp)
    np.testing.assert_array_equal(top, [1, 4, 8, 6, 9, 3, 10, 7, 0, 5])  # ties by index, NaN last
    assert len(report.top_novel(sp[:3])) == 3
    np.testing.assert_array_equal(report.subsample(sp, 100), np.arange(len(sp)))
    big = np.random.default_rng(2).uniform(size=5000)
    pick = report.subsample(big, 2000)
    assert len(pick) == 2000 and len(np.unique(pick)) == 2000 and np.argmax(big) in pick
    # an even spread over the ranking: the drawn sparseness quantiles follow the container's
    np.testing.assert_allclose(np.quantile(big[pick], [0.1, 0.5, 0.9]), np.quantile(big, [0.1, 0.5, 0.9]), atol=0.01)


# ------------------------------------------------------------------ the page data of a run
def test_build_data_of_a_synthetic_run(tmp_path):
    run = fake_run(str(tmp_path / "run"))
    out = os.path.join(run, "report.html")
    data = report.build_data(run, out, [0, "last"])
    assert [g["generation"] for g in data["generations"]] == [0, 10]
    assert data["k"] == 4 and data["saved_generations"] == [0, 5, 10]
    assert data["untrained"].startswith("UNTRAINED MODELS:") and "rave = 'toy'" in data["untrained"]
    assert data["curves"]["generation"] == list(range(11))
    assert data["curves"]["children_sparseness_mean"][0] is None
    # one PCA basis over both generations: its projections, 2-D, one row per member
    embs = [np.load(os.path.join(run, "audio", f"gen_{g:04d}", "embeddings.npy")) for g in (0, 10)]
    proj, _, ratio = report.pca_2d(np.concatenate(embs))
    for g, p in zip(data["generations"], (proj[:24], proj[24:])):
        assert np.asarray(g["xy"]).shape == (24, 2)
        np.testing.assert_allclose(np.asarray(g["xy"], float), p, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data["pca_ratio"], ratio, rtol=1e-3)
    # kNN lists in embedding space vs brute force, per generation
    for g, e in zip(data["generations"], embs):
        bidx, bdist = brute_knn(e.astype(np.float64), 4)
        np.testing.assert_array_equal(g["knn"], bidx)
        np.testing.assert_allclose(g["knn_dist"], bdist, rtol=1e-4)
        sp = np.load(os.path.join(run, "audio", f"gen_{g['generation']:04d}", "sparseness.npy"))
        assert g["top"] == list(np.argsort(-sp, kind="stable")[:10])
        born = np.load(os.path.join(run, "audio", f"gen_{g['generation']:04d}", "born.npy"))
        assert g["born"] == born.tolist()
    # audio referenced relative to the page
    assert data["generations"][1]["audio"][3] == "audio/gen_0010/003.wav"
    assert data["audio_mode"] == "relative"


def test_k_is_the_runs_k_capped(tmp_path):
    run = fake_run(str(tmp_path / "k30"), n=40, gens=(0,), k=30, seconds=0.01)
    data = report.build_data(run, os.path.join(run, "report.html"))
    assert data["k"] == report.KNN_CAP == 10 and data["k_config"] == 30
    assert np.asarray(data["generations"][0]["knn"]).shape == (40, 10)
    small = fake_run(str(tmp_path / "k30small"), n=6, gens=(0,), k=30, seconds=0.01)
    assert np.asarray(report.build_data(small, "x.html")["generations"][0]["knn"]).shape == (6, 5)


def test_audio_paths_relative_to_another_out_folder_and_embedded(tmp_path):
    run = fake_run(str(tmp_path / "runs" / "my run"), gens=(0,), n=5, seconds=0.05)
    out = str(tmp_path / "pages" / "r.html")
    path, data = report.write_report(run, out)
    ref = data["generations"][0]["audio"][2]
    assert ref == "../runs/my%20run/audio/gen_0000/002.wav"
    from urllib.parse import unquote

    assert os.path.isfile(os.path.join(os.path.dirname(path), unquote(ref)))
    _, emb = report.write_report(run, str(tmp_path / "e.html"), embed_audio=True)
    uri = emb["generations"][0]["audio"][0]
    assert uri.startswith("data:audio/wav;base64,")
    with open(os.path.join(run, "audio", "gen_0000", "000.wav"), "rb") as f:
        assert base64.b64decode(uri.split(",", 1)[1]) == f.read()


def test_page_is_self_contained_and_escapes_the_data(tmp_path):
    run = fake_run(str(tmp_path / "r<b>&"), gens=(0,), n=6, seconds=0.05)
    with open(os.path.join(run, "config.toml"), "a") as f:
        f.write("# </script><!-- a comment that must not end the data -->\n")
    path, _ = report.write_report(run)
    html = open(path, encoding="utf-8").read()
    assert "__LVNS_DATA__" not in html and html.count("</script>") == 2
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no CDN / network reference
    blob = re.search(r'<script type="application/json" id="lvns-data">(.*?)</script>', html, re.S).group(1)
    data = json.loads(blob)
    assert data["title"] == "r<b>&" and data["config_text"].endswith("# </script><!-- a comment that must not end the data -->\n")
    assert "<title>LVNS report: r&lt;b&gt;&amp;</title>" in html


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """A container of 5,000 (one saved generation, 5): more than the page draws."""
    return fake_run(str(tmp_path_factory.mktemp("big") / "big"), n=5000, d=8, gens=(5,), seconds=0.002, born=False)


def test_large_container_is_subsampled(big_run):
    run = big_run
    t0 = time.perf_counter()
    data = report.build_data(run, os.path.join(run, "report.html"))
    assert time.perf_counter() - t0 < 20
    g = data["generations"][-1]
    assert g["size"] == 5000 and len(g["shown"]) == 2000 == len(g["xy"]) == len(g["knn"])
    assert len(g["sparseness"]) == len(g["audio"]) == 5000 and g["born"] is None
    # the neighbour lists are over the whole container, not only the drawn points
    e = np.load(os.path.join(run, "audio", "gen_0005", "embeddings.npy")).astype(np.float64)
    j = 123
    i = g["shown"][j]
    d = np.sqrt(((e - e[i]) ** 2).sum(1))
    d[i] = np.inf
    np.testing.assert_array_equal(g["knn"][j], np.argsort(d, kind="stable")[:4])


def test_errors_and_no_saved_generations(tmp_path, capsys):
    with pytest.raises(LvnsError, match="no such directory"):
        report.build_data(str(tmp_path / "nope"), "x.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LvnsError, match="not a run directory"):
        report.build_data(str(tmp_path / "empty"), "x.html")
    run = fake_run(str(tmp_path / "nosave"), save=False, rave="weights/real")
    with pytest.raises(LvnsError, match="saved no generation"):
        report.build_data(run, "x.html", ["last"])
    # the CLI: one line on stderr, exit 2
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lvns: error:") and "not a run directory" in err
    assert cli.main(["report", run, "--generations", "3"]) == 2
    assert "--generations" in capsys.readouterr().err
    # no saved generation: still a page, with the curves, saying no audio was saved
    assert cli.main(["report", run]) == 0
    assert "no saved generations" in capsys.readouterr().out
    data = report.build_data(run, os.path.join(run, "report.html"))
    assert data["generations"] == [] and len(data["curves"]["generation"]) == 11
    assert data["untrained"] is not None and "rave" not in data["untrained"]  # vggish = toy only
    assert "No audio was saved by this run" in open(os.path.join(run, "report.html")).read()


def test_trained_weights_dirs_have_no_warning(tmp_path):
    for name, trained in (("good", True), ("bad", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps({"trained": trained}))
    cfg = {"rave": str(tmp_path / "good"), "vggish": str(tmp_path / "good")}
    assert report.untrained_notice(str(tmp_path), cfg) is None
    assert "trained = false" in report.untrained_notice(str(tmp_path), {**cfg, "vggish": str(tmp_path / "bad")})
    # the line `lvns run` logged wins
    (tmp_path / "run.log").write_text("x WARNING UNTRAINED MODELS: TOY decoder. Sounds ...\n")
    assert report.untrained_notice(str(tmp_path), cfg) == "UNTRAINED MODELS: TOY decoder. Sounds ..."


def test_template_is_package_data():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert "*.html" in tomllib.load(f)["tool"]["setuptools"]["package-data"]["lvns_jax.report"]


def test_report_of_a_real_toy_run(tmp_path):
    from lvns_jax import config, runner

    c = config.from_dict(dict(rave="toy", vggish="toy", container_size=12, breed_size=6, k=3, latent_channels=3,
                              latent_frames=8, chunk_size=6, generations=4, scan_length=2, save_every=2,
                              audio_every=0, checkpoint_every=0, progress=False))
    out = str(tmp_path / "toy")
    runner.run(c, out)
    assert cli.main(["report", out, "--generations", "0,last"]) == 0
    data = report.build_data(out, os.path.join(out, "report.html"), [0, "last"])
    assert [g["generation"] for g in data["generations"]] == [0, 4]
    assert all(len(g["xy"]) == 12 and len(g["knn"][0]) == 3 for g in data["generations"])
    assert data["untrained"] and "TOY" in data["untrained"]
    assert os.path.isfile(os.path.join(out, "audio", "gen_0004", data["generations"][1]["wav_names"][0]))


# ------------------------------------------------------------------ the page in a real browser
def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Chromium:
    """Headless chromium over ``--remote-debugging-pipe``: commands on its fd 3, answers on fd 4."""

    def __init__(self, exe: str):
        import fcntl

        self.profile = tempfile.mkdtemp(prefix="lvns-chromium-")
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()
        # the child's ends, moved above 20 so that dup2 onto 3 and 4 cannot clobber one with the other
        a = fcntl.fcntl(to_child, fcntl.F_DUPFD_CLOEXEC, 20)
        b = fcntl.fcntl(from_child, fcntl.F_DUPFD_CLOEXEC, 20)
        for fd in (to_child, from_child):
            os.close(fd)
        args = [exe, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={self.profile}", "about:blank"]
        # posix_spawn, not fork + preexec_fn: safe in a process where JAX threads already run
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_DUP2, a, 3), (os.POSIX_SPAWN_DUP2, b, 4)]
        try:
            self.pid = os.posix_spawn(exe, args, os.environ, file_actions=actions, setpgroup=0)
        finally:
            os.close(a)
            os.close(b)
        self.status = None
        self._buf, self._id, self.events = b"", 0, []

    def poll(self):
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def _recv(self, timeout: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], max(timeout, 0.01))
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                time.sleep(0.2)
                raise RuntimeError(f"chromium exited (code {self.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 20):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._recv(deadline - time.monotonic())
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        deadline = time.monotonic() + 10
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.poll() is None:  # the browser and the helpers it started (its own process group)
            import signal

            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, browser: Chromium, url: str, width: int = 1200, height: int = 1400):
        self.b = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.sid = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for m in ("Page.enable", "Runtime.enable"):
            self.cmd(m)
        self.cmd("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.cmd("Page.navigate", {"url": url})
        self.wait_for("!!(window.lvnsReport && window.lvnsReport.ready)")

    def cmd(self, method, params=None):
        return self.b.call(method, params, session=self.sid)

    def js(self, expr):
        r = self.cmd("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise AssertionError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expr, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(expr):
                return
            time.sleep(0.05)
        errors = [e for e in self.b.events if e.get("method") == "Runtime.exceptionThrown"]
        raise AssertionError(f"timed out waiting for {expr}; page errors: {errors[:3]}")

    def click(self, x, y):
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.cmd("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def screenshot(self, path):
        png = self.cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(png))


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium): the browser test of `lvns report` is skipped")
    b = Chromium(exe)
    try:
        version = b.call("Browser.getVersion", timeout=60)["product"]
    except Exception as e:  # e.g. a snap stub or a wrapper that cannot start headless here
        b.close()
        pytest.skip(f"{exe} did not start headless ({type(e).__name__}: {e}): the browser test is skipped")
    print("browser:", version)
    yield b
    b.close()


def click_member(page, index):
    page.js("document.getElementById('map').scrollIntoView({block: 'center'})")
    pos = page.js(f"(() => {{ const r = lvnsReport.canvasRect(), p = lvnsReport.pointPosition({index});"
                  " return p && {x: r.x + p.x, y: r.y + p.y}; })()")
    assert pos, f"member {index} is not drawn"
    page.click(pos["x"], pos["y"])


def test_report_in_headless_chromium(browser, tmp_path):
    run = fake_run(str(tmp_path / "toy"), n=30, gens=(0, 5, 10))
    path, data = report.write_report(run, generations=None)
    page = Page(browser, "file://" + os.path.abspath(path))
    # one drawn point per container member, in every generation
    for g in (10, 5, 0):
        assert page.js(f"lvnsReport.selectGeneration({g})") >= 0
        assert page.js("lvnsReport.pointCount()") == page.js("lvnsReport.containerSize()") == 30
    assert page.js("document.querySelectorAll('#gen-tabs button').length") == 3
    assert page.js("document.querySelectorAll('#novel-table audio').length") == 10
    assert page.js("document.querySelectorAll('#curves path[data-series]').length") == 6
    assert "UNTRAINED" in page.js("document.getElementById('untrained').textContent")
    # a real mouse click on a point plays its WAV and lists its k nearest neighbours (those computed here)
    page.js("lvnsReport.selectGeneration(10)")
    member = 7
    click_member(page, member)
    page.wait_for("lvnsReport.playEvents.length > 0 || lvnsReport.lastError !== null")
    assert page.js("lvnsReport.lastError") is None
    ev = page.js("lvnsReport.playEvents[0]")
    assert ev["member"] == member and ev["generation"] == 10 and ev["src"].endswith("audio/gen_0010/007.wav")
    assert page.js("document.getElementById('player').paused") is False
    page.wait_for("document.getElementById('player').currentTime > 0")
    knn = data["generations"][-1]["knn"][data["generations"][-1]["shown"].index(member)]
    assert page.js("lvnsReport.selected()") == member and page.js("lvnsReport.neighbours()") == knn
    assert page.js("[...document.querySelectorAll('#neighbours tr[data-member]')].map(r => +r.dataset.member)") == knn
    assert page.js("document.querySelectorAll('#neighbours audio').length") == len(knn)
    # colour by birth generation (born.npy saved here) and back
    page.js("document.getElementById('colour-born').click()")
    assert page.js("document.getElementById('colour-born').checked") is True
    assert page.js("document.getElementById('born-note').textContent") == ""
    page.js("window.scrollTo(0, 0)")
    shot = str(tmp_path / "report.png")
    page.screenshot(shot)
    assert os.path.getsize(shot) > 10_000
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("LVNS_REPORT_SCREENSHOT"):  # to refresh experiments/report/report_toy.png
        shutil.copy(shot, os.environ["LVNS_REPORT_SCREENSHOT"])
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    assert not errors, errors[:3]


def test_large_and_empty_reports_in_headless_chromium(browser, big_run, tmp_path):
    path, _ = report.write_report(big_run, str(tmp_path / "big.html"))
    page = Page(browser, "file://" + os.path.abspath(path))
    assert page.js("lvnsReport.pointCount()") == 2000
    assert "2000 of 5000 drawn" in page.js("document.getElementById('map-note').textContent")
    assert page.js("document.getElementById('born-note').textContent") == "birth generation not saved by this run"
    assert page.js("document.getElementById('colour-born').disabled") is True
    t0 = time.perf_counter()
    page.js("for (let i = 0; i < 5; i++) lvnsReport.selectGeneration(5); 1")  # 5 full redraws
    assert time.perf_counter() - t0 < 5
    # --embed-audio: the sounds play from the page itself (data: URIs), wherever the page is
    small = fake_run(str(tmp_path / "small"), n=6, gens=(0,), seconds=0.3)
    path, _ = report.write_report(small, str(tmp_path / "elsewhere" / "page.html"), embed_audio=True)
    page = Page(browser, "file://" + os.path.abspath(path))
    assert page.js("lvnsReport.pointCount()") == 6
    click_member(page, 2)
    page.wait_for("lvnsReport.playEvents.length > 0 || lvnsReport.lastError !== null")
    assert page.js("lvnsReport.lastError") is None
    assert page.js("lvnsReport.playEvents[0].src").startswith("data:audio/wav;base64,")
    nosave = fake_run(str(tmp_path / "nosave"), save=False)
    path, _ = report.write_report(nosave)
    page = Page(browser, "file://" + os.path.abspath(path))
    assert "No audio was saved" in page.js("document.getElementById('audio-note').textContent")
    assert page.js("document.querySelectorAll('#curves path[data-series]').length") == 6
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    assert not errors, errors[:3]
