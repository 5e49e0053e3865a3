"""The effective configuration: plain typed data, after every default and override is applied.

Field names and their order are those of `fetchmail --configdump`, so that the dump is just
these dataclasses written out, and the two programs can be compared field by field. Fields
fetchmail does not dump carry `metadata={"dump": False}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

LocalName = tuple[str, str | None]  # (name, mapped-to name or None): `is bob` / `is bob = robert`

_HIDDEN = {"dump": False}


@dataclass
class GlobalOptions:
    poll_interval: int = 0
    logfile: str | None = None
    idfile: str | None = None
    postmaster: str | None = None
    bouncemail: bool = True
    spambounce: bool = False
    softbounce: bool = True
    properties: str | None = None
    invisible: bool = False
    showdots: bool = False
    syslog: bool = False
    pidfile: str | None = field(default=None, metadata=_HIDDEN)


@dataclass
class UserOptions:
    """One account on a server: fetchmail's query record, user part."""

    remote: str = ""
    password: str | None = field(default=None, repr=False)
    localnames: list[LocalName] = field(default_factory=list)
    fetchall: bool = False
    keep: bool = False
    flush: bool = False
    limitflush: bool = False
    rewrite: bool = True
    stripcr: bool = False
    forcecr: bool = False
    pass8bits: bool = False
    dropstatus: bool = False
    dropdelivered: bool = False
    mimedecode: bool = False
    idle: bool = False
    mda: str | None = None
    bsmtp: str | None = None
    lmtp: bool = False
    preconnect: str | None = None
    postconnect: str | None = None
    limit: int = 0
    warnings: int = 3600
    fetchlimit: int = 0
    fetchsizelimit: int = 100
    fastuidl: int = 4
    batchlimit: int = 0
    ssl: bool = False
    sslkey: str | None = None
    sslcert: str | None = None
    sslproto: str | None = None
    sslcertck: bool = True
    sslcertfile: str | None = None
    sslcertpath: str | None = None
    sslcommonname: str | None = None
    sslfingerprint: str | None = None
    expunge: int = 0
    properties: str | None = None
    smtphunt: list[str] = field(default_factory=list)
    fetchdomains: list[str] = field(default_factory=list)
    smtpaddress: str | None = None
    smtpname: str | None = None
    antispam: list[int] = field(default_factory=list)
    mailboxes: list[str] = field(default_factory=list)
    # pyfetch's own keys (fetchmail has none): dumped only when set
    passwordeval: str | None = None
    wildcard: bool = field(default=False, metadata=_HIDDEN)  # `is *`: dumped in localnames
    smtphunt_default: bool = field(default=False, metadata=_HIDDEN)  # no smtphost was given
    fetchdomains_default: bool = field(default=False, metadata=_HIDDEN)  # ETRN/ODMR: this host
    line: int = field(default=0, metadata=_HIDDEN)  # where the account starts in the rcfile

    @property
    def multidrop(self) -> bool:
        return self.wildcard or len(self.localnames) > 1


@dataclass
class ServerOptions:
    """A poll entry: fetchmail's hostdata, with its accounts."""

    pollname: str = ""
    active: bool = True  # as the dump shows it: not a `skip` entry
    via: str | None = None
    protocol: str = "auto"
    service: str | None = None
    timeout: int = 300
    interval: int = 0
    envelope: str | None = "Received"
    envskip: int = 0
    qvirtual: str | None = None
    auth: str = "any"
    dns: bool = True
    uidl: bool = False
    aka: list[str] = field(default_factory=list)
    localdomains: list[str] = field(default_factory=list)
    interface: str | None = None
    monitor: str | None = None
    plugin: str | None = None
    plugout: str | None = None
    principal: str | None = None
    esmtpname: str | None = None
    esmtppassword: str | None = field(default=None, repr=False)  # dumped only when set
    tracepolls: bool = False
    badheader: bool = False  # True: `bad-header accept`
    users: list[UserOptions] = field(default_factory=list)
    checkalias: bool = field(default=False, metadata=_HIDDEN)
    sdps: bool = field(default=False, metadata=_HIDDEN)
    selected: bool = field(default=True, metadata=_HIDDEN)  # polled in this run
    line: int = field(default=0, metadata=_HIDDEN)

    @property
    def skip(self) -> bool:
        return not self.active

    @property
    def queryname(self) -> str:
        """The name to connect to and to key UIDs by: `via` if given, else the poll name."""
        return self.via if self.via is not None else self.pollname


@dataclass
class Config:
    globals: GlobalOptions
    servers: list[ServerOptions]
    rcfile: str | None = None  # None: no rcfile was read
    warnings: list[str] = field(default_factory=list)  # whole stderr lines, fetchmail's wording

    def selected_accounts(self) -> list[tuple[ServerOptions, UserOptions]]:
        return [(s, u) for s in self.servers if s.selected for u in s.users]


def dumped_fields(cls: type[Any]) -> list[str]:
    """The names the configdump shows for a model class, in fetchmail's order."""
    return [f.name for f in fields(cls) if f.metadata.get("dump", True)]
