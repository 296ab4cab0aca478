"""One Easemob server-side flow with the PyPI package ease-restapi, unchanged except for its
base URL and credentials: an app token, an offline count, a legacy message send, the count
again. Run by tests/sdk.rs against the emulator directly and through imgate; prints one JSON
object on its last line (fields that differ between any two runs, such as timestamps and the
host, are left out).

Usage: python3 ease_restapi_flow.py BASE_URL ORG APP CLIENT_ID CLIENT_SECRET USER
"""

import json
import sys

from ease_restapi import config
from ease_restapi.service import AppClientAuth, build_message_data, offline_msg_count
from ease_restapi.service import send_txt_message

VOLATILE = {"uri", "timestamp", "duration", "application", "organization", "applicationName"}


def stable(answer):
    success, body = answer
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
    return {"success": success, "body": body}


def main():
    base, org, app, client_id, client_secret, user = sys.argv[1:7]
    config.HOST_SERVER = base
    config.APP_ORG = org
    config.APP_NAME = app
    auth = AppClientAuth(client_id, client_secret)
    token = auth.get_token()
    before = offline_msg_count(auth, user)
    sent = send_txt_message(auth, build_message_data("hello", [user], "users", "sdk-sender"))
    after = offline_msg_count(auth, user)
    report = {
        "token_obtained": bool(token) and token != "None",
        "count_before": stable(before),
        "send": stable(sent),
        "count_after": stable(after),
    }
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
