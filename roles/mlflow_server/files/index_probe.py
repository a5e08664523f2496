#!/usr/bin/python3
"""Can this host reach the package index that pip.conf names, through its proxy and CA bundle?

  index_probe.py PIP_CONF     prints "ok", "default" (no index-url: pip's default index,
                              left to pip), or the reason it failed (exit 1)

Runs before anything is installed, so that `--install-method index` on a host that cannot reach
its index fails in seconds with the reason, instead of after apt's and pip's retries. Settings
come from the root-only pip.conf: a proxy URL may carry credentials, which argv and the
environment would show in `ps`.
"""

from __future__ import annotations

import configparser
import ssl
import sys
import urllib.request


def main(pip_conf: str) -> int:
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(pip_conf)
    settings = conf["global"] if conf.has_section("global") else {}
    url = settings.get("index-url", "")
    if not url:
        print("default")
        return 0
    proxy = settings.get("proxy", "")
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=settings.get("cert") or None))]
    if proxy:
        handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
    try:  # the project page pip reads first; any HTTP answer means the index is there
        with urllib.request.build_opener(*handlers).open(url.rstrip("/") + "/mlflow/", timeout=10) as resp:
            resp.read(1)
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc))
        for secret, shown in ((proxy, "<proxy>"), (url, "<index>")):
            reason = reason.replace(secret, shown) if secret else reason
        print(reason)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
