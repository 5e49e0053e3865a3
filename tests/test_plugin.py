"""`plugin` and `plugout`: the connection to the server, or to the listener, is a command's
standard input and output.

End to end: Dovecot's own `imap` and `pop3` binaries run by the plugin command in preauth mode
(what `plugin "ssh %h /usr/sbin/imapd"` reaches on the far side), a bridge command (what `nc`
does) in front of Dovecot's TLS ports and of the recording SMTP/LMTP server, and commands that
fail or hang. Where fetchmail 6.4 can run the same rcfile, it does, and the two must deliver
the same bytes, leave the same mail and exit alike.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT_WARNING, TESTS
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer
from test_e2e_imap import run_fetchmail
from test_e2e_pop3 import pyfetch

from fetcher.plugin import plugin_argv, start

BRIDGE = TESTS / "servers" / "bridge.py"
MESSAGES = [
    b"From: Alice <alice@example.org>\r\nTo: bob@mail.isp.net\r\nSubject: one\r\n\r\n"
    b"Hello Bob.\r\n",
    b"From: carol@example.org\r\nSubject: two\r\n\r\n.a line with a leading dot\r\n..\r\nend\r\n",
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def bridge(host: str = "%h", port: str = "%p") -> str:
    """A plugin command that joins its standard input and output to host:port."""
    return f"{sys.executable} {BRIDGE} {host} {port}"


def preauth_tunnel(tmp_path: Path, dovecot: Dovecot, protocol: str) -> Path:
    """A command that runs Dovecot's `imap` or `pop3` for bob on its standard input and
    output, already logged in, and notes the arguments it was given in `args`.

    Dovecot refuses to run them as root on a socket (it takes that for a misconfigured
    inetd), so they run as the mail user, as ssh would run imapd as the user. Dovecot's
    `pop3` says nothing before the first command when run so: the greeting an ssh tunnel's
    POP3 server sends is printed first."""
    greeting = "printf '+OK preauth\\r\\n'\n" if protocol == "pop3" else ""
    script = tmp_path / f"{protocol}-tunnel"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {tmp_path}/args\n'
        f"exec 2>>{tmp_path}/tunnel.log\n"
        f"{greeting}"
        f"exec setpriv --reuid={dovecot.uid} --regid={dovecot.gid} --clear-groups "
        f"/usr/lib/dovecot/{protocol} -c {dovecot.root / 'dovecot.conf'} -u bob\n"
    )
    script.chmod(0o755)
    return script


def write_rc(home: Path, server: str, user: str, smtpd: SMTPServer) -> Path:
    host, port = smtpd.address
    path = home / ".fetchmailrc"
    path.write_text(
        f"poll mail.isp.net via localhost {server}\n"
        f"  user bob is bob here password hidden smtphost {host}/{port} {user}\n"
    )
    path.chmod(0o600)
    return path


def without_received(data: bytes) -> bytes:
    """A delivered message without the Received header the fetching program added first."""
    assert data.startswith(b"Received: ")
    end = data.index(b"\r\n") + 2
    while data[end : end + 1] in (b" ", b"\t"):
        end = data.index(b"\r\n", end) + 2
    return data[end:]


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.stderr.startswith(ROOT_WARNING)
    return result.stderr.removeprefix(ROOT_WARNING).splitlines()


# -- the command line: fetchmail's parse_plugin ------------------------------------------------


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("ssh -C %h /usr/sbin/imapd", ["ssh", "-C", "mail.isp.net", "/usr/sbin/imapd"]),
        ("openssl s_client -connect %h:%p",
         ["openssl", "s_client", "-connect", "mail.isp.net:imap"]),
        ("nc %h %p", ["nc", "mail.isp.net", "imap"]),
        ("x %p%h %%h", ["x", "imapmail.isp.net", "%mail.isp.net"]),  # anywhere in a word
        ("  a\tb\n c  ", ["a", "b", "c"]),  # any white space separates, none is kept
        # no shell: quotes, $ and ~ reach the command as they are, as from fetchmail
        ("ssh 'a b' $HOME ~ *", ["ssh", "'a", "b'", "$HOME", "~", "*"]),
        ("%H %P %x", ["%H", "%P", "%x"]),
        ("", []),
    ],
)
def test_plugin_command_is_split_and_expanded_as_fetchmail_does(
    command: str, argv: list[str]
) -> None:
    assert plugin_argv(command, "mail.isp.net", "imap") == argv


def test_a_command_that_cannot_run_is_named() -> None:
    with pytest.raises(OSError, match='cannot run plugin "/no/such/tunnel %h": /no/such/tunnel: '
                       "No such file or directory"):
        start("plugin", "/no/such/tunnel %h", "mail.isp.net", "imap")
    with pytest.raises(OSError, match="the plugout command is empty"):
        start("plugout", " ", "localhost", "smtp")


def test_a_command_that_ignores_the_end_of_its_input_is_ended() -> None:
    sock, process = start("plugin", "sleep 600", "mail.isp.net", "imap")
    sock.close()
    process.finish(grace=0.1)
    assert process.process.returncode == -signal.SIGTERM


# -- end to end: the server through a plugin ---------------------------------------------------


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_mail_comes_through_a_preauth_tunnel_as_with_fetchmail(
    home: Path, tmp_path: Path, dovecot: Dovecot, smtpd: SMTPServer, protocol: str,
    need_fetchmail: None,
) -> None:
    """`plugin "ssh %h imapd" auth ssh` with `sslproto ''`: the command is the server, already
    logged in; neither program sends a password, and the same bytes arrive."""
    tunnel = preauth_tunnel(tmp_path, dovecot, protocol)
    write_rc(home, f'proto {protocol} plugin "{tunnel} %h %p" auth ssh', "sslproto ''", smtpd)
    delivered: dict[str, list[bytes]] = {}
    for name, run in (("pyfetch", pyfetch), ("fetchmail", run_fetchmail)):
        dovecot.reset()
        dovecot.seed("bob", MESSAGES)
        smtpd.clear()
        for state in home.glob(".fetchids*"):
            state.unlink()
        result = run(home, "-v")
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert dovecot.messages("bob") == [], name
        assert (tmp_path / "args").read_text().split() == ["localhost", protocol], name
        assert "hidden" not in result.stdout + result.stderr
        delivered[name] = [without_received(t.data) for t in smtpd.transactions]
        assert f"running {tunnel} %h %p (host localhost service {protocol})" in (
            result.stdout + result.stderr
        )
    assert delivered["pyfetch"] == delivered["fetchmail"] == MESSAGES


def test_preauth_through_a_plugin_with_tls_required_says_how_to_go_on(
    home: Path, tmp_path: Path, dovecot: Dovecot, smtpd: SMTPServer, need_fetchmail: None
) -> None:
    """fetchmail 6.4 requires TLS by default, through a plugin too (CVE-2021-39272), and says
    that a secure plugin can turn STARTTLS off; so does pyfetch. Nothing is fetched."""
    dovecot.seed("bob", MESSAGES[:1])
    tunnel = preauth_tunnel(tmp_path, dovecot, "imap")
    write_rc(home, f'proto imap plugin "{tunnel}"', "", smtpd)
    result = pyfetch(home)
    assert result.returncode == 2
    assert stderr_lines(result) == [
        "pyfetch: mail.isp.net: upgrade to TLS failed: the server greeted with PREAUTH, so "
        "STARTTLS is impossible (if the plugin's own connection is secure, as ssh's is, "
        "sslproto '' turns STARTTLS off)",
        "pyfetch: Socket or TLS error on bob@mail.isp.net",
    ]
    assert run_fetchmail(home).returncode == 2
    assert dovecot.messages("bob") == MESSAGES[:1]
    assert smtpd.transactions == []


@pytest.mark.parametrize(
    ("server", "user"),
    [
        ("proto imap service {imaps}", "ssl"),  # TLS from the first octet, over the pipe
        ("proto pop3 service {pop3}", ""),  # STLS, required by default, over the pipe
    ],
)
def test_tls_goes_over_a_plugin_and_checks_the_certificate(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, server: str, user: str
) -> None:
    """fetchmail puts TLS on a plugin's connection as on a socket, certificate checks and all;
    so does pyfetch. Here the plugin is a bridge to Dovecot's port, and logs in."""
    dovecot.seed("bob", MESSAGES)
    options = f"{user} sslcertfile {test_ca.ca_cert} sslcommonname localhost"
    write_rc(home, f'{server.format(**dovecot.ports)} plugin "{bridge()}"', options, smtpd)
    result = pyfetch(home, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [without_received(t.data) for t in smtpd.transactions] == MESSAGES
    assert dovecot.messages("bob") == []
    assert "Subject CommonName: localhost" in result.stdout
    assert "hidden" not in result.stdout + result.stderr


def test_a_certificate_that_does_not_verify_through_a_plugin_is_refused_with_advice(
    home: Path, dovecot: Dovecot, smtpd: SMTPServer
) -> None:
    """The certificate is read again through the plugin to say how to trust it."""
    dovecot.seed("bob", MESSAGES[:1])
    write_rc(home, f'proto imap service {dovecot.imaps} plugin "{bridge()}"', "ssl", smtpd)
    result = pyfetch(home)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert lines[0] == (
        "pyfetch: mail.isp.net: Server certificate verification error: unable to get local "
        "issuer certificate"
    )
    assert any('sslfingerprint "' in line for line in lines)  # read again, through the plugin
    assert dovecot.messages("bob") == MESSAGES[:1]


def test_a_plugin_that_exits_at_once_is_a_socket_error_naming_it(
    home: Path, dovecot: Dovecot, smtpd: SMTPServer, need_fetchmail: None
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    write_rc(home, 'proto pop3 plugin "false %h"', "sslproto ''", smtpd)
    result = pyfetch(home)
    assert result.returncode == 2
    assert stderr_lines(result) == [
        'pyfetch: connection to localhost through plugin "false %h" lost: the server closed '
        "it before greeting (plugin command exited with status 1)",
        "pyfetch: Socket or TLS error on bob@mail.isp.net",
    ]
    assert run_fetchmail(home).returncode == 2  # fetchmail: "socket error while fetching"
    assert dovecot.messages("bob") == MESSAGES[:1]


def test_a_plugin_that_cannot_run_is_a_socket_error_naming_it(
    home: Path, dovecot: Dovecot, smtpd: SMTPServer, need_fetchmail: None
) -> None:
    write_rc(home, 'proto imap plugin "/no/such/tunnel %h"', "", smtpd)
    result = pyfetch(home)
    assert result.returncode == 2
    assert stderr_lines(result) == [
        'pyfetch: mail.isp.net: cannot run plugin "/no/such/tunnel %h": /no/such/tunnel: '
        "No such file or directory",
        "pyfetch: Socket or TLS error on bob@mail.isp.net",
    ]
    assert run_fetchmail(home).returncode == 2  # fetchmail: "execvp(...) failed"


def test_a_plugin_that_never_answers_times_out_and_is_ended(
    home: Path, tmp_path: Path, dovecot: Dovecot, smtpd: SMTPServer, need_fetchmail: None
) -> None:
    """As a server that never greets: fetchmail's timeout message and exit 2. fetchmail leaves
    the command running; pyfetch ends it."""
    dovecot.seed("bob", MESSAGES[:1])
    hang = tmp_path / "hang"
    # Its stderr elsewhere: the one fetchmail leaves running would hold the test's pipe open.
    hang.write_text(f"#!/bin/sh\necho $$ >> {tmp_path}/pids\nexec sleep 600 2>/dev/null\n")
    hang.chmod(0o755)
    write_rc(home, f'proto imap timeout 2 plugin "{hang}"', "sslproto ''", smtpd)
    try:
        result = pyfetch(home)
        assert result.returncode == 2
        assert stderr_lines(result) == [
            "pyfetch: timeout after 2 seconds waiting for server mail.isp.net.",
            "pyfetch: socket error while fetching from bob@mail.isp.net",
        ]
        ours = int((tmp_path / "pids").read_text())
        assert not _running(ours)
        assert run_fetchmail(home).returncode == 2
    finally:
        for pid in (tmp_path / "pids").read_text().split():
            if _running(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
    assert dovecot.messages("bob") == MESSAGES[:1]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running: it waits for whoever started it to collect it
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


# -- end to end: the listener through a plugout ------------------------------------------------


@pytest.mark.parametrize("lmtp", [False, True])
def test_mail_goes_to_the_listener_through_a_plugout_as_with_fetchmail(
    home: Path, tmp_path: Path, dovecot: Dovecot, smtpd: SMTPServer, lmtpd: SMTPServer,
    lmtp: bool, need_fetchmail: None,
) -> None:
    listener = lmtpd if lmtp else smtpd
    tunnel = preauth_tunnel(tmp_path, dovecot, "imap")
    write_rc(
        home, f'proto imap plugin "{tunnel}" plugout "{bridge()}"',
        "sslproto ''" + (" lmtp" if lmtp else ""), listener,
    )
    delivered: dict[str, list[bytes]] = {}
    for name, run in (("pyfetch", pyfetch), ("fetchmail", run_fetchmail)):
        dovecot.reset()
        dovecot.seed("bob", MESSAGES)
        listener.clear()
        for state in home.glob(".fetchids*"):
            state.unlink()
        result = run(home, "-v")
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert dovecot.messages("bob") == [], name
        delivered[name] = [without_received(t.data) for t in listener.transactions]
        host, port = listener.address
        assert f"(host {host} service {port})" in result.stdout + result.stderr
    assert delivered["pyfetch"] == delivered["fetchmail"] == MESSAGES


def test_a_plugout_that_fails_keeps_the_mail_and_exits_10(
    home: Path, tmp_path: Path, dovecot: Dovecot, smtpd: SMTPServer, need_fetchmail: None
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    tunnel = preauth_tunnel(tmp_path, dovecot, "imap")
    write_rc(home, f'proto imap plugin "{tunnel}" plugout "false"', "sslproto ''", smtpd)
    result = pyfetch(home)
    assert result.returncode == 10
    host, port = smtpd.address
    assert (
        f'pyfetch: SMTP connect to {host}/{port} through plugout "false" failed (listener '
        "closed the connection (plugout command exited with status 1))"
    ) in stderr_lines(result)
    assert dovecot.messages("bob") == MESSAGES[:1]
    assert run_fetchmail(home).returncode == 10
    assert dovecot.messages("bob") == MESSAGES[:1]
    assert smtpd.transactions == []


def test_a_run_stopped_while_a_plugin_hangs_ends_the_command(
    home: Path, tmp_path: Path, dovecot: Dovecot, smtpd: SMTPServer
) -> None:
    """SIGTERM gives up on a poll still waiting after a few seconds (README); the command it
    waits on is ended with it, not left running after the run."""
    hang = tmp_path / "hang"
    hang.write_text(f"#!/bin/sh\necho $$ >> {tmp_path}/pids\nexec sleep 600 2>/dev/null\n")
    hang.chmod(0o755)
    write_rc(home, f'proto imap timeout 300 plugin "{hang}"', "sslproto ''", smtpd)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LC_ALL": "C",
           "PYTHONPATH": str(TESTS.parent)}
    run = subprocess.Popen(
        [sys.executable, "-m", "fetcher", "--pidfile", str(home / "pyfetch.pid")],
        env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert "terminated with signal 15" in out, out + err
    pid = int((tmp_path / "pids").read_text())
    try:
        assert not _running(pid)
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
