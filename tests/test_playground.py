"""The web playground in a real headless Chromium (Debian's, driven by Playwright): key and secret
entered once, a prompt generated with live progress, the gallery (searched, paged), Stop, a wrong
secret, an input image picked, dropped or taken from the gallery, a batch, and an opened picture
zoomed, copied, reused and varied; no request leaves the server. Screenshots of the demo model at
desktop and phone sizes go to build/test-artifacts/ (docs/screenshots/ holds copies)."""

import os
import shutil
import time
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
    """A fresh page on the server (its own storage), recording every address it reaches; no script
    error may be thrown in it."""
    contexts, thrown = [], []

    def open_at(base_url: str, width: int = 1280, height: int = 860):
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.reached = []
        page.on("request", lambda request: page.reached.append(request.url))
        page.on("websocket", lambda socket: page.reached.append(socket.url))
        page.on("pageerror", lambda error: thrown.append(str(error)))
        page.goto(f"{base_url}/")
        return page

    yield open_at
    for context in contexts:
        context.close()
    assert thrown == [], thrown


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
        result = page.locator("#results img")
        expect(result).to_have_attribute("alt", prompt, timeout=60_000)
        page.wait_for_function("document.querySelector('#results img').naturalWidth > 0")
        width, height = result.evaluate("image => [image.naturalWidth, image.naturalHeight]")
        assert abs(width / height - 16 / 9) < 0.05, (width, height)
        expect(page.locator("#results figcaption")).to_contain_text(f"Seed 7 · {width}×{height}")
        seen = page.evaluate("window.progressSeen")
        assert any(text.startswith("Step ") for text in seen), seen
        assert not any(text.startswith("task_") for text in seen), seen  # no raw frame names
        expect(page.locator("#progress")).to_have_attribute("value", "100")
        expect(page.locator("#gallery li")).to_have_count(1)
        expect(image).to_be_visible()
        expect(page.locator("#gallery li img")).to_have_attribute("alt", prompt)

        page.locator("#gallery li button").click()  # the task, large, with its actions
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("img", name=prompt)).to_be_visible()
        expect(dialog.get_by_role("link", name="Download")).to_have_attribute("download", "fluxhost-1-0.png")
        dialog.get_by_role("button", name="Re-run with the same seed").click()
        expect(page.locator("#results figcaption")).to_contain_text(f"Seed 7 · {width}×{height} · task 2",
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


def png(width: int = 96, height: int = 64) -> bytes:
    """A small picture to upload: a gradient."""
    import io

    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (height, 1))] * 3, axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def own_addresses(live) -> tuple[str, ...]:
    """What the page may reach: the server, its socket, and the page's own data: and blob: pictures."""
    return live.base_url, live.base_url.replace("http", "ws", 1), "data:", f"blob:{live.base_url}"


REDRAW = "acme/redraw"


def test_an_input_image_is_picked_dropped_or_taken_from_the_gallery_and_sent_as_a_file(make_settings, open_page,
                                                                                        tiny_weights):
    from fluxhost.settings import ModelSettings
    from tests.helpers import SLUG

    tiny = dict(weights=str(tiny_weights), steps=2, max_sequence_length=32, max_batch=1)
    models = {SLUG: ModelSettings(**tiny), REDRAW: ModelSettings(**tiny, kind="image-to-image")}
    with LiveServer(make_settings(models=models)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        page = open_page(live.base_url)
        runs = []
        page.on("request", lambda request: runs.append(request.headers.get("content-type", ""))
                if "/v1/Run/" in request.url else None)
        sign_in(page, key.api_key, key.api_secret)
        expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
        expect(page.get_by_label("Input Image", exact=True)).to_have_count(0)  # a text-to-image model takes none
        page.get_by_label("Prompt", exact=True).fill("a grey field")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#gallery li img")).to_have_count(1, timeout=60_000)

        page.get_by_label("Model").select_option(REDRAW)
        picker = page.get_by_label("Input Image", exact=True)
        picker.set_input_files({"name": "ramp.png", "mimeType": "image/png", "buffer": png()})
        expect(page.get_by_role("img", name="The input image")).to_be_visible()
        page.get_by_role("button", name="Remove image").click()
        expect(page.get_by_role("img", name="The input image")).to_be_hidden()
        dropped = page.evaluate_handle("""async () => {
            const transfer = new DataTransfer();
            const picture = await (await fetch(document.querySelector('#gallery li img').src)).blob();
            transfer.items.add(new File([picture], 'dropped.png', {type: 'image/png'}));
            return transfer;
        }""")
        page.locator(".drop").dispatch_event("drop", {"dataTransfer": dropped})
        expect(page.get_by_role("img", name="The input image")).to_be_visible()
        assert picker.evaluate("input => input.files[0].name") == "dropped.png"
        page.get_by_label("Prompt", exact=True).fill("the same, redrawn")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#gallery li img")).to_have_count(2, timeout=60_000)
        assert runs[-1].startswith("multipart/form-data"), runs  # the file itself, as the protocol takes it
        expect(page.locator("#results img")).to_have_attribute("alt", "the same, redrawn")

        page.get_by_label("Model").select_option(SLUG)
        page.locator("#gallery li[data-taskid='1'] button").click()
        page.get_by_role("dialog").get_by_role("button", name="Edit this").click()
        expect(page.get_by_label("Model")).to_have_value(REDRAW)
        expect(page.get_by_role("img", name="The input image")).to_be_visible()
        assert page.get_by_label("Input Image", exact=True).evaluate("input => input.files[0].name") == \
            "fluxhost-1-0.png"
        expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    assert all(url.startswith(own_addresses(live)) for url in page.reached), page.reached


def test_a_batch_then_zoom_copy_use_and_vary_an_opened_picture(make_settings, tiny_weights, open_page, monkeypatch):
    from fluxhost.settings import ModelSettings
    from tests.helpers import SLUG

    models = {SLUG: ModelSettings(weights=str(tiny_weights), steps=2, max_sequence_length=32, max_batch=3,
                                  batch_wait_ms=500)}  # the three run as one batch, and end together
    with LiveServer(make_settings(models=models)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        page = open_page(live.base_url)
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.base_url)
        sign_in(page, key.api_key, key.api_secret)
        prompt = "two moons over a lake"
        page.get_by_label("Prompt", exact=True).fill(prompt)
        page.get_by_label("Aspect Ratio").select_option("1:1")
        page.get_by_label("Images", exact=True).fill("3")
        find = live.service.operations.find

        def found_slowly(*args, **kwargs):  # a server far away: each end is read while the others end too
            time.sleep(0.3)
            return find(*args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(live.service.operations, "find", found_slowly)
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#results figure img")).to_have_count(3, timeout=60_000)
            expect(page.locator("#progress-text")).to_have_text("Done")
        expect(page.locator("#gallery li img")).to_have_count(3, timeout=60_000)
        captions = page.locator("#results figcaption").all_text_contents()
        seeds = {caption.split(" · ")[0] for caption in captions}
        assert len(seeds) == 3, captions  # each its own random seed

        page.locator("#results figure button").first.click()  # a result opens like a gallery picture
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("heading")).to_have_text("Task 1")
        zoom = dialog.get_by_role("button", name="Full size")
        picture = dialog.get_by_role("img", name=prompt)
        page.wait_for_function("document.querySelector('dialog .zoom img').naturalWidth > 0")
        natural = picture.evaluate("image => image.naturalWidth")
        expect(zoom).to_have_attribute("aria-pressed", "false")
        assert picture.evaluate("image => image.clientWidth") != natural  # fitted to the dialog
        zoom.click()
        expect(zoom).to_have_attribute("aria-pressed", "true")
        assert picture.evaluate("image => image.clientWidth") == natural  # one image pixel a screen pixel
        zoom.press("Enter")
        expect(zoom).to_have_attribute("aria-pressed", "false")

        task = live.service.tasks.get(1)
        seed = task.parameters["seed"]
        dialog.get_by_role("button", name="Copy parameters").click()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == (f"fluxhost run '{prompt}' --model {SLUG} --seed {seed} -i safetyTolerance=2 "
                          "-i aspectRatio=1:1 -i outputFormat=png"), copied

        page.get_by_label("Prompt", exact=True).fill("something else")
        page.get_by_label("Aspect Ratio").select_option("16:9")
        page.locator("#gallery li[data-taskid='1'] button").click()
        dialog.get_by_role("button", name="Use these parameters").click()
        expect(page.get_by_label("Prompt", exact=True)).to_have_value(prompt)
        expect(page.get_by_label("Aspect Ratio")).to_have_value("1:1")
        expect(page.get_by_label("Seed")).to_have_value(seed)

        page.get_by_label("Images", exact=True).fill("1")
        page.locator("#gallery li[data-taskid='1'] button").click()
        dialog.get_by_role("button", name="Vary").click()
        expect(page.locator("#gallery li")).to_have_count(4, timeout=60_000)
        varied = live.service.tasks.get(4).parameters
        assert varied["prompt"] == prompt and varied["aspectRatio"] == "1:1" and varied["seed"] != seed
    assert all(url.startswith(own_addresses(live)) for url in page.reached), page.reached


def test_the_gallery_searches_prompts_and_pages(make_settings, open_page):
    from tests.helpers import ProtocolClient

    with LiveServer(make_settings(engine="bench", worker_concurrency=0)) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        client = ProtocolClient(live.base_url, key)
        for number in range(30):
            client.run(prompt=f"a red fox, take {number}" if number % 3 == 0 else f"an owl, take {number}")
        page = open_page(live.base_url)
        sign_in(page, key.api_key, key.api_secret)
        expect(page.locator("#gallery li")).to_have_count(24)
        expect(page.locator("#gallery li").first).to_have_attribute("data-taskid", "30")  # newest first
        page.get_by_role("button", name="More").click()
        expect(page.locator("#gallery li")).to_have_count(30)
        expect(page.get_by_role("button", name="More")).to_be_hidden()
        page.get_by_role("button", name="Refresh").click()
        expect(page.locator("#gallery li")).to_have_count(30)  # what More brought stays

        page.get_by_label("Search prompts").fill("RED FOX")
        expect(page.locator("#gallery li")).to_have_count(10)
        assert all("red fox" in text for text in page.locator("#gallery li .prompt").all_text_contents())
        page.get_by_label("Search prompts").fill("a heron")
        expect(page.locator("#gallery li")).to_have_count(0)
        expect(page.locator("#gallery-empty")).to_have_text('No prompt holds "a heron".')
    assert all(url.startswith(own_addresses(live)) for url in page.reached), page.reached


def test_screenshots_of_the_demo_model_at_desktop_and_phone_sizes(make_settings, open_page):
    from fluxhost.demo import EXAMPLE_PROMPT, demo_model_settings
    from tests.helpers import SLUG

    with LiveServer(make_settings(models={SLUG: demo_model_settings(max_batch=1)})) as live:
        key = live.service.keys.create(KeyMode.SIGNATURE)
        page = open_page(live.base_url)
        sign_in(page, key.api_key, key.api_secret)
        page.get_by_label("Prompt", exact=True).fill(EXAMPLE_PROMPT)
        page.get_by_label("Aspect Ratio").select_option("4:3")
        page.get_by_label("Images", exact=True).fill("2")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#gallery li img")).to_have_count(2, timeout=120_000)
        page.wait_for_function("[...document.querySelectorAll('#results img, #gallery img')]"
                               ".every(image => image.complete && image.naturalWidth > 0)")
        page.evaluate("document.activeElement.blur()")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "playground-desktop.jpg", full_page=True, type="jpeg", quality=70)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=ARTIFACTS / "playground-phone.jpg", full_page=True, type="jpeg", quality=70)
    assert all(url.startswith(own_addresses(live)) for url in page.reached), page.reached
