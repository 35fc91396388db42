"""A test agent: the real Python openai SDK, unchanged, with a placeholder
key. It knows nothing of warrant: whether its requests carry a real key is
decided by the unit it runs in (tagged or not).

--out FILE: request in a loop until SIGTERM, one JSON line per request.
--once: one request; prints "ok" or "status=<HTTP status>" or "error=<type>".
"""

import argparse
import json
import signal
import sys
import time

import openai

stopping = False


def request():
    # A fresh client (and so a fresh connection) per request: the restart
    # scenario is about connections opened while warrant restarts, which
    # the socket unit must queue. max_retries=0: a failure is never hidden
    # by the SDK's retries.
    with openai.OpenAI(max_retries=0, timeout=30) as client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "ping"}],
        )
        return reply.choices[0].message.content


def once():
    try:
        request()
        print("ok")
    except openai.APIStatusError as error:
        print(f"status={error.status_code}")
    except Exception as error:  # noqa: BLE001 - reported, not hidden
        print(f"error={type(error).__name__}: {error}")


def loop(out, interval):
    def stop(*_):
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    with open(out, "a", buffering=1) as log:
        while not stopping:
            started = time.monotonic()
            try:
                request()
                entry = {"ok": True}
            except Exception as error:  # noqa: BLE001 - every failure counts
                entry = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            entry["secs"] = round(time.monotonic() - started, 3)
            log.write(json.dumps(entry) + "\n")
            time.sleep(interval)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    if args.once:
        once()
    elif args.out:
        loop(args.out, args.interval)
    else:
        sys.exit("--out FILE or --once")


if __name__ == "__main__":
    main()
