"""The web playground in a real headless Chromium (Debian's, driven by Playwright): key and secret
entered once, a prompt generated with live progress, the gallery, Stop, a wrong secret, and no
request leaving the server. Screenshots at desktop and phone sizes go to build/test-artifacts/."""

import os
import shutil
from pathlib import Path

import pytest

from fluxhost.signing import KeyMode
from tests.helpers import LiveServer

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("FLUXHOST_TEST_ARTIFACTS", Path(__file__).parent.parent / "build" / "test-artifacts"))
# Headless, and quiet: no sandbox as root, and none of Chromium's own calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)"),
              pytest.mark.slow]
expect = sync_api.expect


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """A fresh page on the server (its own storage), recording every address it reaches."""
    contexts = []

    def open_at(base_url: str, width: int = 1280, height: int = 860):
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.reached = []
        page.on("request", lambda request: page.reached.append(request.url))
        page.on("websocket", lambda socket: page.reached.append(socket.url))
        page.goto(f"{base_url}/")
        return page

    yield open_at
    for context in contexts:
        context.close()


def sign_in(page, api_key: str, api_secret: str = "") -> None:
    page.get_by_label("API key").fill(api_key)
    page.get_by_label("API secret").fill(api_secret)
    page.get_by_role("button", name="Save").click()


def watch_progress(page) -> None:
    """Keep every text the progress line shows (steps go by faster than a test can look)."""
    page.evaluate("""() => {
        window.progressSeen = [];
        new MutationObserver(() => window.progressSeen.push(document.querySelector('#progress-text').textContent))
            .observe(document.querySelector('#progress-text'), {childList: true, characterData: true, subtree: true});
    }""")


def test_generate_follows_progress_and_fills_the_gallery(make_settings, open_page):
    with LiveServer(make_settings(steps=4, max_batch=1)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        page = open_page(live.base_url)
        sign_in(page, key.api_key, key.api_secret)
        prompt = "a lighthouse on a cliff at dawn"
        page.get_by_label("Prompt", exact=True).fill(prompt)
        page.get_by_label("Aspect Ratio").select_option("16:9")
        expect(page.get_by_label("Seed")).to_have_value("")  # a random seed unless one is given
        expect(page.get_by_label("Prompt Upsampling")).to_have_count(0)  # refused here: not offered
        expect(page.get_by_label("Seed")).to_have_attribute("placeholder", "random")
        page.get_by_label("Seed").fill("7")
        watch_progress(page)
        page.get_by_role("button", name="Generate").click()

        image = page.get_by_role("img", name=prompt).first
        expect(page.locator("#result-image")).to_have_attribute("alt", prompt, timeout=60_000)
        page.wait_for_function("document.querySelector('#result-image').naturalWidth > 0")
        width, height = page.evaluate("[document.querySelector('#result-image').naturalWidth, "
                                      "document.querySelector('#result-image').naturalHeight]")
        assert abs(width / height - 16 / 9) < 0.05, (width, height)
        expect(page.locator("#result-caption")).to_contain_text(f"Seed 7 · {width}×{height}")
        seen = page.evaluate("window.progressSeen")
        assert any(text.startswith("Step ") for text in seen), seen
        assert not any(text.startswith("task_") for text in seen), seen  # no raw frame names
        expect(page.locator("#progress")).to_have_attribute("value", "100")
        expect(page.locator("#gallery li")).to_have_count(1)
        expect(image).to_be_visible()
        expect(page.locator("#gallery li img")).to_have_attribute("alt", prompt)

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "playground-desktop.png", full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=ARTIFACTS / "playground-phone.png", full_page=True)

        page.locator("#gallery li button").click()  # the task, large, with its actions
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("img", name=prompt)).to_be_visible()
        expect(dialog.get_by_role("link", name="Download")).to_have_attribute("download", "fluxhost-1-0.png")
        dialog.get_by_role("button", name="Re-run with the same seed").click()
        expect(page.locator("#result-caption")).to_contain_text(f"Seed 7 · {width}×{height} · task 2",
                                                                timeout=60_000)
        expect(page.locator("#gallery li")).to_have_count(2)

        page.locator("#gallery li[data-taskid='1'] button").click()
        page.once("dialog", lambda asked: asked.dismiss())  # "Delete the files of task 1?" No.
        dialog.get_by_role("button", name="Delete files").click()
        expect(page.locator("#gallery li[data-taskid='1'] img")).to_have_count(1)
        page.locator("#gallery li[data-taskid='1'] button").click()
        page.once("dialog", lambda asked: asked.accept())
        dialog.get_by_role("button", name="Delete files").click()
        expect(page.locator("#gallery li[data-taskid='1'] img")).to_have_count(0)
        expect(page.locator("#gallery li[data-taskid='2'] img")).to_have_count(1)

    own = (live.base_url, live.base_url.replace("http", "ws", 1), "data:")  # data: the inline favicon
    assert page.reached and all(url.startswith(own) for url in page.reached), page.reached


def test_stop_kills_the_running_task_with_a_key_only_key(make_settings, open_page):
    settings = make_settings(engine="bench", bench_step_ms=100, steps=100, max_batch=1)
    with LiveServer(settings) as live:
        key = live.service.keys.create(KeyMode.KEY_ONLY)
        page = open_page(live.base_url)
        sign_in(page, key.api_key)
        page.get_by_label("Prompt", exact=True).fill("a slow one")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#progress-text")).to_contain_text("Step ", timeout=30_000)
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#message")).to_contain_text("was stopped", timeout=30_000)
        expect(page.locator("#progress-text")).to_have_text("Stopped")
        expect(page.locator("#gallery li .status")).to_have_text("Stopped")
        expect(page.get_by_role("button", name="Generate")).to_be_enabled()


def test_a_wrong_secret_says_so_and_forget_clears_the_browser(make_settings, open_page):
    with LiveServer(make_settings(engine="bench", worker_concurrency=0)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        page = open_page(live.base_url)
        sign_in(page, key.api_key, "not-the-secret")
        expect(page.get_by_role("alert")).to_have_text(
            "The API key or secret was refused: Project authorization is not valid.")
        expect(page.locator("#workspace")).to_be_hidden()
        assert page.evaluate("localStorage.length") == 0  # a refused secret is not kept

        sign_in(page, key.api_key, key.api_secret)
        expect(page.get_by_label("Model")).to_have_value("black-forest-labs/flux-pro-1.1")
        page.reload()  # kept in the browser
        expect(page.get_by_label("API key")).to_have_value(key.api_key)
        page.get_by_role("button", name="Forget").click()
        expect(page.get_by_label("API key")).to_have_value("")
        assert page.evaluate("localStorage.length") == 0


def test_on_the_demo_model_the_prompt_shows_its_example_and_a_prompt_it_cannot_draw_gets_its_note(make_settings,
                                                                                                    open_page):
    from fluxhost.demo import EXAMPLE_PROMPT, demo_model_settings
    from tests.helpers import SLUG

    with LiveServer(make_settings(models={SLUG: demo_model_settings(max_batch=1)})) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        page = open_page(live.base_url)
        sign_in(page, key.api_key, key.api_secret)
        prompt = page.get_by_label("Prompt", exact=True)
        expect(prompt).to_have_attribute("placeholder", EXAMPLE_PROMPT)
        prompt.fill("a lighthouse on a cliff")
        page.get_by_label("Aspect Ratio").select_option("1:1")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#message")).to_contain_text(
            'Note: the demo model does not know "lighthouse", "cliff": it draws flat shapes only', timeout=60_000)
