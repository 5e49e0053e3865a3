#!/usr/bin/env python3
"""pyfetch's main job, shown on this machine with nothing set up beforehand.

Starts a private Dovecot (the provider's POP3 server) and a private Postfix (your local MTA)
on free loopback ports, puts three messages in bob's mailbox, points sample.fetchmailrc at
them, and runs `pyfetch -v -a -d0`: every message goes over STLS to Postfix, then is
deleted on the server. Prints what arrived in bob's local Maildir. Needs root (the servers
drop privileges) and the packages scripts/install-packages installs; the private servers come
from the source tree's tests/servers.

The program run is the installed `pyfetch` command: the one beside this Python (a venv's
bin/), else $PYFETCH or the one on PATH, else `python -m fetcher` from this source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers.certs import make_test_ca  # noqa: E402  (after the sys.path line)
from servers.dovecot import Dovecot  # noqa: E402
from servers.postfix import Postfix  # noqa: E402

MESSAGES = [
    b"From: Alice <alice@example.org>\r\nTo: bob@mail.isp.net\r\nSubject: Lunch?\r\n\r\n"
    b"Noon at the usual place?\r\n",
    b"From: Carol <carol@example.org>\r\nTo: bob@mail.isp.net\r\nSubject: Report\r\n\r\n"
    b"The numbers are in.\r\n",
    b"From: Dave <dave@example.org>\r\nTo: bob@mail.isp.net\r\nSubject: Caf\xc3\xa9\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nOn se voit au caf\xc3\xa9.\r\n",
]


def pyfetch_command() -> list[str]:
    beside = Path(sys.executable).parent / "pyfetch"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which(os.environ.get("PYFETCH", "pyfetch"))
    if found:
        return [found]
    return [sys.executable, "-m", "fetcher"]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ca = make_test_ca(base / "ca")
        with Dovecot(ca) as dovecot, Postfix() as postfix:
            dovecot.seed("bob", MESSAGES)
            host, port = postfix.address
            sample = (ROOT / "sample.fetchmailrc").read_text()
            rc = sample.replace(
                "poll mail.isp.net proto POP3",
                f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports['pop3']} proto POP3",
            ).replace(
                "user bob is bob here",
                f"user bob is bob here sslcertfile {ca.ca_cert} sslcommonname localhost"
                f" smtphost {host}/{port}",
            )
            home = base / "home"
            home.mkdir()
            rcfile = home / ".fetchmailrc"
            rcfile.write_text(rc)
            rcfile.chmod(0o600)
            print(f"$ pyfetch -v -a -d0     (sample.fetchmailrc, POP3 on port "
                  f"{dovecot.ports['pop3']}, Postfix on port {port})\n", flush=True)
            env = {**os.environ, "HOME": str(home)}
            command = pyfetch_command()
            if command[0] == sys.executable:  # from the source tree, not installed
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                                  env.get("PYTHONPATH")]))
            status = subprocess.run(
                [*command, "-v", "-a", "-d0"], env=env, cwd=home, check=False,
            ).returncode
            print(f"\nexit status {status}; left on the server: "
                  f"{len(dovecot.messages('bob'))} messages\n")
            for number, stored in enumerate(postfix.wait_for_delivery(len(MESSAGES)), 1):
                print(f"--- delivered message {number}")
                print(stored.decode("utf-8", "replace").rstrip())
            return status


if __name__ == "__main__":
    raise SystemExit(main())
