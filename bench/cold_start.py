"""Cold start: seconds from starting `fluxhost serve` (its defaults: the demo model, SQLite, a
worker process) to its first answer and to its first finished picture, a Run sent as soon as the
server answers. Each round starts a fresh server on a fresh data folder; the key is made before
the clock starts (`make serve` makes it on the first start only).

    python bench/cold_start.py [--rounds 3] [--port 8796]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time

import httpx

from _server import FLUXHOST, SLUG, Signer, create_key, percentile, server_environment, wait_for_task
from fluxhost.demo import EXAMPLE_PROMPT


def one_round(port: int) -> tuple[float, float]:
    """Seconds to the first answer and to the first finished picture."""
    with tempfile.TemporaryDirectory() as data:
        env = server_environment({"data_dir": data, "port": str(port)})
        signer = Signer(create_key(env))
        started = time.perf_counter()
        process = subprocess.Popen([FLUXHOST, "serve"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                while True:
                    try:
                        answer = http.post(f"/v1/Run/{SLUG}", json={"prompt": EXAMPLE_PROMPT, "aspectRatio": "1:1"},
                                           headers=signer.headers()).json()
                        break
                    except httpx.TransportError:
                        if process.poll() is not None or time.perf_counter() - started > 300:
                            raise RuntimeError("the server did not start") from None
                        time.sleep(0.02)
                answered = time.perf_counter() - started
                assert answer["result"] is True, answer
                wait_for_task(http, signer, answer["socketaccesstoken"], 0.02)
                return answered, time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8796)
    args = parser.parse_args()
    rounds = [one_round(args.port) for _ in range(args.rounds)]
    print(f"fluxhost serve on its defaults (the demo model, 1024x1024), {args.rounds} cold starts")
    for number, (answered, done) in enumerate(rounds, start=1):
        print(f"  round {number}: first answer {answered:6.2f} s   first picture {done:6.2f} s")
    print(f"  median: first answer {percentile([a for a, _ in rounds], 0.5):6.2f} s   "
          f"first picture {percentile([d for _, d in rounds], 0.5):6.2f} s")


if __name__ == "__main__":
    main()
