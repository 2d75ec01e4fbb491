"""Screenshot of the ``unclip serve`` page after a generation, taken with headless Chromium.

    python tests/browser/screenshot.py --model emoji --out docs/images/serve.png
    python tests/browser/screenshot.py --model runs/serve-tiny --prompt "a red circle"

The server runs in-process on a loopback port; the page is driven as a person
would: type a prompt, set the number of images and the seed, press Generate,
wait for the gallery, then save the window as a PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (for browser.chromium)

from browser.chromium import chromium, serve_in_thread  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pipeline directory or shipped model name")
    parser.add_argument("--prompt", default="a large red circle in the center")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("docs/images/serve.png"))
    parser.add_argument("--size", default="1280x820", help="window WIDTHxHEIGHT")
    args = parser.parse_args(argv)

    from selenium.webdriver.support.ui import WebDriverWait

    from unclip.pipelines import load_pipeline
    from unclip.serve.app import create_app

    app = create_app(load_pipeline(args.model), model_ref=args.model)
    width, height = (int(v) for v in args.size.split("x"))
    with serve_in_thread(app) as url, chromium(width, height) as driver:
        driver.get(url)
        wait = WebDriverWait(driver, 300, poll_frequency=0.2)
        wait.until(lambda d: args.model in d.find_element("id", "model-info").text)
        for field, value in (("prompt", args.prompt), ("num_images", str(args.num_images)),
                             ("seed", str(args.seed))):
            element = driver.find_element("id", field)
            element.clear()
            element.send_keys(value)
        driver.find_element("id", "generate").click()
        wait.until(lambda d: len(d.find_elements("css selector", "#gallery img")) == args.num_images)
        driver.execute_script("document.activeElement.blur()")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
